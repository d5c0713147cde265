//! A Rollout's release history as the on-call engineer reads it: one row per Release, newest
//! first, with what it is to the Rollout now and whether it can be rolled back to. Pure: the
//! CLI lists the objects and prints the rows.

use kube::ResourceExt;
use serde::Serialize;

use crate::api::Rollout;
use crate::api::release::{Release, ReleasePhase};
use crate::rollout::workload::short_digest;

/// Pod-template annotations read for the commit a release was built from. Documented in
/// `docs/rolling-back.md`; `org.opencontainers.image.revision` is what image builders set.
pub const COMMIT_ANNOTATIONS: [&str; 2] =
    ["rollguard.dev/commit", "org.opencontainers.image.revision"];
/// The pod-template annotation read for the commit's message (its first line is shown).
pub const COMMIT_MESSAGE_ANNOTATION: &str = "rollguard.dev/commit-message";

/// The longest commit id and message shown; the annotations are the tenant's.
const MAX_COMMIT: usize = 64;
const MAX_MESSAGE: usize = 120;

/// What a Release is to its Rollout now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Standing {
    /// Being canaried now.
    Canary,
    /// Serving all traffic: the stable release.
    Current,
    /// The stable release before the current one.
    Previous,
    /// Judged worse than its baseline; never canaried again without an override.
    Unstable,
    /// Served before and was replaced.
    Superseded,
    /// Recorded, never promoted (a canary that was replaced before it finished).
    Candidate,
}

impl std::fmt::Display for Standing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// One line of `rollguard history`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRow {
    pub release: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The primary container's image digest, short.
    pub digest: String,
    pub images: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_message: Option<String>,
    /// When the Release was recorded (the target changed), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployed_at: Option<String>,
    /// Who changed the target, when the Deployment named them (`rollguard.dev/deployed-by`,
    /// checked against the apiserver's user by the chart's admission policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployed_by: Option<String>,
    /// A redeploy's Release: whose images it runs (on the configuration of the release that
    /// was serving when it was made).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redeploy_of: Option<String>,
    pub standing: Standing,
    pub phase: ReleasePhase,
    /// Whether `rollguard rollback --to` may take it.
    pub rollbackable: bool,
    /// Why not, when it may not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_rollbackable: Option<String>,
}

/// The rows for `rollout`'s Releases, newest first (the Releases of other Rollouts are left
/// out).
pub fn rows(rollout: &Rollout, releases: &[Release]) -> Vec<HistoryRow> {
    let name = rollout.name_any();
    let status = rollout.status.clone().unwrap_or_default();
    let named = |r: &Option<crate::api::rollout::ReleaseRef>| r.as_ref().map(|r| r.release.clone());
    let (canary, stable, previous) = (
        named(&status.canary),
        named(&status.stable),
        named(&status.previous_stable),
    );
    let mut mine: Vec<&Release> = releases.iter().filter(|r| r.spec.rollout == name).collect();
    mine.sort_by(|a, b| {
        b.creation_timestamp()
            .map(|t| t.0)
            .cmp(&a.creation_timestamp().map(|t| t.0))
            .then_with(|| b.name_any().cmp(&a.name_any()))
    });
    let mut previous_seen = false;
    mine.into_iter()
        .map(|r| {
            let release = r.name_any();
            let phase = r.status.as_ref().and_then(|s| s.phase).unwrap_or_default();
            let standing = if phase == ReleasePhase::Unstable {
                Standing::Unstable
            } else if canary.as_deref() == Some(release.as_str()) {
                Standing::Canary
            } else if stable.as_deref() == Some(release.as_str()) {
                Standing::Current
            } else if previous.as_deref() == Some(release.as_str())
                || (previous.is_none() && !previous_seen && phase == ReleasePhase::Superseded)
            {
                previous_seen = true;
                Standing::Previous
            } else if phase == ReleasePhase::Superseded || phase == ReleasePhase::Stable {
                Standing::Superseded
            } else {
                Standing::Candidate
            };
            let why_not = not_rollbackable(r, standing);
            let annotations = template_annotations(r);
            let annotation = |key: &str, max: usize| {
                annotations
                    .and_then(|a| a.get(key))
                    .and_then(|v| v.as_str())
                    .map(|v| first_line(v, max))
                    .filter(|v| !v.is_empty())
            };
            HistoryRow {
                version: r.spec.version.clone(),
                digest: r
                    .spec
                    .images
                    .first()
                    .map(|i| short_digest(i.image.rsplit('@').next().unwrap_or(&i.image)))
                    .unwrap_or_default(),
                images: r.spec.images.iter().map(|i| i.image.clone()).collect(),
                change_cause: r.spec.change_cause.clone(),
                redeploy_of: r.spec.redeploy.as_ref().map(|d| d.images_of.clone()),
                commit: COMMIT_ANNOTATIONS
                    .iter()
                    .find_map(|k| annotation(k, MAX_COMMIT)),
                commit_message: annotation(COMMIT_MESSAGE_ANNOTATION, MAX_MESSAGE),
                deployed_at: r
                    .creation_timestamp()
                    .map(|t| crate::time::format_time(t.0.as_second())),
                deployed_by: r.spec.deployed_by.clone(),
                standing,
                phase,
                rollbackable: why_not.is_none(),
                not_rollbackable: why_not,
                release,
            }
        })
        .collect()
}

