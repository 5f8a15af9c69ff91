//! The dashboard's server time for a 1,000-step task's page (target: under 500 ms): the
//! request goes through the dashboard's own router, reads the task, its logs and transitions
//! from a SQLite file and renders the HTML with its SVG DAG, with no network in between.
//!
//! Two pages: the task as created (1,000 pending steps) and one that ran (1,000 complete
//! steps, each with its result and transitions).
//!
//! `cargo bench -p tasker-cli --bench page`

#[path = "../tests/common/mod.rs"]
mod common;

use axum::body::Body;
use axum::http::Request;
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use tasker_core::{ClaimedStep, Engine, HandlerError, NewTask, TaskId, Worker};
use tower::ServiceExt as _;

fn pages(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = std::env::temp_dir().join(format!("tasker-page-bench-{}", TaskId::new()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let url = format!("sqlite://{}", dir.join("tasker.db").display());
    let (engine, created, ran) = rt.block_on(async {
        let (_, _, created) = common::fill(&url).await;
        let engine = Engine::open(&url).await.expect("the store");
        let ran = engine
            .create_task(NewTask::new("web", "wide"))
            .await
            .expect("a second wide task");
        let done = |_s: ClaimedStep| async { Ok::<_, HandlerError>(json!({"ok": true})) };
        let worker = Worker::builder(engine.clone())
            .handler("start", done)
            .handler("leg", done)
            .handler("join", done)
            .build();
        worker
            .run_until_idle(std::time::Duration::from_secs(300))
            .await
            .expect("the wide task runs");
        drop(worker);
        (engine, created, ran)
    });
    let dashboard =
        tasker_cli::serve::Dashboard::new(engine.clone(), common::TOKEN.to_owned(), false, "", &[])
            .expect("a dashboard");
    let router = tasker_cli::serve::router(dashboard);
    let mut group = c.benchmark_group("dashboard_page_1000_steps");
    for (name, id) in [("pending", created), ("complete", ran)] {
        let path = format!("/tasks/{id}");
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                let router = router.clone();
                let path = path.clone();
                async move {
                    let request = Request::get(path).body(Body::empty()).expect("a request");
                    let response = router.oneshot(request).await.expect("a response");
                    assert_eq!(response.status(), 200);
                    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                        .await
                        .expect("the page");
                    assert!(body.len() > 100_000, "a 1,000-step page");
                    body.len()
                }
            })
        });
    }
    group.finish();
    engine.close();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = pages
}
criterion_main!(benches);
