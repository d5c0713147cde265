//! What the benchmarks share: calibration to a false-positive rate, first alarms, quantiles of
//! detection times, and a two-thread map.

/// The threshold at which `fp` of the null runs alarm: alarms are `value > threshold`.
pub fn calibrate(null_maxima: &mut [f64], fp: f64) -> f64 {
    null_maxima.sort_by(f64::total_cmp);
    let allowed = (null_maxima.len() as f64 * fp).floor() as usize;
    null_maxima[null_maxima.len() - 1 - allowed]
}

/// The time of the first evaluation whose danger value exceeds `threshold`.
pub fn first_alarm(trace: &[(usize, f64)], threshold: f64) -> Option<usize> {
    trace.iter().find(|(_, v)| *v > threshold).map(|(t, _)| *t)
}

/// The `q` quantile of detection times sorted with misses last.
pub fn quantile(sorted: &[Option<usize>], q: f64) -> String {
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    match sorted[idx] {
        Some(t) => format!("{t} s"),
        None => "> 1 h".to_owned(),
    }
}

/// Runs `f` over 0..n on two threads (the benchmark machine has two cores), in order.
pub fn parallel<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let half = n / 2;
    std::thread::scope(|scope| {
        let f = &f;
        let second = scope.spawn(move || (half..n).map(f).collect::<Vec<T>>());
        let mut out: Vec<T> = (0..half).map(f).collect();
        out.extend(second.join().expect("benchmark thread"));
        out
    })
}
