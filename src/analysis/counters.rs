//! Turning cumulative counters into per-tick increments.
//!
//! Templates query raw counters (`sum(requests_total{…})`, not `rate(…)`), and the engine takes
//! the difference between two measurements. Each tick's increment is then new, non-overlapping
//! evidence, which is what the sequential tests need; windows such as `rate(x[5m])` overlap
//! from one tick to the next and count the same requests again and again.
//!
//! A counter that goes down was reset (a pod restarted, or one pod of a `sum` did). How much it
//! grew across the reset cannot be known from a sum, so the tick contributes nothing for that
//! series and its new value becomes the anchor: a little evidence is lost, none is invented.
//! A series that appears for the first time is anchored, not counted, unless the tracker was
//! anchored on an answer from a known earlier moment (the canary's verified weight): then a
//! series absent at that moment started after it, from zero, and all of it counts.

use std::collections::BTreeMap;

use serde::Serialize;

use super::source::Series;

/// The increments of one answer against the previous one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Increment {
    /// Sum of the increments of the series that were seen before and did not go down.
    pub value: f64,
    /// Series seen for the first time (anchored, not counted).
    pub new_series: usize,
    /// Series that went down (a reset; anchored again, not counted).
    pub resets: usize,
    /// Series seen before that this answer lacks.
    pub vanished: usize,
}

impl Increment {
    /// Whether the whole increment can be trusted as a count of new events.
    pub fn is_clean(&self) -> bool {
        self.resets == 0 && self.new_series == 0
    }
}

/// The last value of each series of one counter query, keyed by its labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CounterTracker {
    anchors: BTreeMap<BTreeMap<String, String>, f64>,
    primed: bool,
    /// Anchored at a known moment: a series first seen later started from zero after it.
    from_zero: bool,
}

impl CounterTracker {
    /// Whether an answer has been recorded, so the next one yields increments.
    pub fn primed(&self) -> bool {
        self.primed
    }

    /// A tracker for a series group first seen after an anchor at a known moment (a new `le`
    /// bucket of a histogram): everything in it is new.
    pub fn from_zero() -> CounterTracker {
        CounterTracker {
            primed: true,
            from_zero: true,
            ..CounterTracker::default()
        }
    }

    /// Records `answer`, queried at a moment when nothing being judged had happened yet (the
    /// canary's weight verified): its values are the anchors, and a series it lacks started
    /// later, from zero.
    pub fn anchor(&mut self, answer: &[Series]) {
        self.advance(answer);
        self.from_zero = true;
    }

    /// Records an answer and returns what grew since the previous one. Values that are not
    /// finite are skipped and keep their old anchor.
    pub fn advance(&mut self, answer: &[Series]) -> Increment {
        let mut inc = Increment::default();
        let mut next = BTreeMap::new();
        for s in answer {
            if !s.value.is_finite() || s.value < 0.0 {
                if let Some(old) = self.anchors.get(&s.labels) {
                    next.insert(s.labels.clone(), *old);
                }
                continue;
            }
            match self.anchors.get(&s.labels) {
                None if self.from_zero => inc.value += s.value,
                None => inc.new_series += usize::from(self.primed),
                Some(old) if s.value < *old => inc.resets += 1,
                Some(old) => inc.value += s.value - old,
            }
            next.insert(s.labels.clone(), s.value);
        }
        inc.vanished = self
            .anchors
            .keys()
            .filter(|k| !next.contains_key(*k))
            .count();
        // A series that vanished keeps its anchor: it may come back (a scrape gap), and then
        // it continues from where it was.
        for (k, v) in &self.anchors {
            next.entry(k.clone()).or_insert(*v);
        }
        self.anchors = next;
        self.primed = true;
        inc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(value: f64) -> Vec<Series> {
        vec![Series {
            labels: BTreeMap::new(),
            value,
        }]
    }

    fn pods(values: &[(&str, f64)]) -> Vec<Series> {
        values
            .iter()
            .map(|(pod, value)| Series {
                labels: BTreeMap::from([("pod".to_owned(), (*pod).to_owned())]),
                value: *value,
            })
            .collect()
    }

    #[test]
    fn the_first_answer_anchors_and_later_ones_count_the_growth() {
        let mut t = CounterTracker::default();
        assert!(!t.primed());
        assert_eq!(t.advance(&one(1000.0)).value, 0.0);
        assert!(t.primed());
        assert_eq!(t.advance(&one(1500.0)).value, 500.0);
        assert_eq!(t.advance(&one(1500.0)).value, 0.0);
    }

    #[test]
    fn a_reset_counts_nothing_and_re_anchors() {
        let mut t = CounterTracker::default();
        t.advance(&one(1000.0));
        let inc = t.advance(&one(40.0));
        assert_eq!((inc.value, inc.resets), (0.0, 1));
        assert!(!inc.is_clean());
        assert_eq!(t.advance(&one(100.0)).value, 60.0);
    }

    #[test]
    fn per_pod_series_reset_alone_and_new_pods_are_anchored() {
        let mut t = CounterTracker::default();
        t.advance(&pods(&[("a", 100.0), ("b", 100.0)]));
        let inc = t.advance(&pods(&[("a", 150.0), ("b", 5.0), ("c", 7.0)]));
        assert_eq!(inc.value, 50.0);
        assert_eq!((inc.resets, inc.new_series, inc.vanished), (1, 1, 0));
        let inc = t.advance(&pods(&[("a", 160.0), ("c", 17.0)]));
        assert_eq!((inc.value, inc.vanished), (20.0, 1));
        // b comes back after a scrape gap and continues from its anchor.
        assert_eq!(
            t.advance(&pods(&[("a", 160.0), ("b", 25.0), ("c", 17.0)]))
                .value,
            20.0
        );
    }

    #[test]
    fn anchored_at_a_known_moment_a_later_series_counts_from_zero() {
        // At the verified weight the canary had no series yet; the stable had 1000.
        let mut canary = CounterTracker::default();
        canary.anchor(&[]);
        assert!(canary.primed());
        let inc = canary.advance(&one(12.0));
        assert_eq!((inc.value, inc.new_series), (12.0, 0));
        assert!(inc.is_clean());
        let mut stable = CounterTracker::default();
        stable.anchor(&one(1000.0));
        assert_eq!(stable.advance(&one(1090.0)).value, 90.0);
        // Without the anchor the first answer only anchors.
        let mut plain = CounterTracker::default();
        plain.advance(&[]);
        let inc = plain.advance(&one(12.0));
        assert_eq!((inc.value, inc.new_series), (0.0, 1));
    }

    #[test]
    fn non_finite_values_are_skipped() {
        let mut t = CounterTracker::default();
        t.advance(&one(10.0));
        assert_eq!(t.advance(&one(f64::NAN)).value, 0.0);
        assert_eq!(t.advance(&one(30.0)).value, 20.0);
    }
}
