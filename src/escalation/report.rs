//! The incident as people read it: the change line, the post-mortem Markdown, and the plain
//! text sections the receivers' formats embed.

use std::fmt::Write as _;

use super::incident::{ActionState, Incident};
use crate::rollout::workload::short_digest;

impl Incident {
    /// Short digests for humans: `1a2b3c4d5e6f (1.6.0)`.
    pub fn to_label(&self) -> String {
        label(&self.change.to_digest, self.change.to_version.as_deref())
    }

    pub fn from_label(&self) -> Option<String> {
        self.change
            .from_digest
            .as_ref()
            .map(|d| label(d, self.change.from_version.as_deref()))
    }

    /// `from → to`, with versions where known.
    pub fn change_line(&self) -> String {
        match self.from_label() {
            Some(from) => format!("{from} → {}", self.to_label()),
            None => self.to_label(),
        }
    }

    /// The post-mortem's Markdown: title, change, evidence table, timeline, actions, links.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# {}\n", md_escape(&self.title));
        let _ = writeln!(
            out,
            "- **Severity:** {:?}\n- **Incident:** `{}` ({:?})\n- **State:** {}",
            self.severity,
            self.dedup_key,
            self.action,
            md_escape(&self.state)
        );
        let _ = writeln!(out, "- **Change:** {}", md_escape(&self.change_line()));
        if let Some(from) = &self.change.from_digest {
            let _ = writeln!(out, "  - from `{from}`");
        }
        let _ = writeln!(out, "  - to `{}`", self.change.to_digest);
        if let Some(image) = &self.change.image {
            let _ = writeln!(out, "  - image `{image}`");
        }
        if let Some(cause) = &self.change.change_cause {
            let _ = writeln!(out, "  - change cause: {}", md_escape(cause));
        }
        if !self.evidence.is_empty() {
            let _ = writeln!(
                out,
                "\n## Evidence\n\n| metric | verdict | judgment | counts (events/requests) | statistic |\n|---|---|---|---|---|"
            );
            for e in &self.evidence {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    cell(&e.metric),
                    cell(&e.verdict),
                    cell(&e.reason),
                    cell(e.counts.as_deref().unwrap_or("")),
                    cell(e.statistic.as_deref().unwrap_or(""))
                );
            }
            let _ = writeln!(out, "\nQueries, as rendered and measured:\n");
            for e in &self.evidence {
                for q in &e.queries {
                    let value = q.value.map_or("no value".to_owned(), |v| format!("{v}"));
                    let _ = writeln!(
                        out,
                        "- {} {} = {value}{}\n  ```promql\n  {}\n  ```",
                        md_escape(&e.metric),
                        md_escape(&q.name),
                        q.graph
                            .as_ref()
                            .map(|g| format!(" ([graph]({g}))"))
                            .unwrap_or_default(),
                        q.promql
                    );
                }
            }
        }
        if !self.timeline.is_empty() {
            let _ = writeln!(out, "\n## Timeline\n");
            for m in &self.timeline {
                let _ = writeln!(out, "- {} {}", m.at, md_escape(&m.what));
            }
        }
        if !self.actions.is_empty() {
            let _ = writeln!(out, "\n## Actions taken\n");
            for a in &self.actions {
                let _ = writeln!(
                    out,
                    "- [{}] {}{}{}",
                    if a.state == ActionState::Done {
                        "x"
                    } else {
                        " "
                    },
                    md_escape(&a.action),
                    a.at.as_ref().map(|t| format!(" ({t})")).unwrap_or_default(),
                    match (a.state, &a.error) {
                        (ActionState::Failing, Some(e)) => format!(": failing: {}", md_escape(e)),
                        (ActionState::InProgress, _) => ": in progress".to_owned(),
                        _ => String::new(),
                    }
                );
            }
        }
        let _ = writeln!(out, "\n## Links\n");
        if let Some(r) = &self.links.runbook {
            let _ = writeln!(out, "- Runbook: {r}");
        }
        let _ = writeln!(out, "- Rollout: `{}`", self.links.rollout);
        for (name, url) in &self.links.graphs {
            let _ = writeln!(out, "- Graph of {}: {url}", md_escape(name));
        }
        out
    }

    /// The evidence as plain text, one line per metric, for receivers without tables.
    pub fn evidence_text(&self) -> String {
        self.evidence
            .iter()
            .map(|e| {
                format!(
                    "{} {}: {}{}",
                    e.metric,
                    e.verdict,
                    e.reason,
                    e.counts
                        .as_ref()
                        .map(|c| format!(" [{c}]"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn timeline_text(&self) -> String {
        self.timeline
            .iter()
            .map(|m| format!("{} {}", m.at, m.what))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn actions_text(&self) -> String {
        self.actions
            .iter()
            .map(|a| {
                format!(
                    "{:?}: {}{}",
                    a.state,
                    a.action,
                    a.error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn label(digest: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("{v} ({})", short_digest(digest)),
        None => short_digest(digest),
    }
}

/// Markdown outside code: characters that would start markup are escaped.
fn md_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn cell(text: &str) -> String {
    md_escape(&text.replace('\n', " "))
}

#[cfg(test)]
mod tests {
    use crate::api::rollout::OutboxAction;
    use crate::escalation::fixtures::*;

    #[test]
    fn markdown_has_every_section_and_escapes_user_text() {
        let md = sample(OutboxAction::Trigger).markdown();
        for section in [
            "# shop/checkout canary rolled back",
            "## Evidence",
            "## Timeline",
            "## Actions taken",
            "## Links",
        ] {
            assert!(md.contains(section), "{section} missing:\n{md}");
        }
        assert!(
            md.contains("| errors | Fail | canary 4.200% vs baseline 0.500%"),
            "{md}"
        );
        assert!(
            md.contains(
                "- [x] canary weight set to 0 and verified on the route (2026-11-22T10:00:09Z)"
            ),
            "{md}"
        );
        assert!(
            md.contains("change cause: deploy \\<!channel\\> & friends"),
            "{md}"
        );
        assert!(md.contains("- Runbook: https://runbooks.example/checkout"));
    }
}
