//! Escalation: from the outbox entries the rollout machine writes to what incident commanders
//! receive.
//!
//! - [`incident`] builds the one [`incident::Incident`] model from the Rollout and its Releases;
//! - [`wire`] renders it for Alertmanager, PagerDuty, Slack and a signed webhook (pure);
//! - [`receiver`] is the `Notifier` trait: incident → HTTP request, HTTP status → result;
//! - [`report`] words the incident for people: the change line, Markdown, text sections;
//! - [`outbox`] decides which deliveries are due and records their outcomes (pure);
//! - [`send`] is the only I/O.

#[cfg(test)]
pub(crate) mod fixtures;
pub mod incident;
pub mod outbox;
pub mod receiver;
pub mod report;
pub mod send;
pub mod wire;