/// The row `rollguard rollback --to` names: a Release name, a version, or a digest prefix of at
/// least 7 hex digits. Without `to`, the newest release before the current one that can be
/// rolled back to (Previous first).
pub fn rollback_target<'a>(
    rows: &'a [HistoryRow],
    to: Option<&str>,
) -> Result<&'a HistoryRow, String> {
    let Some(to) = to.map(str::trim).filter(|t| !t.is_empty()) else {
        return rows
            .iter()
            .find(|r| r.standing == Standing::Previous && r.rollbackable)
            .or_else(|| {
                rows.iter()
                    .find(|r| r.standing == Standing::Superseded && r.rollbackable)
            })
            .ok_or_else(|| {
                "no earlier release can be rolled back to (see rollguard history)".into()
            });
    };
    let hex = to.strip_prefix("sha256:").unwrap_or(to);
    let by_digest = |r: &&HistoryRow| {
        hex.len() >= 7
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
            && r.images.iter().any(|i| {
                i.rsplit_once("@sha256:")
                    .is_some_and(|(_, d)| d.starts_with(&hex.to_ascii_lowercase()))
            })
    };
    let matches: Vec<&HistoryRow> = rows
        .iter()
        .filter(|r| r.release == to)
        .chain(
            rows.iter()
                .filter(|r| r.release != to && r.version.as_deref() == Some(to)),
        )
        .chain(
            rows.iter()
                .filter(|r| r.release != to && r.version.as_deref() != Some(to))
                .filter(by_digest),
        )
        .collect();
    match matches.as_slice() {
        [] => Err(format!(
            "no release of this Rollout is named {to:?}, has that version, or a digest starting so (see rollguard history)"
        )),
        [one] => Ok(one),
        [first, ..] if first.release == to => Ok(first),
        // A version or digest names the release first made of it, not its redeploys.
        many if many.iter().filter(|r| r.redeploy_of.is_none()).count() == 1 => many
            .iter()
            .find(|r| r.redeploy_of.is_none())
            .copied()
            .ok_or_else(String::new),
        many => Err(format!(
            "{to:?} names {} releases ({}); give the release name",
            many.len(),
            many.iter()
                .map(|r| r.release.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Why a Release cannot be rolled back to, or None when it can: it is not the one serving,
/// not Unstable, its snapshot has containers, and every image is pinned by digest.
fn not_rollbackable(r: &Release, standing: Standing) -> Option<String> {
    if standing == Standing::Current {
        return Some("it is the release serving now".into());
    }
    if standing == Standing::Unstable {
        return Some("it is Unstable (roll back to it only with --override-reason)".into());
    }
    if standing == Standing::Canary {
        return Some("it is being canaried now (rollguard promote finishes it)".into());
    }
    if standing == Standing::Candidate {
        return Some("it never served: its canary was replaced before it finished".into());
    }
    let containers = r.spec.pod_template["spec"]["containers"]
        .as_array()
        .map_or(0, Vec::len);
    if containers == 0 {
        return Some("its pod-template snapshot has no containers".into());
    }
    if let Some(tagged) = r.spec.images.iter().find(|i| !pinned(&i.image)) {
        return Some(format!(
            "image {} is not pinned by digest: the same tag may now name other bytes",
            tagged.image
        ));
    }
    None
}

/// `…@sha256:<64 lowercase hex>`.
pub fn pinned(image: &str) -> bool {
    image.rsplit_once("@sha256:").is_some_and(|(_, hex)| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn template_annotations(r: &Release) -> Option<&serde_json::Map<String, serde_json::Value>> {
    r.spec.pod_template["metadata"]["annotations"].as_object()
}

/// The first line of `text`, at most `max` characters, with an ellipsis when cut.
pub(crate) fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    if line.chars().count() <= max {
        return line.to_owned();
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A manual rollback's log as printed: `mm:ss text`, minutes and seconds since the request
/// was taken.
pub fn log_lines(mr: &crate::api::rollout::ManualRollback) -> Vec<String> {
    let start = crate::time::parse_at(Some(&mr.started_at)).unwrap_or(0);
    mr.log
        .iter()
        .map(|l| {
            let t = (crate::time::parse_at(Some(&l.at)).unwrap_or(start) - start).max(0);
            format!("{:02}:{:02} {}", t / 60, t % 60, l.text)
        })
        .collect()
}

/// The rows as a table for people.
pub fn table(rows: &[HistoryRow]) -> String {
    let mut lines = vec![[
        "RELEASE".to_owned(),
        "VERSION".to_owned(),
        "DIGEST".to_owned(),
        "STATUS".to_owned(),
        "ROLLBACK".to_owned(),
        "DEPLOYED".to_owned(),
        "BY".to_owned(),
        "CHANGE".to_owned(),
    ]];
    for r in rows {
        let change = match (&r.commit, &r.commit_message, &r.change_cause) {
            (Some(c), Some(m), _) => format!("{} {m}", first_line(c, 12)),
            (Some(c), None, cause) => format!(
                "{}{}",
                first_line(c, 12),
                cause
                    .as_deref()
                    .map(|x| format!(" {x}"))
                    .unwrap_or_default()
            ),
            (None, Some(m), _) => m.clone(),
            (None, None, cause) => cause.clone().unwrap_or_default(),
        };
        lines.push([
            r.release.clone(),
            r.version.clone().unwrap_or_else(|| "-".into()),
            r.digest.clone(),
            r.standing.to_string(),
            if r.rollbackable { "yes" } else { "no" }.to_owned(),
            r.deployed_at.clone().unwrap_or_else(|| "-".into()),
            r.deployed_by.clone().unwrap_or_else(|| "-".into()),
            change,
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c == 7 {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::release::{ContainerImage, ReleaseSpec, ReleaseStatus};
    use crate::api::rollout::ReleaseRef;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn release(name: &str, c: char, phase: ReleasePhase, at: i64) -> Release {
        let mut r = Release::new(
            name,
            ReleaseSpec {
                rollout: "checkout".into(),
                images: vec![ContainerImage {
                    container: "app".into(),
                    image: format!("registry.example/checkout@{}", digest(c)),
                }],
                allow_tags: false,
                pod_template: json!({
                    "metadata": {"annotations": {
                        "rollguard.dev/commit": format!("{c}{c}{c}1234"),
                        "rollguard.dev/commit-message": format!("release {name}\n\nlong body"),
                    }},
                    "spec": {"containers": [{"name": "app", "image": "x"}]},
                }),
                version: Some(name.trim_start_matches("checkout-").into()),
                change_cause: None,
                deployed_by: Some("alice@example.com".into()),
                config_hashes: Vec::new(),
                redeploy: None,
            },
        );
        r.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(at).expect("timestamp"),
        ));
        r.status = Some(ReleaseStatus {
            phase: Some(phase),
            ..ReleaseStatus::default()
        });
        r
    }

    fn rollout(stable: Option<&str>, canary: Option<&str>, previous: Option<&str>) -> Rollout {
        let reference = |n: Option<&str>| {
            n.map(|n| ReleaseRef {
                release: n.into(),
                digest: String::new(),
                short_digest: String::new(),
            })
        };
        let mut ro = Rollout::new("checkout", crate::rollout::fixtures::spec());
        ro.status = Some(crate::api::rollout::RolloutStatus {
            stable: reference(stable),
            canary: reference(canary),
            previous_stable: reference(previous),
            ..Default::default()
        });
        ro
    }

    #[test]
    fn newest_first_with_what_each_is_now() {
        // 1.4.2 and 1.5.0 were promoted in turn, 1.6.0 rolled back, 1.7.0 is being canaried.
        let releases = vec![
            release("checkout-1.5.0", 'b', ReleasePhase::Stable, 2_000),
            release("checkout-1.4.2", 'a', ReleasePhase::Superseded, 1_000),
            release("checkout-1.7.0", 'd', ReleasePhase::Progressing, 4_000),
            release("checkout-1.6.0", 'c', ReleasePhase::Unstable, 3_000),
        ];
        let rows = rows(
            &rollout(Some("checkout-1.5.0"), Some("checkout-1.7.0"), None),
            &releases,
        );
        let seen: Vec<(&str, Standing, bool)> = rows
            .iter()
            .map(|r| (r.release.as_str(), r.standing, r.rollbackable))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("checkout-1.7.0", Standing::Canary, false),
                ("checkout-1.6.0", Standing::Unstable, false),
                ("checkout-1.5.0", Standing::Current, false),
                ("checkout-1.4.2", Standing::Previous, true),
            ]
        );
        let r = &rows[3];
        assert_eq!(r.digest, "aaaaaaaaaaaa");
        assert_eq!(r.commit.as_deref(), Some("aaa1234"));
        assert_eq!(r.commit_message.as_deref(), Some("release checkout-1.4.2"));
        assert_eq!(r.deployed_by.as_deref(), Some("alice@example.com"));
        assert_eq!(r.deployed_at.as_deref(), Some("1970-01-01T00:16:40Z"));
        assert!(
            rows[1]
                .not_rollbackable
                .as_deref()
                .unwrap_or("")
                .contains("Unstable")
        );
        let text = table(&rows);
        assert!(text.starts_with("RELEASE"), "{text}");
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(text.contains("Previous  yes"), "{text}");
    }

    #[test]
    fn the_recorded_previous_stable_wins_and_other_rollouts_are_left_out() {
        let mut other = release("cart-1.0.0", 'e', ReleasePhase::Stable, 5_000);
        other.spec.rollout = "cart".into();
        let releases = vec![
            release("checkout-1.5.0", 'b', ReleasePhase::Superseded, 2_000),
            release("checkout-1.4.2", 'a', ReleasePhase::Superseded, 1_000),
            release("checkout-1.6.0", 'c', ReleasePhase::Stable, 3_000),
            other,
        ];
        let rows = rows(
            &rollout(Some("checkout-1.6.0"), None, Some("checkout-1.4.2")),
            &releases,
        );
        let standing: Vec<Standing> = rows.iter().map(|r| r.standing).collect();
        assert_eq!(
            standing,
            vec![Standing::Current, Standing::Superseded, Standing::Previous]
        );
    }

    #[test]
    fn a_tagged_image_or_an_empty_snapshot_cannot_be_rolled_back_to() {
        let mut tagged = release("checkout-1.4.2", 'a', ReleasePhase::Superseded, 1_000);
        tagged.spec.images[0].image = "registry.example/checkout:1.4.2".into();
        let mut empty = release("checkout-1.3.0", 'f', ReleasePhase::Superseded, 500);
        empty.spec.pod_template = json!({});
        let rows = rows(&rollout(None, None, None), &[tagged, empty]);
        assert!(!rows[0].rollbackable);
        assert!(
            rows[0]
                .not_rollbackable
                .as_deref()
                .unwrap_or("")
                .contains("not pinned"),
            "{:?}",
            rows[0]
        );
        assert!(
            rows[1]
                .not_rollbackable
                .as_deref()
                .unwrap_or("")
                .contains("no containers"),
            "{:?}",
            rows[1]
        );
        assert!(pinned(&format!("r/x@{}", digest('a'))));
        assert!(!pinned("r/x@sha256:ABC"));
    }

    #[test]
    fn the_rollback_target_by_name_version_or_digest_prefix_and_the_default() {
        let releases = vec![
            release("checkout-1.7.0", 'd', ReleasePhase::Stable, 4_000),
            release("checkout-1.6.0", 'c', ReleasePhase::Unstable, 3_000),
            release("checkout-1.5.0", 'b', ReleasePhase::Superseded, 2_000),
            release("checkout-1.4.2", 'a', ReleasePhase::Superseded, 1_000),
        ];
        let rows = rows(&rollout(Some("checkout-1.7.0"), None, None), &releases);
        let pick = |to: Option<&str>| rollback_target(&rows, to).map(|r| r.release.clone());
        // The default: the newest earlier release that can be rolled back to.
        assert_eq!(pick(None), Ok("checkout-1.5.0".into()));
        assert_eq!(pick(Some("checkout-1.4.2")), Ok("checkout-1.4.2".into()));
        assert_eq!(pick(Some("1.4.2")), Ok("checkout-1.4.2".into()));
        assert_eq!(pick(Some("aaaaaaa")), Ok("checkout-1.4.2".into()));
        assert_eq!(pick(Some("sha256:bbbbbbbbbb")), Ok("checkout-1.5.0".into()));
        assert!(pick(Some("aaaa")).is_err(), "too short a prefix");
        assert!(
            pick(Some("9.9.9"))
                .expect_err("unknown")
                .contains("no release")
        );
        // The Unstable one is found; whether it may be used is the caller's to say.
        assert_eq!(pick(Some("1.6.0")), Ok("checkout-1.6.0".into()));
        let only_current =
            super::rows(&rollout(Some("checkout-1.7.0"), None, None), &releases[..1]);
        assert!(rollback_target(&only_current, None).is_err());
    }

    #[test]
    fn manual_rollback_log_lines_carry_their_offset_from_the_request() {
        use crate::api::rollout::{LogLine, ManualRollback};
        let mr = ManualRollback {
            started_at: "2026-12-01T10:00:00Z".into(),
            log: vec![
                LogLine {
                    at: "2026-12-01T10:00:00Z".into(),
                    text: "rollback requested".into(),
                },
                LogLine {
                    at: "2026-12-01T10:01:23Z".into(),
                    text: "rollback complete in 83 s".into(),
                },
            ],
            ..ManualRollback::default()
        };
        assert_eq!(
            log_lines(&mr),
            vec![
                "00:00 rollback requested".to_owned(),
                "01:23 rollback complete in 83 s".to_owned()
            ]
        );
    }

    #[test]
    fn tenant_text_is_cut_to_one_bounded_line() {
        assert_eq!(first_line("fix\nbody", 10), "fix");
        assert_eq!(first_line(&"x".repeat(200), 10).chars().count(), 10);
        assert!(first_line(&"x".repeat(200), 10).ends_with('…'));
    }
}
