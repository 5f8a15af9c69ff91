//! Webhooks on every store, against a real HTTP receiver (axum, on 127.0.0.1): deliveries are
//! written with their events, signed, sent with an idempotency key, retried through a failing
//! receiver and a receiver slower than the time limit, and delivered once per event id; URLs
//! that resolve to loopback, private, link-local or metadata addresses are refused unless the
//! engine allows them; templates with bad webhooks are refused.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tasker_core::{Engine, Error, NewTask, TaskId, TemplateError};

use support::*;

const SECRET_ENV: &str = "TASKER_TEST_WEBHOOK_SECRET";
const SECRET: &str = "s3cret-for-tests";

/// One request the receiver saw.
#[derive(Debug, Clone)]
struct Seen {
    key: String,
    event: String,
    signature: Option<String>,
    body: String,
    answered: u16,
}

/// The receiver: answers 500 to the first `fail` requests, then 200; sleeps `slow` before its
/// first answer.
#[derive(Clone)]
struct Receiver {
    seen: Arc<Mutex<Vec<Seen>>>,
    addr: SocketAddr,
}

async fn receiver(fail: usize, slow: Option<Duration>) -> Receiver {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let arrived = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let (log, arrived) = (log.clone(), arrived.clone());
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let n = arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let answered = if n < fail { 500 } else { 200 };
                // Kept as it arrives: a sender that gives up drops the answer.
                log.lock().push(Seen {
                    key: header("idempotency-key").unwrap_or_default(),
                    event: header("x-tasker-event").unwrap_or_default(),
                    signature: header("x-tasker-signature"),
                    body,
                    answered,
                });
                if let (0, Some(slow)) = (n, slow) {
                    tokio::time::sleep(slow).await;
                }
                StatusCode::from_u16(answered).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { seen, addr }
}

