//! A scripted API server for unit tests of the shell, in the style of kube's tower-test
//! verifiers: each request must be the next one the script expects (method and path), and gets
//! the scripted answer. Anything else is answered 599 and recorded, so that [`MockApi::done`]
//! fails the test: a request the shell should not have made, or one it made out of order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

/// One request the script expects, and its answer.
pub struct Exchange {
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub body: Value,
}

impl Exchange {
    pub fn new(method: Method, path: &str, status: u16, body: Value) -> Exchange {
        Exchange {
            method,
            path: path.to_owned(),
            status,
            body,
        }
    }
}

/// A `Status` answer as the apiserver sends it, with `details` when given.
pub fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

#[derive(Clone, Default)]
pub struct MockApi {
    script: Arc<Mutex<VecDeque<Exchange>>>,
    unexpected: Arc<Mutex<Vec<String>>>,
}

impl MockApi {
    /// A client whose every request is checked against `script`, in order.
    pub fn client(script: Vec<Exchange>) -> (kube::Client, MockApi) {
        let mock = MockApi {
            script: Arc::new(Mutex::new(script.into())),
            unexpected: Arc::default(),
        };
        let m = mock.clone();
        let service = tower::service_fn(move |req: Request<Body>| {
            let m = m.clone();
            async move { Ok::<_, std::convert::Infallible>(m.answer(&req)) }
        });
        (kube::Client::new(service, "shop"), mock)
    }

    fn answer(&self, req: &Request<Body>) -> Response<Body> {
        let seen = format!("{} {}", req.method(), req.uri().path());
        let next = self.script.lock().expect("script").pop_front();
        let (status, body) = match next {
            Some(e) if e.method == req.method() && e.path == req.uri().path() => (e.status, e.body),
            other => {
                let wanted =
                    other.map_or("nothing".to_owned(), |e| format!("{} {}", e.method, e.path));
                self.unexpected
                    .lock()
                    .expect("unexpected")
                    .push(format!("{seen} (the script wanted {wanted})"));
                (599, json!({}))
            }
        };
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string().into_bytes()))
            .expect("response")
    }

    /// Every scripted request was made, in order, and no other.
    pub fn done(&self) {
        let unexpected = self.unexpected.lock().expect("unexpected").clone();
        assert!(
            unexpected.is_empty(),
            "unexpected requests: {unexpected:#?}"
        );
        let left: Vec<String> = self
            .script
            .lock()
            .expect("script")
            .iter()
            .map(|e| format!("{} {}", e.method, e.path))
            .collect();
        assert!(left.is_empty(), "requests never made: {left:#?}");
    }
}
