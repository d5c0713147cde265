#!/usr/bin/env python3
"""Fails when the modules of the library crate (src/) import each other in a cycle.

A module is one file under src/ (src/a/b.rs is `a::b`, src/a/mod.rs is `a`). An edge A -> B is a
path in A's code, outside its `#[cfg(test)]` module, that names an item of B: `crate::b::…`,
`super::…` or `self::…`, including grouped `use` trees. `mod child;` declarations are ownership,
not use. A parent that re-exports a child and a child that imports through its parent are a
cycle like any other: children import from their siblings directly.

Usage: scripts/module-cycles.py [SRC_DIR]   (prints every cycle; exit 1 when there is one)
"""

import pathlib
import re
import sys

SKIP = {"main.rs"}  # the binary crate's root; src/bin/ is not scanned


def module_of(path: pathlib.Path, src: pathlib.Path) -> tuple[str, ...]:
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def strip(text: str) -> str:
    """The code without comments, string literals and the trailing test module."""
    test = re.search(r"^#\[cfg\(test\)\]\s*\n\s*(pub(\(\w+\))?\s+)?mod\s+\w+\s*\{", text, re.M)
    if test:
        text = text[: test.start()]
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def expand(tree: str) -> list[str]:
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    tree = tree.strip()
    brace = tree.find("{")
    if brace < 0:
        return [re.sub(r"\s+as\s+\w+$", "", tree)] if tree else []
    prefix = tree[:brace]
    inner = tree[brace + 1 : tree.rfind("}")]
    items, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(inner[start:i])
            start = i + 1
    items.append(inner[start:])
    out = []
    for item in items:
        out.extend(prefix + p for p in expand(item))
    return out


def paths(code: str) -> list[str]:
    found = []
    for m in re.finditer(r"\buse\s+([^;]+);", code):
        found.extend(expand(m.group(1)))
    code = re.sub(r"\buse\s+[^;]+;", "", code)
    found.extend(re.findall(r"(?<![:\w])\w+(?:::\w+)+", code))
    return [re.sub(r"\s+", "", p) for p in found]


def resolve(path: str, here: tuple[str, ...], is_dir_module: bool, modules: set) -> tuple | None:
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = (), parts[1:]
    elif parts[0] in ("super", "self"):
        # `self` in a/b.rs is a::b; in a/mod.rs it is a. `super` is one level up from `self`.
        base = here
        for p in parts:
            if p == "super":
                base = base[:-1]
            elif p != "self":
                break
        rest = [p for p in parts if p not in ("super", "self")]
    elif here + (parts[0],) in modules:
        # A path that starts with a child module's name, as `mod.rs` writes them.
        base, rest = here, parts
    else:
        return None
    best = base
    for i in range(1, len(rest) + 1):
        if base + tuple(rest[:i]) in modules:
            best = base + tuple(rest[:i])
        else:
            break
    return best if best in modules else None


def cycles(graph: dict) -> list[list]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    src = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    files = [f for f in src.rglob("*.rs") if f.name not in SKIP and "bin" not in f.relative_to(src).parts]
    modules = {module_of(f, src) for f in files}
    graph, why = {}, {}
    for f in files:
        here = module_of(f, src)
        is_dir = f.name in ("mod.rs", "lib.rs")
        for p in paths(strip(f.read_text())):
            target = resolve(p, here, is_dir, modules)
            if target is None or target == here:
                continue
            graph.setdefault(here, set()).add(target)
            why.setdefault((here, target), p)
    found = cycles(graph)
    name = lambda m: "::".join(m) or "crate"
    for comp in found:
        members = set(comp)
        print(f"import cycle between {', '.join(name(m) for m in comp)}:")
        for a in comp:
            for b in sorted(graph.get(a, ())):
                if b in members:
                    print(f"  {name(a)} -> {name(b)}  ({why[(a, b)]})")
    if found:
        return 1
    print(f"no import cycle among {len(modules)} modules of {src}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
