//! The shell's errors, typed. An action's error says its kind, its object and, when it wrote
//! one, its field; the reconcile's error says which stage failed. Policies match on these,
//! never on message text.

use kube::core::Status;

use crate::rollout::plan::ErrorKind;
use crate::traffic::RouterError;

/// An action of a plan that did not happen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    pub kind: ErrorKind,
    /// What it was about: `Deployment web-canary`, `HTTPRoute web`.
    pub object: String,
    /// The field it wrote, when it wrote one: `spec.replicas`.
    pub field: Option<&'static str>,
    pub message: String,
}

impl ActionError {
    pub fn new(kind: ErrorKind, object: impl Into<String>, message: impl Into<String>) -> Self {
        ActionError {
            kind,
            object: object.into(),
            field: None,
            message: message.into(),
        }
    }

    pub fn on_field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    /// The apiserver refused `verb` on `object` in `namespace` while the controller was
    /// `doing` something (`scaling Deployment web-canary to 3`).
    pub fn kube(e: &kube::Error, verb: &str, object: &str, namespace: &str, doing: &str) -> Self {
        let kind = kind_of(e);
        let message = match e {
            kube::Error::Api(s) if kind == ErrorKind::Permission => {
                permission_message(s, verb, object, namespace)
            }
            _ => format!("{doing}: {e}"),
        };
        ActionError::new(kind, object, message)
    }
}

/// The kind of a kube error, from its status code and details.
pub fn kind_of(e: &kube::Error) -> ErrorKind {
    let kube::Error::Api(s) = e else {
        return ErrorKind::Transient;
    };
    match s.code {
        // RBAC's refusal carries no causes; admission's (a namespace being deleted) does.
        401 | 403 if s.details.as_ref().is_none_or(|d| d.causes.is_empty()) => {
            ErrorKind::Permission
        }
        403 | 400 | 422 => ErrorKind::Invalid,
        404 | 410 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        _ => ErrorKind::Transient,
    }
}

/// A refusal by RBAC, worded so that the fix is in it: the verb and the resource (with its API
/// group) the controller's ServiceAccount lacks, read from the status's details.
fn permission_message(s: &Status, verb: &str, object: &str, namespace: &str) -> String {
    let resource = s
        .details
        .as_ref()
        .filter(|d| !d.kind.is_empty())
        .map(|d| match d.group.as_str() {
            "" => d.kind.clone(),
            g => format!("{}.{g}", d.kind),
        })
        .unwrap_or_else(|| object.to_owned());
    let place = if namespace.is_empty() {
        String::new()
    } else {
        format!(" in namespace {namespace}")
    };
    format!(
        "permission denied: the controller may not {verb} {resource}{place}; grant '{verb}' on \
         '{resource}' to the controller's ClusterRole ({})",
        s.message
    )
}

impl ActionError {
    /// A router's error, for the route or Deployments it writes in `namespace`.
    pub fn from_router(e: RouterError, namespace: &str) -> Self {
        match &e {
            RouterError::Api { what, verb, source } => {
                ActionError::kube(source, verb, what, namespace, &e.to_string())
            }
            RouterError::Conflict { what, .. } => {
                ActionError::new(ErrorKind::Conflict, what.clone(), e.to_string())
            }
            RouterError::Route { kind, name, .. } => {
                ActionError::new(ErrorKind::Invalid, format!("{kind} {name}"), e.to_string())
            }
            RouterError::Encoding { what, .. } => {
                ActionError::new(ErrorKind::Invalid, what.clone(), e.to_string())
            }
            RouterError::NotVerified { what, .. } => {
                ActionError::new(ErrorKind::Transient, what.clone(), e.to_string())
            }
        }
        .on_field("weights")
    }
}

/// Why a Rollout's analysis cannot start. The canary is held where it is until it can, and the
/// Rollout's AnalysisInvalid condition says this.
#[derive(Debug, thiserror::Error)]
pub enum CannotStart {
    #[error("the Rollout has no analysis")]
    NoAnalysis,
    #[error("template {name}: {source}")]
    Template { name: String, source: kube::Error },
    #[error("template {name}: {source}")]
    Config {
        name: String,
        source: crate::analysis::run::ConfigError,
    },
    #[error("rendering the templates: {0}")]
    Rendering(tokio::task::JoinError),
}

/// A reconcile that failed, by the stage it failed in.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the Rollout, its target, its arms or its Releases.
    #[error("{0}")]
    Observe(kube::Error),
    /// An action of the plan; its status (the failure counted) was recorded.
    #[error("{0}")]
    Apply(ActionError),
    /// Writing the Rollout's status.
    #[error("{0}")]
    Record(kube::Error),
}

