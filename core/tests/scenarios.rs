//! Whole workflows: DAG shapes, failures that propagate, idempotency and priorities.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tasker_core::store::ClaimRequest;
use tasker_core::view::TaskFilter;
use tasker_core::{
    ClaimedStep, Error, HandlerError, ManualClock, NewTask, StepState, TaskState, Worker,
};

use support::*;

fn diamond() -> Template {
    template("shapes", "diamond")
        .step(step("a"))
        .step(step("b").after(&["a"]))
        .step(step("c").after(&["a"]))
        .step(step("d").after(&["b", "c"]))
}

/// What each handler call saw: the step's name and its inputs.
type CallLog = Arc<Mutex<Vec<(String, Value)>>>;

per_store! {
    async fn diamond_runs_in_dependency_order_and_the_join_gets_both_results(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[diamond()]).await else {
            return;
        };
        let task = create(
            &engine,
            NewTask::new("shapes", "diamond").context(json!({"seed": 2})),
        )
        .await;

        let log: CallLog = Arc::default();
        let handler = |log: CallLog| {
            move |step: ClaimedStep| {
                let log = log.clone();
                async move {
                    log.lock()
                        .push((step.name.to_string(), step.inputs.to_json()));
                    let seed = step.context["seed"].as_i64().unwrap_or(0);
                    let n = |name: &str| step.inputs.get(name).and_then(Value::as_i64);
                    let result = match &*step.name {
                        "a" => seed,
                        "b" => n("a").unwrap_or(0) + 1,
                        "c" => n("a").unwrap_or(0) * 10,
                        _ => n("b").unwrap_or(0) + n("c").unwrap_or(0),
                    };
                    Ok::<_, HandlerError>(json!(result))
                }
            }
        };
        let worker = Worker::builder(engine.clone())
            .handler("a", handler(log.clone()))
            .handler("b", handler(log.clone()))
            .handler("c", handler(log.clone()))
            .handler("d", handler(log.clone()))
            .concurrency(4)
            .build();
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert!(report.idle, "{store}: the run should end idle");
        assert_eq!(report.completed, 4, "{store}");

        let calls = log.lock().clone();
        let order: Vec<&str> = calls.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(order.len(), 4, "{store}: each step runs once: {order:?}");
        assert_eq!(order[0], "a", "{store}: the root runs first");
        assert_eq!(order[3], "d", "{store}: the join runs last");
        let join_inputs = &calls[3].1;
        assert_eq!(join_inputs, &json!({"b": 3, "c": 20}), "{store}");
        assert_eq!(calls[1].1, json!({"a": 2}), "{store}");

        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(view.step("d").unwrap().result, Some(json!(23)), "{store}");
        for step in &view.steps {
            assert_eq!(step.status, StepState::Complete, "{store}: {}", step.name);
            assert_eq!(step.attempts, 1, "{store}: {}", step.name);
        }
        assert!(view.completed_at.is_some(), "{store}");
    }
}

per_store! {
    async fn join_step_is_not_claimable_until_its_last_parent_completes(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[diamond()]).await else {
            return;
        };
        create(&engine, NewTask::new("shapes", "diamond")).await;

        let a = claim_one(&engine, "a").await;
        assert!(claim(&engine, 10).await.is_empty(), "{store}: b, c wait");
        complete(&engine, &a, json!("A")).await;

        let branches = claim(&engine, 10).await;
        assert_eq!(names(&branches), ["b", "c"], "{store}");
        for step in &branches {
            assert_eq!(step.inputs.to_json(), json!({"a": "A"}), "{store}");
        }
        let (b, c) = (&branches[0], &branches[1]);
        complete(&engine, b, json!(&*b.name)).await;
        assert!(
            claim(&engine, 10).await.is_empty(),
            "{store}: d waits for its second parent"
        );
        complete(&engine, c, json!(&*c.name)).await;

        let d = claim_one_with_inputs(&engine, "d", json!({"b": "b", "c": "c"})).await;
        assert_eq!(d.attempt, 1, "{store}");
        complete(&engine, &d, json!("done")).await;
        assert!(engine.work_status().await.unwrap().is_idle(), "{store}");
    }
}

/// `root`, then `children` steps run by handler `child`, then `join` waiting for all of them.
fn fan_out_template(children: usize) -> Template {
    let children: Vec<String> = (0..children).map(|i| format!("child{i}")).collect();
    template("shapes", "fan")
        .step(step("root"))
        .steps(
            children
                .iter()
                .map(|child| step(child).handler("child").after(&["root"])),
        )
        .step(step("join").after(&children))
}

