//! Batch fan-out on every store: a batchable step's batch runs as one instance of its worker
//! step per slice, at most `parallelism` at once, and the step after them gets their results in
//! slice order; a failed slice follows `on_failure`; operators retry what failed.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tasker_core::{
    Batch, ClaimedStep, Engine, HandlerError, ManualClock, NewTask, StepState, TaskState, Worker,
};

use support::*;

/// `load` makes a batch, `process` runs per slice, `report` gets every slice's result.
fn batch_template(size: u64, parallelism: Option<u32>, on_failure: &str) -> Template {
    let parallelism = parallelism
        .map(|p| format!(", parallelism: {p}"))
        .unwrap_or_default();
    template("batches", &format!("b{size}_{on_failure}")).raw(&format!(
        "  - name: load\n    type: batchable\n    batch: {{worker: process, size: {size}{parallelism}, on_failure: {on_failure}}}\n  - name: process\n    type: batch_worker\n    depends_on: [load]\n    retry: {{max_attempts: 1}}\n  - name: report\n    depends_on: [process]\n"
    ))
}

/// How many `process` instances run at once, at most.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    most: AtomicUsize,
}

/// A worker: `load` returns `batch` (from the task's context `n`: items 0..n), `process` sums
/// its slice (failing for good on the slice the context's `fail` names), `report` returns
/// its input.
fn batch_worker(engine: &Engine, gauge: Arc<Gauge>, by_total: bool) -> Worker {
    Worker::builder(engine.clone())
        .handler("load", move |step: ClaimedStep| async move {
            let n = step.context["n"].as_u64().unwrap_or(0);
            let batch = if by_total {
                Batch::total(n)
            } else {
                Batch::items((0..n).map(Value::from).collect())
            };
            Ok::<_, HandlerError>(batch.with_result(json!({"n": n})))
        })
        .handler("process", move |step: ClaimedStep| {
            let gauge = gauge.clone();
            async move {
                let running = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
                gauge.most.fetch_max(running, Ordering::SeqCst);
                tokio::task::yield_now().await;
                gauge.now.fetch_sub(1, Ordering::SeqCst);
                let batch = step.batch.clone().expect("an instance has its slice");
                assert_eq!(
                    step.inputs.get("load"),
                    Some(&json!({"n": step.context["n"]}))
                );
                if step.context["fail"] == batch["index"] {
                    return Err(HandlerError::permanent("bad slice"));
                }
                let sum: u64 = match batch.get("items") {
                    Some(items) => items
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(Value::as_u64)
                        .sum(),
                    None => {
                        (batch["start"].as_u64().unwrap()..batch["end"].as_u64().unwrap()).sum()
                    }
                };
                Ok(json!({"slice": batch["index"], "sum": sum}))
            }
        })
        .handler("report", |step: ClaimedStep| async move {
            Ok::<_, HandlerError>(step.inputs.get("process").cloned().unwrap_or(Value::Null))
        })
        .concurrency(6)
        .build()
}

/// The sums each slice of `0..n` in pieces of `size` should report.
fn expected_sums(n: u64, size: u64) -> Vec<Value> {
    (0..n.div_ceil(size))
        .map(|k| {
            let sum: u64 = (k * size..((k + 1) * size).min(n)).sum();
            json!({"slice": k, "sum": sum})
        })
        .collect()
}

