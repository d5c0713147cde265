//! Safe rendering of template queries.
//!
//! Placeholders: `{{arm}}` (the Deployment being measured), `{{namespace}}` (the Rollout's) and
//! `{{args.NAME}}` (a typed template argument). The rules that keep a value from changing what a
//! query asks:
//! - a string value may only sit inside a quoted PromQL string. It is escaped for that literal
//!   (`\` and the quote), and inside a `=~`/`!~` matcher its regex metacharacters are escaped
//!   first, so it matches itself and nothing more;
//! - an integer, number or duration may sit outside quotes, and only after it has been checked
//!   against its type;
//! - every rendered query is parsed with `promql-parser` and must have the same shape as the
//!   template rendered with harmless probe values: same functions, operators, selectors and
//!   matchers, only literal values differ.

use std::collections::BTreeMap;

use thiserror::Error;

pub use super::bounds::{
    MAX_NESTING, MAX_OPERATORS, MAX_QUERY_BYTES, TooBig, check_bounds, worst_admitted,
};
use crate::api::analysis::{Argument, ArgumentType};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RenderError {
    #[error(
        "unknown placeholder {{{{{0}}}}}: use {{{{arm}}}}, {{{{namespace}}}} or {{{{args.NAME}}}}"
    )]
    UnknownPlaceholder(String),
    #[error("argument {0:?} is used by the query but not declared in the template's args")]
    Undeclared(String),
    #[error("argument {0:?} has no value and no default")]
    Missing(String),
    #[error("argument {name:?} = {value:?} is not a valid {kind}")]
    BadValue {
        name: String,
        value: String,
        kind: &'static str,
    },
    #[error(
        "{{{{{0}}}}} is a string and must sit inside a quoted label value, e.g. label=\"{{{{{0}}}}}\""
    )]
    Unquoted(String),
    #[error("unterminated placeholder (a '{{{{' without '}}}}')")]
    Unterminated,
    #[error("the query does not parse as PromQL: {0}")]
    Parse(String),
    #[error("the rendered query changed shape: a value altered the query's structure")]
    ShapeChanged,
    #[error(
        "the value of {{{{{0}}}}} cannot be placed in a backtick string (it contains a backtick)"
    )]
    Backtick(String),
    #[error(transparent)]
    TooBig(#[from] TooBig),
}

/// Values a query is rendered with.
#[derive(Clone, Debug, Default)]
pub struct Bindings {
    pub arm: String,
    pub namespace: String,
    /// Argument values by name, already merged with the template's defaults by [`bind_args`].
    pub args: BTreeMap<String, String>,
}

/// Merges the Rollout's argument values with the template's declarations: every given value
/// must be declared, every declared argument needs a value or a default, and each value must
/// parse as its type.
pub fn bind_args(
    declared: &[Argument],
    given: &[(String, String)],
) -> Result<BTreeMap<String, String>, RenderError> {
    let mut out = BTreeMap::new();
    for (name, _) in given {
        if !declared.iter().any(|a| &a.name == name) {
            return Err(RenderError::Undeclared(name.clone()));
        }
    }
    for arg in declared {
        let value = given
            .iter()
            .rev()
            .find(|(n, _)| n == &arg.name)
            .map(|(_, v)| v.clone())
            .or_else(|| arg.default.clone())
            .ok_or_else(|| RenderError::Missing(arg.name.clone()))?;
        check_type(&arg.name, &value, arg.kind)?;
        out.insert(arg.name.clone(), value);
    }
    Ok(out)
}

fn check_type(name: &str, value: &str, kind: ArgumentType) -> Result<(), RenderError> {
    let bad = |kind: &'static str| RenderError::BadValue {
        name: name.to_owned(),
        value: value.to_owned(),
        kind,
    };
    match kind {
        ArgumentType::String => Ok(()),
        ArgumentType::Integer => {
            let digits = value.strip_prefix('-').unwrap_or(value);
            if !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && value.parse::<i64>().is_ok()
            {
                Ok(())
            } else {
                Err(bad("integer"))
            }
        }
        ArgumentType::Number => {
            let plain = value
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
            match value.parse::<f64>() {
                Ok(v) if plain && v.is_finite() => Ok(()),
                _ => Err(bad("number")),
            }
        }
        ArgumentType::Duration => {
            if is_promql_duration(value) {
                Ok(())
            } else {
                Err(bad("duration (e.g. 30s, 5m, 1h30m)"))
            }
        }
    }
}