per_store! {
    async fn wide_fan_out_runs_every_step_exactly_once_with_concurrency_8(store) {
        const CHILDREN: usize = 200;
        let Some(engine) = engine_with(store, ManualClock::new(), &[fan_out_template(CHILDREN)]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("shapes", "fan")).await;

        let runs: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let join_inputs: Arc<Mutex<Option<Value>>> = Arc::default();
        let counting = |runs: Arc<Mutex<HashMap<String, usize>>>| {
            move |step: ClaimedStep| {
                let runs = runs.clone();
                async move {
                    *runs.lock().entry(step.name.to_string()).or_default() += 1;
                    Ok::<_, HandlerError>(json!(step.name.to_string()))
                }
            }
        };
        let join = {
            let (runs, join_inputs) = (runs.clone(), join_inputs.clone());
            move |step: ClaimedStep| {
                let (runs, join_inputs) = (runs.clone(), join_inputs.clone());
                async move {
                    *runs.lock().entry(step.name.to_string()).or_default() += 1;
                    *join_inputs.lock() = Some(step.inputs.to_json());
                    Ok::<_, HandlerError>(json!(step.inputs.0.len()))
                }
            }
        };
        let worker = Worker::builder(engine.clone())
            .handler("root", counting(runs.clone()))
            .handler("child", counting(runs.clone()))
            .handler("join", join)
            .concurrency(8)
            .build();
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert!(report.idle, "{store}");
        assert_eq!(report.completed, CHILDREN as u64 + 2, "{store}");
        assert_eq!(report.failed + report.lost, 0, "{store}");

        let runs = runs.lock().clone();
        assert_eq!(runs.len(), CHILDREN + 2, "{store}: every step ran");
        assert!(
            runs.values().all(|&n| n == 1),
            "{store}: a step ran twice: {:?}",
            runs.iter().filter(|(_, &n)| n != 1).collect::<Vec<_>>()
        );
        let inputs = join_inputs.lock().clone().expect("the join ran");
        let inputs = inputs.as_object().unwrap();
        assert_eq!(inputs.len(), CHILDREN, "{store}");
        assert_eq!(inputs["child7"], json!("child7"), "{store}");

        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(view.progress.complete as usize, CHILDREN + 2, "{store}");
        assert_eq!(view.step("join").unwrap().result, Some(json!(CHILDREN)));
    }
}

fn shipping() -> Template {
    template("shop", "ship")
        .step(step("charge").retry(attempts(3).backoff_ms(100)))
        .step(step("ship").after(&["charge"]))
        .step(step("track").after(&["ship"]))
        .step(step("notify").after_any_outcome_of("charge"))
        .step(step("audit"))
}

per_store! {
    async fn permanent_failure_skips_required_dependents_and_fails_the_task(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[shipping()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("shop", "ship")).await;

        let first = claim(&engine, 10).await;
        assert_eq!(names(&first), ["audit", "charge"], "{store}");
        fail(&engine, named(&first, "charge"), permanent("card declined")).await;
        complete(&engine, named(&first, "audit"), json!("ok")).await;

        // The optional child runs, with null for the failed parent.
        let notify = claim_one(&engine, "notify").await;
        assert_eq!(notify.inputs.get("charge"), Some(&Value::Null), "{store}");
        assert_eq!(notify.inputs.to_json(), json!({"charge": null}), "{store}");
        assert_eq!(
            status(&engine, task).await,
            TaskState::InProgress,
            "{store}: the task is not decided while notify runs"
        );
        complete(&engine, &notify, json!("told the customer")).await;
        assert!(claim(&engine, 10).await.is_empty(), "{store}");

        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Error, "{store}");
        assert!(view.completed_at.is_some(), "{store}");
        let charge = view.step("charge").unwrap();
        assert_eq!(charge.status, StepState::Error, "{store}");
        assert_eq!(
            charge.attempts, 1,
            "{store}: a permanent error is not retried"
        );
        assert_eq!(charge.error.as_deref(), Some("card declined"), "{store}");
        for skipped in ["ship", "track"] {
            let step = view.step(skipped).unwrap();
            assert_eq!(step.status, StepState::Skipped, "{store}: {skipped}");
            assert_eq!(step.attempts, 0, "{store}: {skipped}");
        }
        assert_eq!(view.step("notify").unwrap().status, StepState::Complete);
        let p = &view.progress;
        assert_eq!(
            (
                p.total,
                p.complete,
                p.error,
                p.skipped,
                p.pending,
                p.in_progress
            ),
            (5, 2, 1, 2, 0, 0),
            "{store}: {p:?}"
        );
        assert_eq!(p.percent, 100.0, "{store}");
        assert_eq!(
            task_path(&engine, task).await,
            path(&[
                ("", "pending"),
                ("pending", "in_progress"),
                ("in_progress", "error")
            ]),
            "{store}"
        );
        assert_eq!(
            step_path(&engine, task, "track").await,
            path(&[("pending", "skipped")]),
            "{store}"
        );
    }
}

