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

/// The largest danger value of a trace.
pub fn peak(trace: &[(usize, f64)]) -> f64 {
    trace
        .iter()
        .map(|(_, v)| *v)
        .fold(f64::NEG_INFINITY, f64::max)
}

/// From the A/A peaks (a row per run, a column per method) and each method's usual threshold:
/// the threshold calibrated to `fp`, and the false-positive rate at the usual one.
pub fn thresholds(peaks: &[Vec<f64>], usual: &[f64], fp: f64) -> (Vec<f64>, Vec<f64>) {
    usual
        .iter()
        .enumerate()
        .map(|(k, u)| {
            let mut column: Vec<f64> = peaks.iter().map(|row| row[k]).collect();
            let at_usual = column.iter().filter(|v| **v > *u).count() as f64 / column.len() as f64;
            (calibrate(&mut column, fp), at_usual)
        })
        .unzip()
}

/// A run's first alarm at the calibrated and at the usual threshold.
pub type Alarm = (Option<usize>, Option<usize>);

/// The table cells of method `k` from its (calibrated, usual) first alarms per run: detected
/// share, median and p90 time at the calibrated threshold, the false-positive rate at the usual
/// threshold (`usual_fp`), and the median time there.
pub fn detection_cells(alarms: &[Vec<Alarm>], k: usize, usual_fp: f64) -> String {
    let sorted = |pick: fn(&Alarm) -> Option<usize>| {
        let mut v: Vec<Option<usize>> = alarms.iter().map(|row| pick(&row[k])).collect();
        v.sort_by_key(|t| t.unwrap_or(usize::MAX));
        v
    };
    let calibrated = sorted(|a| a.0);
    let at_usual = sorted(|a| a.1);
    let detected = calibrated.iter().filter(|t| t.is_some()).count();
    format!(
        "{:.0}% | {} | {} | {:.2}% | {}",
        detected as f64 * 100.0 / alarms.len() as f64,
        quantile(&calibrated, 0.5),
        quantile(&calibrated, 0.9),
        usual_fp * 100.0,
        quantile(&at_usual, 0.5)
    )
}
