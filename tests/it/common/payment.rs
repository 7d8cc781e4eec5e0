//! A scripted payment provider inside the test: it answers each request by
//! a rule of the test's choosing and records what it was asked, when, and
//! under which `traceparent`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;

/// The answer to the `n`th request (counting from 1) for an idempotency key:
/// a status code, or [`HANG`] to never answer.
pub type Script = dyn Fn(&str, usize) -> u16 + Send + Sync;

/// A script's answer that keeps the request open without ever answering.
pub const HANG: u16 = 0;

/// The `charge_id` a successful answer gives an idempotency key; `None`: a
/// fresh `ch_…` of the stub's own.
pub type ChargeIds = dyn Fn(&str) -> Option<String> + Send + Sync;

#[derive(Debug, Clone)]
pub struct Call {
    pub key: String,
    pub at: Instant,
    pub traceparent: Option<String>,
    pub status: u16,
}

#[derive(Clone)]
struct Stub {
    script: Arc<Script>,
    charge_ids: Arc<ChargeIds>,
    calls: Arc<Mutex<Vec<Call>>>,
    charges: Arc<Mutex<HashMap<String, String>>>,
}

pub struct PaymentStub {
    pub url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    charges: Arc<Mutex<HashMap<String, String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl PaymentStub {
    pub async fn start(script: impl Fn(&str, usize) -> u16 + Send + Sync + 'static) -> Self {
        Self::start_with_charge_ids(script, |_| None).await
    }

    /// Like [`PaymentStub::start`], and a key's charge gets the id
    /// `charge_ids` chooses for it (any string, even one a database cannot
    /// store).
    pub async fn start_with_charge_ids(
        script: impl Fn(&str, usize) -> u16 + Send + Sync + 'static,
        charge_ids: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        let stub = Stub {
            script: Arc::new(script),
            charge_ids: Arc::new(charge_ids),
            calls: Arc::default(),
            charges: Arc::default(),
        };
        let calls = Arc::clone(&stub.calls);
        let charges = Arc::clone(&stub.charges);
        let app = Router::new()
            .route("/v1/charges", post(charge))
            .with_state(stub);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url,
            calls,
            charges,
            server,
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn calls_for(&self, key: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.key == key).collect()
    }

    /// Distinct charges made (a replay of a key is not a new charge).
    pub fn charge_count(&self) -> usize {
        self.charges.lock().unwrap().len()
    }
}

impl Drop for PaymentStub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn charge(State(stub): State<Stub>, headers: HeaderMap) -> (StatusCode, String) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let key = header("idempotency-key").unwrap_or_default();
    let nth = {
        let calls = stub.calls.lock().unwrap();
        calls.iter().filter(|c| c.key == key).count() + 1
    };
    let status = (stub.script)(&key, nth);
    stub.calls.lock().unwrap().push(Call {
        key: key.clone(),
        at: Instant::now(),
        traceparent: header("traceparent"),
        status,
    });
    if status == HANG {
        std::future::pending::<()>().await;
    }
    let code = StatusCode::from_u16(status).unwrap();
    if status == 200 || status == 201 {
        let mut charges = stub.charges.lock().unwrap();
        let chosen = (stub.charge_ids)(&key);
        let id = charges
            .entry(key)
            .or_insert_with(|| {
                chosen.unwrap_or_else(|| format!("ch_{}", uuid::Uuid::new_v4().simple()))
            })
            .clone();
        let body = serde_json::json!({"charge_id": id, "status": "succeeded"});
        return (code, body.to_string());
    }
    (code, String::new())
}