per_store! {
    async fn exhausting_max_attempts_fails_the_step_and_the_task(store) {
        let flaky = template("n", "flaky").step(step("call").retry(attempts(2).backoff_ms(0)));
        let Some(engine) = engine_with(store, ManualClock::new(), &[flaky]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("n", "flaky")).await;

        let first = claim_one(&engine, "call").await;
        assert_eq!((first.attempt, first.max_attempts), (1, 2), "{store}");
        fail(&engine, &first, retryable("timeout 1")).await;
        let second = claim_one(&engine, "call").await;
        assert_eq!(second.attempt, 2, "{store}");
        fail(&engine, &second, retryable("timeout 2")).await;
        assert!(
            claim(&engine, 1).await.is_empty(),
            "{store}: no third attempt"
        );

        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Error, "{store}");
        let step = view.step("call").unwrap();
        assert_eq!(step.status, StepState::Error, "{store}");
        assert_eq!(step.attempts, 2, "{store}");
        assert_eq!(step.error.as_deref(), Some("timeout 2"), "{store}");
        assert_eq!(
            step_path(&engine, task, "call").await,
            path(&[
                ("pending", "in_progress"),
                ("in_progress", "error"),
                ("error", "waiting_for_retry"),
                ("waiting_for_retry", "pending"),
                ("pending", "in_progress"),
                ("in_progress", "error"),
            ]),
            "{store}"
        );
        assert!(engine.work_status().await.unwrap().is_idle(), "{store}");
    }
}

fn single() -> Template {
    template("n", "single").step(step("only"))
}

per_store! {
    async fn same_idempotency_key_returns_the_same_task(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[single()]).await else {
            return;
        };
        let order = || {
            NewTask::new("n", "single")
                .idempotency_key("order-42")
                .context(json!({"order": 42}))
        };
        let first = create(&engine, order()).await;
        let again = create(&engine, order()).await;
        assert_eq!(first, again, "{store}");
        let same_version = create(&engine, order().version("1.0.0")).await;
        assert_eq!(first, same_version, "{store}");

        // The same key for another context (or version) is a conflict, not the first task.
        let other = engine
            .create_task(order().context(json!({"order": 43})))
            .await;
        assert_err!(
            other,
            tasker_core::Error::IdempotencyConflict { ref key, task } if key == "order-42" && task == first,
            "{store}"
        );
        let tasks = engine.list_tasks(&TaskFilter::default()).await.unwrap();
        assert_eq!(tasks.len(), 1, "{store}");
        assert_eq!(tasks[0].idempotency_key.as_deref(), Some("order-42"));
        assert_eq!(tasks[0].context, json!({"order": 42}), "{store}");
        assert_eq!(claim(&engine, 10).await.len(), 1, "{store}: one step, once");
    }
}

per_store! {
    async fn an_idempotency_key_past_255_bytes_is_an_invalid_argument(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[single()]).await else {
            return;
        };
        let ok = NewTask::new("n", "single").idempotency_key("k".repeat(255));
        create(&engine, ok).await;
        let long = NewTask::new("n", "single").idempotency_key("k".repeat(256));
        assert_err!(
            engine.create_task(long).await,
            tasker_core::Error::InvalidArgument(ref m) if m.contains("256 bytes"),
            "{store}"
        );
    }
}

per_store! {
    async fn different_idempotency_keys_create_different_tasks(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[single()]).await else {
            return;
        };
        let a = create(&engine, NewTask::new("n", "single").idempotency_key("a")).await;
        let b = create(&engine, NewTask::new("n", "single").idempotency_key("b")).await;
        let none_1 = create(&engine, NewTask::new("n", "single")).await;
        let none_2 = create(&engine, NewTask::new("n", "single")).await;
        let mut ids = vec![a, b, none_1, none_2];
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 4, "{store}");
        let tasks = engine.list_tasks(&TaskFilter::default()).await.unwrap();
        assert_eq!(tasks.len(), 4, "{store}");
    }
}