per_store! {
    async fn a_batch_of_items_runs_a_slice_per_instance_within_its_parallelism(store) {
        let t = batch_template(100, Some(2), "fail_fast");
        let Some(engine) = engine_with(store, ManualClock::new(), &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("batches", "b100_fail_fast").context(json!({"n": 450}))).await;
        let gauge = Arc::new(Gauge::default());
        let report = batch_worker(&engine, gauge.clone(), false).run_until_idle(RUN_LIMIT).await.unwrap();
        assert!(report.idle, "{store}");
        assert_eq!(report.completed, 1 + 5 + 1, "{store}: load, five slices, report");
        assert!(gauge.most.load(Ordering::SeqCst) <= 2, "{store}: at most two slices at once");
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(view.step("report").unwrap().result, Some(Value::Array(expected_sums(450, 100))), "{store}");
        let slices: Vec<_> = view.steps.iter().filter(|s| s.instance_of.as_deref() == Some("process")).collect();
        assert_eq!(slices.len(), 5, "{store}");
        for (k, s) in slices.iter().enumerate() {
            assert_eq!(s.name, format!("process[{k}]"), "{store}");
            assert_eq!(s.status, StepState::Complete, "{store}");
            let batch = s.batch.clone().unwrap();
            assert_eq!((batch["index"].clone(), batch["start"].clone()), (json!(k), json!(k * 100)), "{store}");
            assert_eq!(batch["items"].as_array().unwrap().len(), if k < 4 { 100 } else { 50 }, "{store}");
        }
        let process = view.step("process").unwrap();
        assert_eq!(process.status, StepState::Complete, "{store}: the worker step finished with its slices");
        let graph = engine.graph(task).await.unwrap();
        assert_eq!(graph.nodes.len(), 3 + 5, "{store}: the template's steps and the instances");
        for k in 0..5 {
            let slice = format!("process[{k}]");
            let node = graph.nodes.iter().find(|n| n.name == slice).unwrap();
            assert_eq!(node.instance_of.as_deref(), Some("process"), "{store}");
            assert!(graph.edges.iter().any(|e| e.from == "load" && e.to == slice), "{store}");
            assert!(graph.edges.iter().any(|e| e.from == slice && e.to == "process"), "{store}");
        }
        let trail = step_path(&engine, task, "process").await;
        assert_eq!(trail, path(&[("pending", "in_progress"), ("in_progress", "complete")]), "{store}");
    }
}

per_store! {
    async fn a_batch_of_ten_thousand_items_in_slices_of_a_hundred(store) {
        let t = batch_template(100, Some(8), "fail_fast");
        let Some(engine) = real_time_engine_with(store, &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("batches", "b100_fail_fast").context(json!({"n": 10_000}))).await;
        let report = batch_worker(&engine, Arc::default(), false)
            .run_until_idle(std::time::Duration::from_secs(120))
            .await
            .unwrap();
        assert_eq!(report.completed, 102, "{store}");
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        let results = view.step("report").unwrap().result.clone().unwrap();
        assert_eq!(results.as_array().map(Vec::len), Some(100), "{store}");
        assert_eq!(results, Value::Array(expected_sums(10_000, 100)), "{store}: in slice order");
    }
}

per_store! {
    async fn a_batch_by_total_slices_ranges(store) {
        let t = batch_template(300, None, "fail_fast");
        let Some(engine) = engine_with(store, ManualClock::new(), &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("batches", "b300_fail_fast").context(json!({"n": 1000}))).await;
        batch_worker(&engine, Arc::default(), true).run_until_idle(RUN_LIMIT).await.unwrap();
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(view.step("report").unwrap().result, Some(Value::Array(expected_sums(1000, 300))), "{store}");
        let last = view.step("process[3]").unwrap().batch.clone().unwrap();
        assert_eq!(last, json!({"index": 3, "start": 900, "end": 1000}), "{store}: no items for a total");
    }
}

per_store! {
    async fn a_failed_slice_fails_fast_and_an_operator_retry_runs_it_again(store) {
        let t = batch_template(10, Some(1), "fail_fast");
        let Some(engine) = engine_with(store, ManualClock::new(), &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("batches", "b10_fail_fast").context(json!({"n": 50, "fail": 1}))).await;
        let report = batch_worker(&engine, Arc::default(), false).run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!((report.completed, report.failed), (2, 1), "{store}: load and slice 0, then slice 1 failed");
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Error, "{store}");
        assert_eq!(view.step("process[1]").unwrap().status, StepState::Error, "{store}");
        for k in 2..5 {
            let s = view.step(&format!("process[{k}]")).unwrap();
            assert_eq!(s.status, StepState::Skipped, "{store} slice {k}");
            assert_eq!(s.skip_reason.as_deref(), Some("another slice failed"), "{store}");
        }
        let process = view.step("process").unwrap();
        assert_eq!(process.status, StepState::Error, "{store}");
        assert!(process.error.as_deref().unwrap_or_default().contains("slice process[1] failed: bad slice"), "{store}: {:?}", process.error);
        assert_eq!(view.step("report").unwrap().status, StepState::Skipped, "{store}");

        // The slice no longer fails: the retry runs it and the skipped ones, not slice 0.
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        engine.retry_task(task).await.unwrap();
        let worker = Worker::builder(engine.clone())
            .handler("process", move |step: ClaimedStep| {
                let calls = counted.clone();
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let batch = step.batch.unwrap();
                    let sum: u64 = batch["items"].as_array().unwrap().iter().filter_map(Value::as_u64).sum();
                    Ok::<_, HandlerError>(json!({"slice": batch["index"], "sum": sum}))
                }
            })
            .handler("report", |step: ClaimedStep| async move {
                Ok::<_, HandlerError>(step.inputs.get("process").cloned().unwrap_or(Value::Null))
            })
            .build();
        worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4, "{store}: slices 1 to 4 ran again");
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(view.step("report").unwrap().result, Some(Value::Array(expected_sums(50, 10))), "{store}");
    }
}