impl Error {
    /// The label of the reconcile error metric.
    pub fn stage(&self) -> &'static str {
        match self {
            Error::Observe(_) => "observe",
            Error::Apply(_) => "apply",
            Error::Record(_) => "record",
        }
    }

    /// The kube error under it, for the fencing check.
    pub fn kube(&self) -> Option<&kube::Error> {
        match self {
            Error::Observe(e) | Error::Record(e) => Some(e),
            Error::Apply(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::response::{StatusCause, StatusDetails};

    fn status(code: u16, reason: &str, details: Option<StatusDetails>) -> kube::Error {
        kube::Error::Api(
            Status {
                code,
                reason: reason.into(),
                message: format!("{reason} message"),
                details,
                ..Status::default()
            }
            .boxed(),
        )
    }

    fn details(kind: &str, group: &str, causes: Vec<StatusCause>) -> Option<StatusDetails> {
        Some(StatusDetails {
            name: "web".into(),
            group: group.into(),
            kind: kind.into(),
            uid: String::new(),
            causes,
            retry_after_seconds: 0,
        })
    }

    #[test]
    fn a_forbidden_action_names_the_verb_and_resource_from_the_status_details() {
        let e = status(
            403,
            "Forbidden",
            details("httproutes", "gateway.networking.k8s.io", vec![]),
        );
        let a = ActionError::kube(
            &e,
            "patch",
            "HTTPRoute web",
            "shop",
            "patching HTTPRoute web",
        );
        assert_eq!(a.kind, ErrorKind::Permission);
        assert!(
            a.message.starts_with(
                "permission denied: the controller may not patch \
                 httproutes.gateway.networking.k8s.io in namespace shop; grant 'patch' on \
                 'httproutes.gateway.networking.k8s.io' to the controller's ClusterRole"
            ),
            "{}",
            a.message
        );
        let core = status(403, "Forbidden", details("services", "", vec![]));
        let a = ActionError::kube(&core, "create", "Service web-canary", "shop", "x");
        assert!(
            a.message
                .contains("may not create services in namespace shop")
        );
        let bare = status(403, "Forbidden", None);
        let a = ActionError::kube(&bare, "get", "Release web-1", "shop", "x");
        assert!(
            a.message.contains("may not get Release web-1"),
            "{}",
            a.message
        );
    }

    #[test]
    fn kinds_come_from_the_status_not_its_text() {
        let terminating = details(
            "releases",
            "rollguard.dev",
            vec![StatusCause {
                reason: "NamespaceTerminating".into(),
                message: "namespace shop is being terminated".into(),
                field: "metadata.namespace".into(),
            }],
        );
        let cases = [
            (status(403, "Forbidden", None), ErrorKind::Permission),
            (status(403, "Forbidden", terminating), ErrorKind::Invalid),
            (status(409, "Conflict", None), ErrorKind::Conflict),
            (status(404, "NotFound", None), ErrorKind::NotFound),
            (status(422, "Invalid", None), ErrorKind::Invalid),
            (status(500, "InternalError", None), ErrorKind::Transient),
            (
                kube::Error::LinesCodecMaxLineLengthExceeded,
                ErrorKind::Transient,
            ),
        ];
        for (e, kind) in cases {
            assert_eq!(kind_of(&e), kind, "{e}");
            let a = ActionError::kube(&e, "patch", "Deployment web", "shop", "scaling web");
            assert_eq!(a.kind, kind);
            if kind != ErrorKind::Permission {
                assert!(a.message.starts_with("scaling web: "), "{}", a.message);
            }
        }
    }

    #[test]
    fn router_errors_keep_their_kind_and_say_the_weights_field() {
        let api = RouterError::Api {
            what: "HTTPRoute web".into(),
            verb: "patch",
            source: status(
                403,
                "Forbidden",
                details("httproutes", "gateway.networking.k8s.io", vec![]),
            ),
        };
        let a = ActionError::from_router(api, "shop");
        assert_eq!((a.kind, a.field), (ErrorKind::Permission, Some("weights")));
        assert!(
            a.message
                .contains("may not patch httproutes.gateway.networking.k8s.io")
        );
        let race = RouterError::Conflict {
            what: "HTTPRoute web".into(),
            attempts: 5,
        };
        assert_eq!(
            ActionError::from_router(race, "shop").kind,
            ErrorKind::Conflict
        );
        let reason = Error::Apply(ActionError::new(ErrorKind::Invalid, "x", "y"));
        assert_eq!(reason.stage(), "apply");
    }
}
