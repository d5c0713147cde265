//! How long rendering takes on the worst query a template may hold, and how fast an oversized
//! one is refused: `cargo bench --bench render`. Rendering parses the query twice, prints both
//! trees and compares their shapes; the controller does it once per template and canary.

use std::collections::BTreeMap;
use std::time::Instant;

use rollguard::analysis::render::{Bindings, check_bounds, check_template, render, worst_admitted};

fn time<T>(runs: u32, mut f: impl FnMut() -> T) -> (f64, f64) {
    let mut samples: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[samples.len() - 1])
}

fn main() {
    let worst = worst_admitted();
    let bindings = Bindings {
        arm: "web".into(),
        namespace: "shop".into(),
        args: BTreeMap::new(),
    };
    let types = BTreeMap::new();
    println!("| what | runs | median ms | max ms |");
    println!("|---|---:|---:|---:|");
    let (median, max) = time(200, || render(&worst, &bindings, &types).expect("admitted"));
    println!(
        "| render the worst admitted query ({} bytes) | 200 | {median:.3} | {max:.3} |",
        worst.len()
    );
    let (median, max) = time(200, || check_template(&worst, &types).expect("admitted"));
    println!("| lint's check of it | 200 | {median:.3} | {max:.3} |");
    let huge = format!("sum(x){}", " + 1".repeat(250_000));
    let (median, max) = time(50, || check_bounds(&huge).is_err());
    println!("| refuse a 1 MB query | 50 | {median:.3} | {max:.3} |");
    let long_chain = format!("x{}", "+1".repeat(1500));
    let (median, max) = time(200, || check_bounds(&long_chain).is_err());
    println!("| refuse a 3 KB chain of 1,500 operators | 200 | {median:.3} | {max:.3} |");
}