per_store! {
    async fn a_failed_slice_under_continue_lets_the_others_run(store) {
        let t = batch_template(10, Some(2), "continue");
        let Some(engine) = engine_with(store, ManualClock::new(), &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("batches", "b10_continue").context(json!({"n": 40, "fail": 2}))).await;
        let report = batch_worker(&engine, Arc::default(), false).run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!((report.completed, report.failed), (1 + 3 + 1, 1), "{store}");
        let view = task_view(&engine, task).await;
        let mut expected = expected_sums(40, 10);
        expected[2] = Value::Null;
        assert_eq!(view.step("report").unwrap().result, Some(Value::Array(expected)), "{store}: a null for the failed slice");
        assert_eq!(view.step("process").unwrap().status, StepState::Complete, "{store}");
        assert_eq!(view.status, TaskState::Error, "{store}: a slice failed for good");
    }
}

per_store! {
    async fn an_empty_batch_completes_its_worker_step_at_once(store) {
        let t = batch_template(10, None, "fail_fast");
        let Some(engine) = engine_with(store, ManualClock::new(), &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("batches", "b10_fail_fast").context(json!({"n": 0}))).await;
        let report = batch_worker(&engine, Arc::default(), false).run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!(report.completed, 2, "{store}: load and report");
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(view.step("report").unwrap().result, Some(json!([])), "{store}");
    }
}

per_store! {
    async fn a_batchable_step_must_return_a_batch_of_at_most_ten_thousand_slices(store) {
        let t = batch_template(1, None, "fail_fast");
        let Some(engine) = engine_with(store, ManualClock::new(), &[t]).await else {
            return;
        };
        let plain = create(&engine, NewTask::new("batches", "b1_fail_fast")).await;
        let load = claim_one(&engine, "load").await;
        complete(&engine, &load, json!([1, 2])).await;
        let error = task_view(&engine, plain).await.step("load").unwrap().error.clone().unwrap_or_default();
        assert!(error.contains("batchable step \"load\" returned a plain result"), "{store}: {error}");

        let huge = create(&engine, NewTask::new("batches", "b1_fail_fast")).await;
        let load = claim_one(&engine, "load").await;
        engine.report(load.step_id, load.attempt, Batch::total(10_001)).await.unwrap();
        let view = task_view(&engine, huge).await;
        let error = view.step("load").unwrap().error.clone().unwrap_or_default();
        assert!(error.contains("the batch makes 10001 slices of 1, more than a batch may have (10000)"), "{store}: {error}");
        assert_eq!(view.steps.len(), 3, "{store}: no instance was made");
    }
}