per_store! {
    async fn idempotency_keys_are_scoped_to_their_template(store) {
        let other = template("n", "other").step(step("only"));
        let Some(engine) = engine_with(store, ManualClock::new(), &[single(), other]).await else {
            return;
        };
        let single = create(&engine, NewTask::new("n", "single").idempotency_key("k")).await;
        let other = create(&engine, NewTask::new("n", "other").idempotency_key("k")).await;
        assert_ne!(single, other, "{store}");
        let again = create(&engine, NewTask::new("n", "other").idempotency_key("k")).await;
        assert_eq!(again, other, "{store}");
    }
}

per_store! {
    async fn claim_hands_out_higher_priority_tasks_first_then_oldest_first(store) {
        let other = template("n", "other").step(step("x").handler("other"));
        let Some(engine) = engine_with(store, ManualClock::new(), &[single(), other]).await else {
            return;
        };
        let mut created = Vec::new();
        for (name, priority) in [
            ("single", 0),
            ("single", 10),
            ("other", 5),
            ("other", 10),
            ("single", 5),
            ("single", -1),
        ] {
            let id = create(&engine, NewTask::new("n", name).priority(priority)).await;
            created.push(id);
        }
        let mut order = Vec::new();
        while let Some(step) = claim(&engine, 1).await.pop() {
            order.push(step.task_id());
        }
        let expected = vec![
            created[1], // 10, first
            created[3], // 10, second (another handler's queue)
            created[2], // 5, first
            created[4], // 5, second
            created[0], // 0
            created[5], // -1
        ];
        assert_eq!(order, expected, "{store}");
    }
}

per_store! {
    async fn steps_released_in_a_high_priority_task_overtake_older_low_priority_work(store) {
        let chain = template("n", "chain")
            .step(step("a").handler("h"))
            .step(step("b").handler("h").after(&["a"]));
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain]).await else {
            return;
        };
        let low = create(&engine, NewTask::new("n", "chain").priority(1)).await;
        let high = create(&engine, NewTask::new("n", "chain").priority(9)).await;
        let a_high = claim(&engine, 1).await.remove(0);
        assert_eq!(a_high.task_id(), high, "{store}");
        complete(&engine, &a_high, json!(1)).await;

        // Ready now: low/a (older) and high/b (just released): high/b goes first.
        let next = claim(&engine, 2).await;
        let got: Vec<_> = next
            .iter()
            .map(|s| (s.task_id(), s.name.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![(high, "b".to_owned()), (low, "a".to_owned())],
            "{store}"
        );
    }
}