/// `1h30m`, `5m`, `250ms`: one or more number-unit pairs with PromQL's units.
pub fn is_promql_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

/// Where a placeholder sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    Bare,
    Quoted { quote: char, regex: bool },
}

/// Renders `template` with `bindings`, then checks that the result parses and keeps the
/// template's shape. `types` gives the declared type of each argument.
pub fn render(
    template: &str,
    bindings: &Bindings,
    types: &BTreeMap<String, ArgumentType>,
) -> Result<String, RenderError> {
    check_bounds(template)?;
    let rendered = substitute(template, types, |name| value_of(name, bindings))?;
    check_bounds(&rendered)?;
    let probe = substitute(template, types, |name| probe_value(name, types))?;
    let real_ast = promql_parser::parser::parse(&rendered).map_err(RenderError::Parse)?;
    let probe_ast = promql_parser::parser::parse(&probe).map_err(RenderError::Parse)?;
    if skeleton(&real_ast.to_string()) != skeleton(&probe_ast.to_string()) {
        return Err(RenderError::ShapeChanged);
    }
    Ok(rendered)
}

/// The same query looking `seconds` into the past: every selector (or subquery) gets that much
/// more `offset`. The post-promotion verification compares the promoted stable with itself
/// before the rollout this way.
pub fn shift_back(promql: &str, seconds: u64) -> Result<String, RenderError> {
    check_bounds(promql)?;
    let mut ast = promql_parser::parser::parse(promql).map_err(RenderError::Parse)?;
    shift(&mut ast, std::time::Duration::from_secs(seconds));
    Ok(ast.to_string())
}