per_store! {
    async fn resolving_a_running_batch_by_hand_drops_the_slices_not_started(store) {
        let t = batch_template(1, Some(1), "fail_fast");
        let Some(engine) = engine_with(store, ManualClock::new(), &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("batches", "b1_fail_fast")).await;
        let load = claim_one(&engine, "load").await;
        engine.report(load.step_id, load.attempt, Batch::total(4)).await.unwrap();
        let first = claim_one(&engine, "process[0]").await;
        engine.resolve_step(task, "process", json!(["by hand"])).await.unwrap();
        let view = task_view(&engine, task).await;
        for k in 1..4 {
            let s = view.step(&format!("process[{k}]")).unwrap();
            assert_eq!(s.status, StepState::Skipped, "{store} slice {k}");
        }
        // The running slice may still report; its result is not wanted.
        complete(&engine, &first, json!(0)).await;
        let report = claim_one_with_inputs(&engine, "report", json!({"process": ["by hand"]})).await;
        complete(&engine, &report, Value::Null).await;
        assert_eq!(status(&engine, task).await, TaskState::Complete, "{store}");
    }
}

/// Slices made on one engine are run by another on the same store (they are rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_kept_in_the_store() {
    for (store, url) in sql_store_urls().await {
        let first = Engine::open(&url).await.unwrap();
        register(&first, &batch_template(5, Some(1), "fail_fast")).await;
        let task = create(
            &first,
            NewTask::new("batches", "b5_fail_fast").context(json!({"n": 12})),
        )
        .await;
        let load = claim_one(&first, "load").await;
        let items = (0..12).map(Value::from).collect();
        first
            .report(load.step_id, load.attempt, Batch::items(items))
            .await
            .unwrap();
        let slice = claim_one(&first, "process[0]").await;
        assert!(claim(&first, 5).await.is_empty(), "{store}: parallelism 1");
        complete(&first, &slice, json!(0)).await;
        first.close();

        let second = Engine::open(&url).await.unwrap();
        let view = task_view(&second, task).await;
        assert_eq!(
            view.step("process[2]").unwrap().batch,
            Some(json!({"index": 2, "start": 10, "end": 12, "items": [10, 11]})),
            "{store}"
        );
        for k in 1..3 {
            let slice = claim_one(&second, &format!("process[{k}]")).await;
            assert_eq!(
                slice.batch.as_deref().map(|b| b["index"].clone()),
                Some(json!(k)),
                "{store}"
            );
            complete(&second, &slice, json!(k)).await;
        }
        let report = claim_one_with_inputs(&second, "report", json!({"process": [0, 1, 2]})).await;
        complete(&second, &report, Value::Null).await;
        assert_eq!(status(&second, task).await, TaskState::Complete, "{store}");
    }
}

#[test]
fn templates_refuse_batches_that_cannot_run() {
    let refused = |steps: &str| {
        let text = format!("namespace: t\nname: b\nversion: 1.0.0\nsteps:\n{steps}");
        tasker_core::TaskTemplate::parse(&text)
            .unwrap()
            .compile()
            .unwrap_err()
            .to_string()
    };
    let no_batch = refused("  - {name: a, type: batchable}\n");
    assert!(no_batch.contains("it needs a batch"), "{no_batch}");
    let stranger = refused("  - {name: a, type: batchable, batch: {worker: w}}\n  - {name: w}\n");
    assert!(
        stranger.contains("is not a batch_worker step"),
        "{stranger}"
    );
    let unrelated = refused(
        "  - {name: a, type: batchable, batch: {worker: w}}\n  - {name: w, type: batch_worker}\n",
    );
    assert!(
        unrelated.contains("must depend on it, and on nothing else"),
        "{unrelated}"
    );
    let two_parents = refused("  - {name: x}\n  - {name: a, type: batchable, batch: {worker: w}}\n  - {name: w, type: batch_worker, depends_on: [a, x]}\n");
    assert!(
        two_parents.contains("must depend on it, and on nothing else"),
        "{two_parents}"
    );
    let orphan = refused("  - {name: w, type: batch_worker}\n");
    assert!(orphan.contains("no batchable step names it"), "{orphan}");
    let zero = refused("  - {name: a, type: batchable, batch: {worker: w, size: 0}}\n  - {name: w, type: batch_worker, depends_on: [a]}\n");
    assert!(zero.contains("batch.size must be between 1 and"), "{zero}");
    let clash = refused("  - {name: a, type: batchable, batch: {worker: w}}\n  - {name: w, type: batch_worker, depends_on: [a]}\n  - {name: \"w[0]\"}\n");
    assert!(clash.contains("could be taken for an instance"), "{clash}");
}
