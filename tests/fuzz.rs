//! Fuzzing by property: lint, query rendering and the webhook signature check take input a
//! tenant (or anyone on the network, for the verifier) chooses. Whatever it is, they answer
//! with a result, never a panic, and rendering stays within the query bounds on a small stack.
//!
//! `make test` runs each property on proptest's default 256 cases; for a longer run:
//! `PROPTEST_CASES=20000 cargo test --test fuzz`.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rollguard::analysis::render::{
    Bindings, MAX_QUERY_BYTES, check_bounds, check_template, render, shift_back,
};
use rollguard::api::analysis::ArgumentType;
use rollguard::escalation::wire::verify;

/// Query-like text: PromQL's tokens, placeholders, quotes and brackets in any order, so that
/// most cases get past the bounds and into the parser, printer and shape check.
fn query_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("sum(".to_owned()),
        Just("rate(".to_owned()),
        Just("x{a=\"".to_owned()),
        Just("\"}".to_owned()),
        Just("[5m]".to_owned()),
        Just(")".to_owned()),
        Just(" + ".to_owned()),
        Just(" / ".to_owned()),
        Just(" or ".to_owned()),
        Just("-".to_owned()),
        Just("{{arm}}".to_owned()),
        Just("{{args.n}}".to_owned()),
        Just("{{args.s}}".to_owned()),
        Just("{{".to_owned()),
        Just("1".to_owned()),
        Just("by (le) ".to_owned()),
        Just("`".to_owned()),
        Just("\\".to_owned()),
        Just("offset 5m".to_owned()),
        "[a-z_]{1,8}",
        "\\PC{0,4}",
    ];
    prop::collection::vec(token, 0..200).prop_map(|t| t.concat())
}

fn types() -> BTreeMap<String, ArgumentType> {
    [
        ("n".to_owned(), ArgumentType::Integer),
        ("s".to_owned(), ArgumentType::String),
    ]
    .into()
}

/// Runs `f` on a 512 KiB stack: a tokio worker has 2 MiB, and rendering must stay far below.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(f)
        .expect("thread")
        .join()
        .expect("no panic and no stack overflow")
}

proptest! {
    #[test]
    fn rendering_any_text_is_a_result_within_bounds(q in query_text(), arm in "\\PC{0,40}", n in "\\PC{0,12}") {
        let args: BTreeMap<String, String> = [("n".to_owned(), n), ("s".to_owned(), "v".to_owned())].into();
        let result = on_small_stack(move || {
            let b = Bindings { arm, namespace: "shop".into(), args };
            let checked = check_template(&q, &types()).map(drop);
            let rendered = render(&q, &b, &types());
            if let Ok(r) = &rendered {
                let _ = shift_back(r, 600);
            }
            (check_bounds(&q).is_ok(), checked, rendered)
        });
        let (bounded, _, rendered) = result;
        if let Ok(r) = rendered {
            prop_assert!(bounded);
            prop_assert!(r.len() <= MAX_QUERY_BYTES);
        }
    }

    #[test]
    fn lint_answers_any_template(q in query_text(), name in "\\PC{0,20}", interval in "\\PC{0,6}") {
        let doc = serde_json::json!({
            "apiVersion": "rollguard.dev/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "t"},
            "spec": {"args": [{"name": name, "type": "string"}],
                     "metrics": [{"name": "m", "provider": "p", "interval": interval,
                                  "errorRate": {"requests": q.clone(), "errors": q}}]},
        });
        on_small_stack(move || rollguard::lint::lint_document(&doc).len());
    }

    #[test]
    fn the_verifier_rejects_garbage_without_panicking(
        ts in "\\PC{0,24}", id in "\\PC{0,40}", body in prop::collection::vec(any::<u8>(), 0..256),
        sig in prop_oneof!["\\PC{0,80}", "sha256=\\PC{60,70}", "sha256=[0-9a-fA-F]{64}"],
        now in any::<i64>(), tolerance in any::<i64>(),
    ) {
        let keys: [&[u8]; 2] = [b"k1", b"k2"];
        let _ = verify(&keys, &ts, &id, &body, &sig, now, tolerance);
    }
}