per_store! {
    async fn create_tasks_makes_a_batch_that_runs_like_tasks_made_one_by_one(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[single()]).await else {
            return;
        };
        let batch: Vec<NewTask> = (0..1200)
            .map(|i| NewTask::new("n", "single").context(json!({ "i": i })))
            .chain([
                NewTask::new("n", "single")
                    .idempotency_key("k-1")
                    .context(json!({"k": 1})),
                NewTask::new("n", "single")
                    .idempotency_key("k-1")
                    .context(json!({"k": 1})),
            ])
            .collect();
        let ids = engine.create_tasks(batch).await.unwrap();
        assert_eq!(ids.len(), 1202, "{store}");
        assert_eq!(ids[1200], ids[1201], "{store}: one key, one task");
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 1201, "{store}");
        let view = task_view(&engine, ids[7]).await;
        assert_eq!(view.context, json!({ "i": 7 }), "{store}: in order");
        let tasks = engine
            .list_tasks(&TaskFilter {
                limit: 5000,
                ..TaskFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(tasks.len(), 1201, "{store}");
        let mut claimed = 0;
        loop {
            let got = claim(&engine, 1000).await;
            if got.is_empty() {
                break;
            }
            claimed += got.len();
        }
        assert_eq!(claimed, 1201, "{store}: every step is ready once");

        // Bad input anywhere in the batch: nothing of it is written.
        let bad = vec![
            NewTask::new("n", "single"),
            NewTask::new("n", "no-such-template"),
        ];
        assert_err!(
            engine.create_tasks(bad).await,
            Error::TemplateNotFound { .. },
            "{store}"
        );
        let deep = vec![
            NewTask::new("n", "single"),
            NewTask::new("n", "single").context(
                serde_json::from_str(&format!("{}1{}", "[".repeat(66), "]".repeat(66))).unwrap(),
            ),
        ];
        assert_err!(
            engine.create_tasks(deep).await,
            Error::InvalidArgument(_),
            "{store}"
        );
        let after = engine
            .list_tasks(&TaskFilter {
                limit: 5000,
                ..TaskFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(after.len(), 1201, "{store}: nothing of a refused batch");
    }
}

per_store! {
    /// A batch of reports and a claim in one call (one transaction on the SQL stores): the
    /// claim takes the steps the reports made ready, a refused report refuses only itself, and
    /// each step's record says what happened, in order.
    async fn reports_and_a_claim_in_one_call_take_the_steps_the_reports_made_ready(store) {
        let chain = template("rc", "chain").steps(chain_of("s", 3, "h"));
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain]).await else {
            return;
        };
        let first = create(&engine, NewTask::new("rc", "chain")).await;
        let second = create(&engine, NewTask::new("rc", "chain")).await;
        let claimed = engine.claim(&any_handler(10)).await.unwrap();
        assert_eq!(claimed.len(), 2, "{store}: the two first steps");
        let mut reports: Vec<tasker_core::store::StepReport> = claimed
            .iter()
            .map(|s| tasker_core::store::StepReport {
                step: s.step_id,
                attempt: s.attempt,
                outcome: tasker_core::store::Outcome::Complete(json!({"from": &*s.name})),
                logs: Vec::new(),
            })
            .collect();
        // A stale attempt number: refused on its own.
        reports.push(tasker_core::store::StepReport {
            step: claimed[0].step_id,
            attempt: claimed[0].attempt + 1,
            outcome: tasker_core::store::Outcome::Complete(json!(0)),
            logs: Vec::new(),
        });
        let (results, next) = engine
            .report_and_claim(reports, &any_handler(10))
            .await
            .unwrap();
        assert!(results[0].is_ok() && results[1].is_ok(), "{store}: {results:?}");
        assert!(
            matches!(results[2], Err(Error::ClaimLost { .. })),
            "{store}: {results:?}"
        );
        let mut got: Vec<(tasker_core::TaskId, String)> = next
            .iter()
            .map(|s| (s.task_id(), s.name.to_string()))
            .collect();
        got.sort();
        let mut want = vec![(first, "s1".to_string()), (second, "s1".to_string())];
        want.sort();
        assert_eq!(got, want, "{store}: the steps the reports released");
        for step in &next {
            assert_eq!(
                step.inputs.get("s0"),
                Some(&json!({"from": "s0"})),
                "{store}: the claim sees the result written with it"
            );
        }
        let view = task_view(&engine, first).await;
        assert_eq!(view.step("s0").unwrap().status, StepState::Complete, "{store}");
        assert_eq!(view.step("s1").unwrap().status, StepState::InProgress, "{store}");
        // Nothing claimed when there is nothing to claim; the reports still count.
        let (results, none) = engine
            .report_and_claim(
                next.iter()
                    .map(|s| tasker_core::store::StepReport {
                        step: s.step_id,
                        attempt: s.attempt,
                        outcome: tasker_core::store::Outcome::Complete(json!(1)),
                        logs: Vec::new(),
                    })
                    .collect(),
                &ClaimRequest {
                    handlers: Some(vec!["nobody".into()]),
                    ..any_handler(10)
                },
            )
            .await
            .unwrap();
        assert!(results.iter().all(|r| r.is_ok()), "{store}: {results:?}");
        assert!(none.is_empty(), "{store}: no step has handler nobody");
        let view = task_view(&engine, second).await;
        assert_eq!(view.step("s1").unwrap().status, StepState::Complete, "{store}");
        assert_eq!(view.step("s2").unwrap().status, StepState::Pending, "{store}");
    }
}

/// On PostgreSQL the wake-up of other engines is sent after the commit, on a connection of its
/// own: a worker of another engine whose own polling would wait an hour still runs, at once,
/// the task created through this one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_worker_is_woken_by_another_engine_s_commit() {
    let Some(url) = store_url(StoreKind::Postgres).await else {
        return;
    };
    let open = || async {
        tasker_core::Engine::builder()
            .url(url.clone())
            .build()
            .await
            .expect("open")
    };
    let (here, there) = (open().await, open().await);
    register(&here, &template("wake", "one").step(step("s"))).await;
    let worker = Worker::builder(there.clone())
        .poll_interval(std::time::Duration::from_secs(3600))
        .handler("s", |_step: ClaimedStep| async {
            Ok::<_, HandlerError>(json!("ran"))
        })
        .build();
    let running = {
        let worker = worker.clone();
        tokio::spawn(async move { worker.run().await })
    };
    // The worker has made its first look (nothing) and sleeps.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let task = create(&here, NewTask::new("wake", "one")).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while status(&here, task).await != TaskState::Complete {
        assert!(
            std::time::Instant::now() < deadline,
            "the other engine's worker was not woken"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    worker.stop();
    running.await.unwrap().unwrap();
}
