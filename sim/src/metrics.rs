//! Mesh-style series, named and labelled as Istio's standard metrics are, so analysis templates
//! written for Istio run against the simulator unchanged.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::Rng;
use rand_distr::{Binomial, Distribution, Poisson};

use crate::plan::{Destination, Flow};

/// Istio's default buckets for `istio_request_duration_milliseconds`.
pub const ISTIO_DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The latency a mesh reports for a request it could not route anywhere.
const NO_UPSTREAM_LATENCY_MS: f64 = 0.3;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    reporter: &'static str,
    source_workload: &'static str,
    source_workload_namespace: &'static str,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_service: String,
    destination_service_name: String,
    destination_service_namespace: String,
    destination_app: String,
    destination_version: String,
    destination_canonical_service: String,
    request_protocol: &'static str,
    response_code: String,
    response_flags: &'static str,
}

impl RequestLabels {
    fn new(d: &Destination, code: u16, flags: &'static str) -> Self {
        RequestLabels {
            reporter: "destination",
            source_workload: "rollguard-sim",
            source_workload_namespace: "rollguard-sim",
            destination_workload: d.workload.clone(),
            destination_workload_namespace: d.workload_namespace.clone(),
            destination_service: format!(
                "{}.{}.svc.cluster.local",
                d.service_name, d.service_namespace
            ),
            destination_service_name: d.service_name.clone(),
            destination_service_namespace: d.service_namespace.clone(),
            destination_app: d.app.clone(),
            destination_version: d.version.clone(),
            destination_canonical_service: if d.app == crate::plan::UNKNOWN {
                d.workload.clone()
            } else {
                d.app.clone()
            },
            request_protocol: "http",
            response_code: code.to_string(),
            response_flags: flags,
        }
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(ISTIO_DURATION_BUCKETS_MS)
}

pub struct MeshMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram>,
}

impl MeshMetrics {
    pub fn register(registry: &mut Registry) -> MeshMetrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RequestLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "istio_requests",
            "Requests served, by destination and response code",
            requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds, by destination and response code",
            durations.clone(),
        );
        MeshMetrics {
            requests,
            durations,
        }
    }

    /// Simulates `seconds` of traffic for each flow: a Poisson number of requests, a binomial
    /// share of them failing, each with a latency from the profile. Returns the requests sent.
    pub fn simulate<R: Rng + ?Sized>(&self, flows: &[Flow], seconds: f64, rng: &mut R) -> u64 {
        let mut sent = 0;
        for flow in flows {
            let mean = flow.rps * seconds;
            if mean.is_nan() || mean <= 0.0 {
                continue;
            }
            let n = Poisson::new(mean)
                .map(|p| p.sample(rng) as u64)
                .unwrap_or(0);
            if n == 0 {
                continue;
            }
            sent += n;
            let Some(profile) = &flow.profile else {
                let labels = RequestLabels::new(&flow.destination, 503, "UH");
                self.requests.get_or_create(&labels).inc_by(n);
                let h = self.durations.get_or_create(&labels);
                for _ in 0..n {
                    h.observe(NO_UPSTREAM_LATENCY_MS);
                }
                continue;
            };
            let errors = Binomial::new(n, profile.error_rate)
                .map(|b| b.sample(rng))
                .unwrap_or(0);
            let latency = profile.latency();
            for (code, count) in [(profile.error_code, errors), (200, n - errors)] {
                if count == 0 {
                    continue;
                }
                let labels = RequestLabels::new(&flow.destination, code, "-");
                self.requests.get_or_create(&labels).inc_by(count);
                let h = self.durations.get_or_create(&labels);
                for _ in 0..count {
                    h.observe(latency.sample(rng));
                }
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::FaultProfile;
    use prometheus_client::encoding::text::encode;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::sync::Arc;

    fn flow(workload: &str, rps: f64, profile: Option<FaultProfile>) -> Flow {
        Flow {
            destination: Destination {
                workload: workload.into(),
                workload_namespace: "shop".into(),
                service_name: format!("{workload}-svc"),
                service_namespace: "shop".into(),
                app: "checkout".into(),
                version: "v2".into(),
            },
            rps,
            source: "test".into(),
            pod: None,
            profile: profile.map(Arc::new),
        }
    }

    /// Sum of the samples of `metric` whose line contains every one of `labels`.
    fn sum_of(text: &str, metric: &str, labels: &[&str]) -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with(&format!("{metric}{{")) && labels.iter().all(|x| l.contains(x))
            })
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }

    #[test]
    fn counts_follow_rates_and_error_ratios() {
        let mut registry = Registry::default();
        let metrics = MeshMetrics::register(&mut registry);
        let flows = vec![
            flow("checkout-stable", 900.0, Some(FaultProfile::default())),
            flow(
                "checkout-canary",
                100.0,
                Some(FaultProfile {
                    error_rate: 0.2,
                    ..FaultProfile::default()
                }),
            ),
        ];
        let mut rng = StdRng::seed_from_u64(1);
        let mut sent = 0;
        for _ in 0..100 {
            sent += metrics.simulate(&flows, 0.1, &mut rng);
        }
        let mut text = String::new();
        encode(&mut text, &registry).expect("encoding to a String cannot fail");
        // 10 simulated seconds at 1000 rps.
        assert!((9_600..=10_400).contains(&sent), "sent {sent}");
        let canary = "destination_workload=\"checkout-canary\"";
        let canary_ok = sum_of(
            &text,
            "istio_requests_total",
            &[canary, "response_code=\"200\""],
        );
        let canary_err = sum_of(
            &text,
            "istio_requests_total",
            &[canary, "response_code=\"500\""],
        );
        let stable_err = sum_of(
            &text,
            "istio_requests_total",
            &["checkout-stable", "response_code=\"500\""],
        );
        // About 1000 canary requests, a fifth of them failing; the stable has no errors.
        assert!(
            (900.0..=1100.0).contains(&(canary_ok + canary_err)),
            "canary requests\n{text}"
        );
        assert!(
            (0.16..=0.24).contains(&(canary_err / (canary_ok + canary_err))),
            "canary errors\n{text}"
        );
        assert_eq!(stable_err, 0.0);
        let observed = sum_of(&text, "istio_request_duration_milliseconds_count", &[]);
        assert_eq!(observed, sent as f64, "every request has a latency");
        assert!(
            text.contains("destination_service=\"checkout-canary-svc.shop.svc.cluster.local\"")
        );
        assert!(
            text.contains("istio_request_duration_milliseconds_bucket{"),
            "{text}"
        );
        assert!(text.contains("le=\"3600000.0\""), "{text}");
    }

    #[test]
    fn no_healthy_upstream_is_a_503_with_the_uh_flag() {
        let mut registry = Registry::default();
        let metrics = MeshMetrics::register(&mut registry);
        let mut rng = StdRng::seed_from_u64(2);
        metrics.simulate(&[flow("unknown", 100.0, None)], 1.0, &mut rng);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encoding to a String cannot fail");
        assert!(
            text.contains("response_code=\"503\",response_flags=\"UH\""),
            "{text}"
        );
        assert!(!text.contains("response_code=\"200\""), "{text}");
    }
}