/// A receiver that holds every request on `/held` until `gate` has a permit for it.
async fn held_receiver(gate: Arc<tokio::sync::Semaphore>) -> SocketAddr {
    let app = axum::Router::new().route(
        "/held",
        axum::routing::post(move || {
            let gate = gate.clone();
            async move {
                let _held = gate.acquire().await;
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn template(name: &str, hooks: Value) -> String {
    json!({
        "namespace": "hooks",
        "name": name,
        "version": "1.0.0",
        "webhooks": hooks,
        "steps": [{"name": "a"}, {"name": "b", "depends_on": ["a"]}],
    })
    .to_string()
}

/// A hook on `url` for `on`, retried at once (10 ms), with a time limit of `timeout_ms`.
fn hook(on: &[&str], url: &str, timeout_ms: u64) -> Value {
    json!({
        "on": on, "url": url, "secret_env": SECRET_ENV, "timeout_ms": timeout_ms,
        "retry": {"max_attempts": 5, "backoff_base_ms": 10, "backoff_max_ms": 10, "jitter": false},
    })
}

async fn open(store: StoreKind, allow_private: bool) -> Option<Engine> {
    // Set once, by the first test here (before it starts threads of its own).
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| std::env::set_var(SECRET_ENV, SECRET));
    let url = store_url(store).await?;
    Some(
        Engine::builder()
            .url(url)
            .allow_private_webhooks(allow_private)
            .build()
            .await
            .unwrap(),
    )
}

/// Runs the task's steps, then sends deliveries until none is pending or delivering.
async fn run_and_deliver(
    engine: &Engine,
    task: TaskId,
) -> Vec<tasker_core::webhooks::DeliveryView> {
    let worker = worker_answering(engine, &["a", "b"], json!({"ok": true}));
    worker
        .run_until_idle(Duration::from_secs(30))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        engine.deliver_webhooks().await.unwrap();
        let deliveries = engine.webhook_deliveries(task).await.unwrap();
        if deliveries
            .iter()
            .all(|d| matches!(d.status.as_str(), "delivered" | "failed"))
        {
            return deliveries;
        }
        assert!(Instant::now() < deadline, "not settled: {deliveries:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

per_store! {
    async fn deliveries_are_signed_retried_and_delivered_once_per_event(store) {
        let Some(engine) = open(store, true).await else { return };
        let rx = receiver(2, None).await;
        let url = format!("http://{}/hook", rx.addr);
        engine
            .register_template_str(&template("signed", json!([hook(&["task.created", "task.completed", "step.completed"], &url, 5_000)])))
            .await
            .unwrap();
        let task = create(&engine, NewTask::new("hooks", "signed")).await;
        let deliveries = run_and_deliver(&engine, task).await;
        // One delivery per event: the task created, two steps completed, then the task.
        let mut events: Vec<&str> = deliveries.iter().map(|d| d.event.as_str()).collect();
        events.sort();
        assert_eq!(events, ["step.completed", "step.completed", "task.completed", "task.created"], "{store}");
        assert!(deliveries.iter().all(|d| d.status == "delivered" && d.url == url), "{store}: {deliveries:?}");
        let seen = rx.seen.lock().clone();
        // Two failures (retried), then each event delivered once, under its delivery's id.
        assert_eq!(seen.iter().filter(|s| s.answered == 500).count(), 2, "{store}: {seen:?}");
        let mut delivered: Vec<&str> = seen.iter().filter(|s| s.answered == 200).map(|s| s.key.as_str()).collect();
        delivered.sort();
        let mut ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
        ids.sort();
        assert_eq!(delivered, ids, "{store}: once per event id");
        assert_eq!(deliveries.iter().map(|d| d.attempts).sum::<u32>(), 6, "{store}");
        for s in &seen {
            let body: Value = serde_json::from_str(&s.body).unwrap();
            assert_eq!(body["id"], json!(s.key), "{store}: the body names its delivery");
            assert_eq!(body["name"], json!(s.event), "{store}");
            assert_eq!(body["task_id"], json!(task.to_string()), "{store}");
            assert_eq!((body["namespace"].as_str(), body["task_name"].as_str()), (Some("hooks"), Some("signed")), "{store}");
            let want = tasker_core::webhooks::signature(SECRET.as_bytes(), s.body.as_bytes());
            assert_eq!(s.signature.as_deref(), Some(want.as_str()), "{store}: signed");
        }
        let completed: Value = seen.iter().find(|s| s.event == "task.completed").map(|s| serde_json::from_str(&s.body).unwrap()).unwrap();
        assert_eq!(completed["detail"]["to"], json!("complete"), "{store}: {completed}");
    }
}

per_store! {
    async fn a_receiver_slower_than_the_time_limit_gets_the_event_again(store) {
        let Some(engine) = open(store, true).await else { return };
        let rx = receiver(0, Some(Duration::from_millis(3_000))).await;
        let url = format!("http://{}/hook", rx.addr);
        engine
            .register_template_str(&template("slow", json!([hook(&["task.completed"], &url, 1_000)])))
            .await
            .unwrap();
        let task = create(&engine, NewTask::new("hooks", "slow")).await;
        let deliveries = run_and_deliver(&engine, task).await;
        assert_eq!(deliveries.len(), 1, "{store}");
        let d = &deliveries[0];
        // The first try ran out of time (a later one may too, on a slow machine).
        assert_eq!(d.status, "delivered", "{store}: {d:?}");
        assert!(d.attempts >= 2, "{store}: {d:?}");
        // Every try carried the same key: the receiver can drop the repeats.
        let seen = rx.seen.lock().clone();
        assert_eq!(seen.len(), d.attempts as usize, "{store}: {seen:?}");
        assert!(seen.iter().all(|s| s.key == d.id), "{store}");
    }
}

per_store! {
    async fn urls_resolving_to_internal_addresses_are_refused(store) {
        let Some(engine) = open(store, false).await else { return };
        let rx = receiver(0, None).await;
        let port = rx.addr.port();
        let urls = [
            format!("http://127.0.0.1:{port}/hook"),
            format!("http://localhost:{port}/hook"),
            format!("http://[::1]:{port}/hook"),
            "http://10.0.0.1/hook".to_owned(),
            "http://169.254.169.254/latest/meta-data".to_owned(),
        ];
        let hooks: Vec<Value> = urls.iter().map(|u| hook(&["task.completed"], u, 2_000)).collect();
        engine.register_template_str(&template("guarded", json!(hooks))).await.unwrap();
        let task = create(&engine, NewTask::new("hooks", "guarded")).await;
        let deliveries = run_and_deliver(&engine, task).await;
        assert_eq!(deliveries.len(), urls.len(), "{store}");
        for d in &deliveries {
            let error = d.last_error.as_deref().unwrap_or_default();
            assert_eq!((d.status.as_str(), d.attempts), ("failed", 1), "{store}: {d:?}");
            assert!(error.starts_with("refused: ") && error.contains("allow_private_webhooks"), "{store}: {error}");
            let why = if d.url.contains("169.254") { "metadata" } else if d.url.contains("10.0.0.1") { "private" } else { "loopback" };
            assert!(error.contains(why), "{store}: {} → {error}", d.url);
        }
        assert!(rx.seen.lock().is_empty(), "{store}: nothing reached the receiver");
    }
}

per_store! {
    async fn a_slow_receiver_holds_back_only_its_own_deliveries(store) {
        let Some(engine) = open(store, true).await else { return };
        let fast = receiver(0, None).await;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let held = held_receiver(gate.clone()).await;
        let hooks = json!([
            hook(&["task.completed"], &format!("http://{held}/held"), 30_000),
            hook(&["step.completed"], &format!("http://{}/hook", fast.addr), 2_000),
        ]);
        engine.register_template_str(&template("mixed", hooks)).await.unwrap();
        let tasks = 8;
        for _ in 0..tasks {
            create(&engine, NewTask::new("hooks", "mixed")).await;
        }
        // The steps run here, not by a worker session (which would look for deliveries too):
        // 24 deliveries, the 8 held ones among the first 16.
        loop {
            let got = claim(&engine, 64).await;
            if got.is_empty() {
                break;
            }
            for step in &got {
                complete(&engine, step, json!(1)).await;
            }
        }
        let sending = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.deliver_webhooks().await.unwrap() })
        };
        // Every fast delivery arrives while the slow receiver holds its own.
        let deadline = Instant::now() + Duration::from_secs(20);
        while fast.seen.lock().len() < 2 * tasks {
            assert!(
                Instant::now() < deadline,
                "{store}: {} of {} fast deliveries sent while the slow receiver held its own",
                fast.seen.lock().len(),
                2 * tasks
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!sending.is_finished(), "{store}: the held deliveries are still in flight");
        gate.add_permits(1_000);
        assert_eq!(sending.await.unwrap(), 3 * tasks, "{store}");
    }
}

per_store! {
    async fn templates_with_bad_webhooks_are_refused(store) {
        let Some(engine) = open(store, false).await else { return };
        for (hooks, says) in [
            (json!([{"on": ["task.complete"], "url": "https://h.example/x"}]), "matches no lifecycle event"),
            (json!([{"on": ["task.completed"], "url": "ftp://h.example/x"}]), "not an http or https URL"),
            (json!([{"on": [], "url": "https://h.example/x"}]), "names no event"),
            (json!([{"on": ["task.completed"], "url": "https://h.example/x", "timeout_ms": 0}]), "timeout_ms"),
            (json!([{"on": ["task.completed"], "url": "https://ops:pw@h.example/x"}]), "must not carry a user or password"),
            (
                json!([{"on": ["task.completed"], "url": "https://h.example/x", "retry": {"max_attempts": 3, "backoff_base_ms": 10000, "backoff_max_ms": 10}}]),
                "retry.backoff_base_ms (10000) must not exceed backoff_max_ms (10)",
            ),
            (json!([{"on": ["task.completed"], "url": "https://h.example/x", "retry": {"max_attempts": 101}}]), "retry.max_attempts must be between 1 and 100"),
        ] {
            let err = engine.register_template_str(&template("bad", hooks)).await.unwrap_err();
            assert!(
                matches!(&err, Error::Template(TemplateError::InvalidWebhook { message }) if message.contains(says)),
                "{store}: {err}"
            );
        }
        let err = engine.register_template_str(&template("bad", json!([{"on": ["task.completed"]}]))).await.unwrap_err();
        assert!(err.to_string().contains("url"), "{store}: {err}");
    }
}

per_store! {
    async fn an_engine_without_the_secret_leaves_the_delivery_to_another(store) {
        let Some(engine) = open(store, true).await else { return };
        let rx = receiver(0, None).await;
        let mut unsigned = hook(&["task.completed"], &format!("http://{}/hook", rx.addr), 2_000);
        unsigned["secret_env"] = json!("TASKER_TEST_SECRET_SET_NOWHERE");
        engine.register_template_str(&template("secretless", json!([unsigned]))).await.unwrap();
        let task = create(&engine, NewTask::new("hooks", "secretless")).await;
        let worker = worker_answering(&engine, &["a", "b"], json!(1));
        worker.run_until_idle(Duration::from_secs(30)).await.unwrap();
        // Looked at (by this call or the worker's own look, which may still be under way).
        let deadline = Instant::now() + Duration::from_secs(10);
        let d = loop {
            engine.deliver_webhooks().await.unwrap();
            let [d] = &engine.webhook_deliveries(task).await.unwrap()[..] else { panic!("one delivery") };
            if (d.status == "pending" && d.last_error.is_some()) || Instant::now() > deadline {
                break d.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // Not sent, not counted: pending for an engine that has the secret.
        assert_eq!((d.status.as_str(), d.attempts), ("pending", 0), "{store}: {d:?}");
        assert!(d.last_error.as_deref().is_some_and(|e| e.contains("TASKER_TEST_SECRET_SET_NOWHERE")), "{store}: {d:?}");
        assert!(rx.seen.lock().is_empty(), "{store}");
    }
}