fn shift(expr: &mut promql_parser::parser::Expr, by: std::time::Duration) {
    use promql_parser::parser::{Expr, Offset};
    let later = |offset: &mut Option<Offset>| {
        *offset = Some(match offset.take() {
            None => Offset::Pos(by),
            Some(Offset::Pos(d)) => Offset::Pos(d + by),
            Some(Offset::Neg(d)) if d > by => Offset::Neg(d - by),
            Some(Offset::Neg(d)) => Offset::Pos(by - d),
        });
    };
    match expr {
        Expr::VectorSelector(vs) => later(&mut vs.offset),
        Expr::MatrixSelector(ms) => later(&mut ms.vs.offset),
        // A subquery's offset moves everything inside it.
        Expr::Subquery(sq) => later(&mut sq.offset),
        Expr::Aggregate(a) => {
            shift(&mut a.expr, by);
            if let Some(p) = a.param.as_mut() {
                shift(p, by);
            }
        }
        Expr::Unary(u) => shift(&mut u.expr, by),
        Expr::Paren(p) => shift(&mut p.expr, by),
        Expr::Binary(b) => {
            shift(&mut b.lhs, by);
            shift(&mut b.rhs, by);
        }
        Expr::Call(c) => c.args.args.iter_mut().for_each(|a| shift(a, by)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// The same counter query as a per-second rate over `window`: each bare selector becomes
/// `rate(selector[window])`, inside whatever aggregates it, so a graph of it shows the traffic
/// rather than a counter's climb. Selectors that already have a range are left as they are.
pub fn as_rate(promql: &str, window: std::time::Duration) -> Result<String, RenderError> {
    use promql_parser::parser::Expr;
    check_bounds(promql)?;
    let mut ast = promql_parser::parser::parse(promql).map_err(RenderError::Parse)?;
    let Ok(Expr::Call(rate)) = promql_parser::parser::parse("rate(x[1m])") else {
        return Ok(ast.to_string());
    };
    rated(&mut ast, &rate.func, window);
    Ok(ast.to_string())
}

fn rated(
    expr: &mut promql_parser::parser::Expr,
    rate: &promql_parser::parser::Function,
    window: std::time::Duration,
) {
    use promql_parser::parser::{Call, Expr, FunctionArgs, MatrixSelector};
    match expr {
        Expr::VectorSelector(vs) => {
            let vs = vs.clone();
            *expr = Expr::Call(Call {
                func: rate.clone(),
                args: FunctionArgs {
                    args: vec![Box::new(Expr::MatrixSelector(MatrixSelector {
                        vs,
                        range: window,
                    }))],
                },
            });
        }
        Expr::Aggregate(a) => rated(&mut a.expr, rate, window),
        Expr::Unary(u) => rated(&mut u.expr, rate, window),
        Expr::Paren(p) => rated(&mut p.expr, rate, window),
        Expr::Binary(b) => {
            rated(&mut b.lhs, rate, window);
            rated(&mut b.rhs, rate, window);
        }
        Expr::Call(c) => c.args.args.iter_mut().for_each(|a| rated(a, rate, window)),
        Expr::MatrixSelector(_)
        | Expr::Subquery(_)
        | Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::Extension(_) => {}
    }
}

/// Checks a template without values: placeholders known, strings quoted, and the query (with
/// probe values) parses. Used by lint.
pub fn check_template(
    template: &str,
    types: &BTreeMap<String, ArgumentType>,
) -> Result<String, RenderError> {
    check_bounds(template)?;
    let probe = substitute(template, types, |name| probe_value(name, types))?;
    promql_parser::parser::parse(&probe).map_err(RenderError::Parse)?;
    Ok(probe)
}

/// The names of the placeholders a template uses (`arm`, `args.service`, …), in order.
pub fn placeholders(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        out.push(rest[start + 2..start + len].trim().to_owned());
        rest = &rest[start + len + 2..];
    }
    out
}

fn value_of(name: &str, b: &Bindings) -> Result<String, RenderError> {
    match name {
        "arm" => Ok(b.arm.clone()),
        "namespace" => Ok(b.namespace.clone()),
        _ => {
            let arg = name
                .strip_prefix("args.")
                .ok_or_else(|| RenderError::UnknownPlaceholder(name.to_owned()))?;
            b.args
                .get(arg)
                .cloned()
                .ok_or_else(|| RenderError::Missing(arg.to_owned()))
        }
    }
}

fn probe_value(name: &str, types: &BTreeMap<String, ArgumentType>) -> Result<String, RenderError> {
    match name {
        "arm" | "namespace" => Ok("probe".into()),
        _ => {
            let arg = name
                .strip_prefix("args.")
                .ok_or_else(|| RenderError::UnknownPlaceholder(name.to_owned()))?;
            match types.get(arg) {
                None => Err(RenderError::Undeclared(arg.to_owned())),
                Some(ArgumentType::String) => Ok("probe".into()),
                Some(ArgumentType::Integer) | Some(ArgumentType::Number) => Ok("1".into()),
                Some(ArgumentType::Duration) => Ok("1m".into()),
            }
        }
    }
}

fn is_string_placeholder(name: &str, types: &BTreeMap<String, ArgumentType>) -> bool {
    match name.strip_prefix("args.") {
        Some(arg) => matches!(types.get(arg), Some(ArgumentType::String) | None),
        None => true,
    }
}

fn substitute(
    template: &str,
    types: &BTreeMap<String, ArgumentType>,
    mut value: impl FnMut(&str) -> Result<String, RenderError>,
) -> Result<String, RenderError> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut ctx = Context::Bare;
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("{{") {
            let end = rest.find("}}").ok_or(RenderError::Unterminated)?;
            let name = rest[2..end].trim();
            let v = value(name)?;
            match ctx {
                Context::Bare => {
                    if is_string_placeholder(name, types) {
                        return Err(RenderError::Unquoted(name.to_owned()));
                    }
                    out.push_str(&v);
                }
                Context::Quoted { quote, regex } => {
                    let v = if regex { escape_regex(&v) } else { v };
                    if quote == '`' {
                        if v.contains('`') {
                            return Err(RenderError::Backtick(name.to_owned()));
                        }
                        out.push_str(&v);
                    } else {
                        out.push_str(&escape_literal(&v, quote));
                    }
                }
            }
            rest = &rest[end + 2..];
            continue;
        }
        match ctx {
            Context::Bare if matches!(c, '"' | '\'' | '`') => {
                let before = out.trim_end();
                let regex = before.ends_with("=~") || before.ends_with("!~");
                ctx = Context::Quoted { quote: c, regex };
            }
            Context::Quoted { quote, .. } if c == '\\' && quote != '`' => {
                // Keep the escape and the escaped character together.
                out.push(c);
                rest = &rest[c.len_utf8()..];
                if let Some(next) = rest.chars().next() {
                    out.push(next);
                    rest = &rest[next.len_utf8()..];
                }
                continue;
            }
            Context::Quoted { quote, .. } if c == quote => ctx = Context::Bare,
            _ => {}
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Ok(out)
}

/// Escapes a value for a PromQL (Go-syntax) quoted string.
fn escape_literal(v: &str, quote: char) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Escapes RE2 metacharacters so the value matches itself literally.
pub fn escape_regex(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The query's structure with literal values masked: strings become `""`, numbers and
/// durations `N`.
fn skeleton(canonical: &str) -> String {
    let mut out = String::with_capacity(canonical.len());
    let chars: Vec<char> = canonical.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            let quote = c;
            i += 1;
            while i < chars.len() && chars[i] != quote {
                if chars[i] == '\\' && quote != '`' {
                    i += 1;
                }
                i += 1;
            }
            out.push_str("\"\"");
            i += 1;
            continue;
        }
        let prev_is_word = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if c.is_ascii_digit() && !prev_is_word {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push('N');
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifting_back_offsets_every_selector_once() {
        let cases = [
            (
                r#"sum(rate(x{a="1"}[1m]))"#,
                r#"sum(rate(x{a="1"}[1m] offset 1m30s))"#,
            ),
            (
                r#"sum(x{a=~"5.."}) / sum(y offset 1m)"#,
                r#"sum(x{a=~"5.."} offset 1m30s) / sum(y offset 2m30s)"#,
            ),
            (
                "max_over_time(rate(x[1m])[10m:1m])",
                "max_over_time(rate(x[1m])[10m:1m] offset 1m30s)",
            ),
            (
                "histogram_quantile(0.9, sum by (le) (b))",
                "histogram_quantile(0.9, sum by (le) (b offset 1m30s))",
            ),
            ("x offset -2m", "x offset -30s"),
            ("x offset -1m", "x offset 30s"),
        ];
        for (q, want) in cases {
            let got = shift_back(q, 90).expect("parses");
            let canonical = promql_parser::parser::parse(want)
                .expect("want parses")
                .to_string();
            assert_eq!(got, canonical, "{q}");
        }
        assert!(matches!(shift_back("sum(", 60), Err(RenderError::Parse(_))));
    }

    fn types(pairs: &[(&str, ArgumentType)]) -> BTreeMap<String, ArgumentType> {
        pairs.iter().map(|(n, t)| (n.to_string(), *t)).collect()
    }

    fn bindings(arm: &str, args: &[(&str, &str)]) -> Bindings {
        Bindings {
            arm: arm.into(),
            namespace: "shop".into(),
            args: args
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    const ERRORS: &str = r#"sum(istio_requests_total{destination_workload="{{arm}}", destination_workload_namespace="{{namespace}}", response_code=~"5.."})"#;

    #[test]
    fn renders_arm_and_namespace_into_label_values() {
        let q = render(ERRORS, &bindings("checkout-canary", &[]), &types(&[])).expect("renders");
        assert_eq!(
            q,
            r#"sum(istio_requests_total{destination_workload="checkout-canary", destination_workload_namespace="shop", response_code=~"5.."})"#
        );
    }

    #[test]
    fn an_injection_attempt_stays_a_label_value() {
        let evil = r#"x"}) or vector(1) #"#;
        let q = render(ERRORS, &bindings(evil, &[]), &types(&[])).expect("neutralised");
        assert!(
            q.contains(r#"destination_workload="x\"}) or vector(1) #""#),
            "{q}"
        );
        // Still one aggregation over one selector, whose label value is the whole string.
        let ast = promql_parser::parser::parse(&q).expect("parses");
        let promql_parser::parser::Expr::Aggregate(agg) = ast else {
            panic!("the top of the query is no longer the sum: {ast}");
        };
        let promql_parser::parser::Expr::VectorSelector(sel) = *agg.expr else {
            panic!("the sum no longer wraps one selector");
        };
        let m = sel
            .matchers
            .matchers
            .iter()
            .find(|m| m.name == "destination_workload")
            .expect("the matcher is still there");
        assert_eq!(m.value, evil);
    }

    #[test]
    fn regex_matchers_escape_metacharacters() {
        let t = r#"sum(up{pod=~"{{arm}}-.+"})"#;
        let q = render(t, &bindings("a.b(c)|d", &[]), &types(&[])).expect("renders");
        // RE2 escapes, then doubled for the Go string literal.
        assert_eq!(q, r#"sum(up{pod=~"a\\.b\\(c\\)\\|d-.+"})"#);
        let injected = render(t, &bindings(".*", &[]), &types(&[])).expect("renders");
        assert_eq!(injected, r#"sum(up{pod=~"\\.\\*-.+"})"#);
    }

    #[test]
    fn typed_arguments_outside_quotes_are_checked() {
        let t = r#"histogram_quantile({{args.q}}, sum by (le) (rate(x_bucket{a="{{arm}}"}[{{args.window}}]))) > {{args.max}}"#;
        let ty = types(&[
            ("q", ArgumentType::Number),
            ("window", ArgumentType::Duration),
            ("max", ArgumentType::Integer),
        ]);
        let ok = bindings("c", &[("q", "0.99"), ("window", "2m"), ("max", "3")]);
        let q = render(t, &ok, &ty).expect("renders");
        assert!(
            q.contains("[2m]") && q.starts_with("histogram_quantile(0.99,"),
            "{q}"
        );
        for (name, bad) in [
            ("window", "2m]) or vector(1"),
            ("q", "1) or vector(1"),
            ("max", "3 or 1"),
            ("q", "NaN"),
            ("window", "5x"),
        ] {
            let declared: Vec<Argument> = ty
                .iter()
                .map(|(n, k)| Argument {
                    name: n.clone(),
                    kind: *k,
                    default: Some(match k {
                        ArgumentType::Duration => "1m".into(),
                        _ => "1".into(),
                    }),
                    description: None,
                })
                .collect();
            let err = bind_args(&declared, &[(name.to_string(), bad.to_string())]).expect_err(bad);
            assert!(matches!(err, RenderError::BadValue { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn a_string_placeholder_outside_quotes_is_refused() {
        let err =
            render("sum(rate({{arm}}[1m]))", &bindings("x", &[]), &types(&[])).expect_err("bare");
        assert_eq!(err, RenderError::Unquoted("arm".into()));
        assert!(err.to_string().contains("inside a quoted label value"));
    }

    #[test]
    fn unknown_and_undeclared_placeholders_are_refused() {
        assert_eq!(
            render(r#"up{a="{{pod}}"}"#, &bindings("x", &[]), &types(&[])),
            Err(RenderError::UnknownPlaceholder("pod".into()))
        );
        assert_eq!(
            check_template(r#"up{a="{{args.zone}}"}"#, &types(&[])),
            Err(RenderError::Undeclared("zone".into()))
        );
        assert_eq!(
            render(r#"up{a="{{arm"}"#, &bindings("x", &[]), &types(&[])),
            Err(RenderError::Unterminated)
        );
    }

    #[test]
    fn arguments_are_bound_with_defaults_and_unknown_ones_refused() {
        let declared = vec![
            Argument {
                name: "route".into(),
                kind: ArgumentType::String,
                default: None,
                description: None,
            },
            Argument {
                name: "window".into(),
                kind: ArgumentType::Duration,
                default: Some("2m".into()),
                description: None,
            },
        ];
        let bound = bind_args(&declared, &[("route".into(), "/pay".into())]).expect("binds");
        assert_eq!(bound.get("window").map(String::as_str), Some("2m"));
        assert_eq!(
            bind_args(&declared, &[]),
            Err(RenderError::Missing("route".into()))
        );
        assert_eq!(
            bind_args(
                &declared,
                &[("route".into(), "/".into()), ("zone".into(), "a".into())]
            ),
            Err(RenderError::Undeclared("zone".into()))
        );
    }

    #[test]
    fn oversized_or_overdeep_queries_are_refused_before_parsing() {
        // What crashed the controller: 3,000 terms of `sum(x{…}) + 1 + 1 …`.
        let chain = format!(r#"sum(x{{job="{{{{arm}}}}"}}){}"#, " + 1".repeat(3000));
        let types = BTreeMap::new();
        assert_eq!(
            render(&chain, &bindings("web", &[]), &types),
            Err(RenderError::TooBig(TooBig::TooLong(chain.len())))
        );
        let short_chain = format!("x{}", "+1".repeat(MAX_OPERATORS + 1));
        assert!(short_chain.len() < MAX_QUERY_BYTES);
        assert_eq!(
            check_template(&short_chain, &types),
            Err(RenderError::TooBig(TooBig::TooManyOperators))
        );
        assert_eq!(
            check_template(&format!("x{}", " or y".repeat(MAX_OPERATORS + 1)), &types),
            Err(RenderError::TooBig(TooBig::TooManyOperators))
        );
        let unary = format!("{}1", "-".repeat(MAX_OPERATORS + 1));
        assert_eq!(
            shift_back(&unary, 60),
            Err(RenderError::TooBig(TooBig::TooManyOperators))
        );
        let deep = format!(
            "{}x{}",
            "(".repeat(MAX_NESTING + 1),
            ")".repeat(MAX_NESTING + 1)
        );
        assert_eq!(
            check_template(&deep, &types),
            Err(RenderError::TooBig(TooBig::TooDeep))
        );
        // Operators inside strings, matchers and ranges do not count.
        let quoted = format!(r#"sum(x{{a="{}", b!~"-+"}}[5m:1m])"#, "+".repeat(500));
        assert!(check_bounds(&quoted).is_ok());
        // A long string value makes the rendered query too long, not a parse.
        let long_value = "v".repeat(MAX_QUERY_BYTES);
        assert!(matches!(
            render(r#"x{a="{{arm}}"}"#, &bindings(&long_value, &[]), &types),
            Err(RenderError::TooBig(TooBig::TooLong(_)))
        ));
    }

    #[test]
    fn the_worst_admitted_query_renders_on_a_small_stack() {
        let q = worst_admitted();
        assert_eq!(q.len(), MAX_QUERY_BYTES);
        // 256 KiB: an eighth of a tokio worker's stack. Rendering parses, prints and compares
        // the query; offsetting rewrites it; nothing of it may recurse past the bounds.
        let done = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let rendered = render(&q, &bindings("web", &[]), &BTreeMap::new())?;
                shift_back(&rendered, 600)
            })
            .expect("thread")
            .join()
            .expect("no stack overflow");
        assert!(done.is_ok(), "{done:?}");
    }

    #[test]
    fn broken_promql_is_a_parse_error() {
        let err =
            render(r#"sum(up{a="{{arm}}"}"#, &bindings("x", &[]), &types(&[])).expect_err("broken");
        assert!(matches!(err, RenderError::Parse(_)), "{err}");
    }

    #[test]
    fn backtick_strings_take_values_without_backticks() {
        let t = "up{a=`{{arm}}`}";
        assert_eq!(
            render(t, &bindings("x\"y", &[]), &types(&[])).expect("ok"),
            "up{a=`x\"y`}"
        );
        assert_eq!(
            render(t, &bindings("x`y", &[]), &types(&[])),
            Err(RenderError::Backtick("arm".into()))
        );
    }

    #[test]
    fn durations_follow_promql_units() {
        for ok in ["5m", "1h30m", "250ms", "7d", "1y"] {
            assert!(is_promql_duration(ok), "{ok}");
        }
        for bad in ["", "5", "m", "5 m", "1.5m", "5m]", "-5m"] {
            assert!(!is_promql_duration(bad), "{bad}");
        }
    }

    #[test]
    fn the_skeleton_masks_literals_but_keeps_structure() {
        assert_eq!(
            skeleton(r#"sum(rate(http_2xx_total{a="b\"c"}[5m])) > 0.5"#),
            r#"sum(rate(http_2xx_total{a=""}[N])) > N"#
        );
    }

    #[test]
    fn counters_are_graphed_as_rates_inside_their_aggregation() {
        let m = std::time::Duration::from_secs(60);
        assert_eq!(
            as_rate(r#"sum(requests_total{arm="c"})"#, m).expect("rate"),
            r#"sum(rate(requests_total{arm="c"}[1m]))"#
        );
        assert_eq!(
            as_rate(r#"sum by (le) (d_bucket{arm="c"})"#, m).expect("rate"),
            r#"sum by (le) (rate(d_bucket{arm="c"}[1m]))"#
        );
        // Already a range: left alone.
        assert_eq!(
            as_rate(r#"sum(rate(x[5m]))"#, m).expect("rate"),
            r#"sum(rate(x[5m]))"#
        );
        assert!(as_rate("sum(", m).is_err());
    }
}
