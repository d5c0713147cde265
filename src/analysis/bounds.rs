//! Bounds on a query, checked before anything parses or renders it. The parser, the printer
//! and the offset rewriting recurse over a query's tree; a tenant does not choose how deep.

use thiserror::Error;

/// The most bytes a query may have, as written in a template or once rendered.
pub const MAX_QUERY_BYTES: usize = 4096;
/// The most operators (binary, unary, set and comparison) a query may have. The parser, the
/// printer and the offset rewriting all recurse over the query's tree, whose depth grows with
/// each operator of a chain like `x + 1 + 1 …`; real queries use a handful.
pub const MAX_OPERATORS: usize = 64;
/// The most brackets (calls, groups, aggregations) a query may nest.
pub const MAX_NESTING: usize = 32;

/// The worst query the bounds admit: 4 KiB, with every operator and bracket they allow. The
/// tests render it on a small stack; `cargo bench --bench render` times it.
pub fn worst_admitted() -> String {
    let mut q = String::new();
    // sum( rate( { [ take four levels.
    for _ in 0..MAX_NESTING - 4 {
        q.push_str("abs(");
    }
    q.push_str(r#"sum(rate(http_requests_total{pod=~"{{arm}}-.*", code=~"5.."}[5m]))"#);
    for _ in 0..MAX_OPERATORS {
        q.push_str(" + 1");
    }
    q.push_str(&")".repeat(MAX_NESTING - 4));
    let pad = MAX_QUERY_BYTES - q.len();
    q.replace(
        "http_requests_total",
        &format!("http_requests_total{}", "_".repeat(pad)),
    )
}

/// A query past one of the bounds.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TooBig {
    #[error("the query is {0} bytes long; at most {MAX_QUERY_BYTES} are accepted")]
    TooLong(usize),
    #[error(
        "the query has more than {MAX_OPERATORS} operators; split it into several metrics or \
         simplify it"
    )]
    TooManyOperators,
    #[error("the query nests brackets more than {MAX_NESTING} deep")]
    TooDeep,
}

/// Checked before a query is parsed or rendered, in one pass without recursion, so that no
/// template decides how deep rollguard recurses or how long it works on one query.
/// Operators are counted outside strings, label matchers and range brackets; a `-` in a number
/// like `1e-3` counts too, which errs on the safe side.
pub fn check_bounds(query: &str) -> Result<(), TooBig> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(TooBig::TooLong(query.len()));
    }
    let bytes = query.as_bytes();
    let (mut operators, mut depth, mut matchers) = (0usize, 0usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == b'\\' && q != b'`' {
                i += 1;
            } else if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' | b'\'' | b'`' => quote = Some(b),
            b'(' | b'[' | b'{' => {
                depth += 1;
                if b != b'(' {
                    matchers += 1;
                }
                if depth > MAX_NESTING {
                    return Err(TooBig::TooDeep);
                }
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if b != b')' {
                    matchers = matchers.saturating_sub(1);
                }
            }
            _ if matchers > 0 => {}
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'<' | b'>' | b'=' | b'!' => {
                operators += 1;
                // `==`, `!=`, `<=`, `>=` are one operator.
                if bytes.get(i + 1) == Some(&b'=') {
                    i += 1;
                }
            }
            b if b.is_ascii_alphabetic() || b == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                if matches!(&query[start..i], "and" | "or" | "unless" | "atan2") {
                    operators += 1;
                }
                if operators > MAX_OPERATORS {
                    return Err(TooBig::TooManyOperators);
                }
                continue;
            }
            _ => {}
        }
        if operators > MAX_OPERATORS {
            return Err(TooBig::TooManyOperators);
        }
        i += 1;
    }
    Ok(())
}
