//! What the engine tells and shows: lifecycle events, read views, template versions and errors.

mod support;

use std::sync::Arc;

use serde_json::json;
use tasker_core::events::Event;
use tasker_core::view::{GraphEdge, TaskFilter};
use tasker_core::{
    Engine, Error, ManualClock, NewTask, StepState, Subscription, TaskId, TaskState,
};

use support::*;

fn pair() -> Template {
    template("ev", "pair")
        .step(
            step("first")
                .retry(attempts(2).backoff_ms(100))
                .timeout_ms(1000),
        )
        .step(step("second").after(&["first"]))
}

fn names_of(events: &[Arc<Event>]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.step_name {
            Some(step) => format!("{}:{step}", e.name),
            None => e.name.to_string(),
        })
        .collect()
}

fn drained(sub: &Subscription) -> Vec<String> {
    names_of(&sub.drain())
}

per_store! {
    async fn a_two_step_task_publishes_its_lifecycle_in_order(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[pair()]).await else {
            return;
        };
        let steps = engine.subscribe("step.*").unwrap();
        let tasks = engine.subscribe("task.*").unwrap();
        let all = engine.subscribe("*").unwrap();

        let task = create(&engine, NewTask::new("ev", "pair")).await;
        let first = claim_one(&engine, "first").await;
        complete(&engine, &first, json!(1)).await;
        claim_and_complete(&engine, "second", json!(2)).await;

        assert_eq!(
            drained(&tasks),
            ["task.created", "task.started", "task.completed"],
            "{store}"
        );
        assert_eq!(
            drained(&steps),
            [
                "step.ready:first",
                "step.claimed:first",
                "step.completed:first",
                "step.ready:second",
                "step.claimed:second",
                "step.completed:second",
            ],
            "{store}"
        );
        let everything = all.drain();
        assert_eq!(
            names_of(&everything),
            [
                "task.created",
                "step.ready:first",
                "task.started",
                "step.claimed:first",
                "step.completed:first",
                "step.ready:second",
                "step.claimed:second",
                "step.completed:second",
                "task.completed",
            ],
            "{store}"
        );
        assert!(everything.iter().all(|e| e.task_id == task), "{store}");
        let claimed = &everything[3];
        assert_eq!(claimed.step_id, Some(first.step_id), "{store}");
        assert_eq!(claimed.attempt, Some(1), "{store}");
        assert_eq!(claimed.at, engine.now(), "{store}");
        let json = claimed.to_json();
        assert_eq!(json["name"], "step.claimed", "{store}");
        assert_eq!(json["step_name"], "first", "{store}");
        assert_eq!(json["detail"]["from"], "pending", "{store}");
        assert_eq!(json["detail"]["to"], "in_progress", "{store}");
        assert_eq!(all.dropped(), 0, "{store}");
    }
}

per_store! {
    async fn a_retried_attempt_publishes_retry_scheduled_not_failed(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[pair()]).await else {
            return;
        };
        let steps = engine.subscribe("step.*").unwrap();
        let failures = engine.subscribe("*.failed").unwrap();
        create(&engine, NewTask::new("ev", "pair")).await;

        claim_and_fail(&engine, "first", retryable("busy")).await;
        clock.advance(ms(100));
        claim_and_complete(&engine, "first", json!(1)).await;

        let events = steps.drain();
        assert_eq!(
            names_of(&events),
            [
                "step.ready:first",
                "step.claimed:first",
                "step.retry_scheduled:first",
                "step.ready:first",
                "step.claimed:first",
                "step.completed:first",
                "step.ready:second",
            ],
            "{store}"
        );
        let scheduled = &events[2];
        assert_eq!(scheduled.attempt, Some(1), "{store}");
        assert_eq!(scheduled.detail["error"], "busy", "{store}");
        assert_eq!(events[4].attempt, Some(2), "{store}");
        assert!(
            failures.is_empty(),
            "{store}: a failure that will be retried is not step.failed: {:?}",
            drained(&failures)
        );
    }
}

per_store! {
    async fn a_step_failing_for_good_publishes_failed_skipped_and_task_failed(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[pair()]).await else {
            return;
        };
        let all = engine.subscribe("*").unwrap();
        create(&engine, NewTask::new("ev", "pair")).await;
        claim_and_fail(&engine, "first", permanent("no")).await;
        let events = all.drain();
        assert_eq!(
            names_of(&events)[4..],
            ["step.failed:first", "step.skipped:second", "task.failed"],
            "{store}"
        );
        assert_eq!(events[4].detail["error"], "no", "{store}");
    }
}

per_store! {
    async fn lease_expiry_on_the_last_attempt_publishes_lease_expired_then_failed(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[pair()]).await else {
            return;
        };
        let steps = engine.subscribe("step.*").unwrap();
        create(&engine, NewTask::new("ev", "pair")).await;

        claim_one(&engine, "first").await;
        clock.advance(ms(1000));
        assert_eq!(engine.reclaim_expired().await.unwrap(), 1);
        clock.advance(ms(100));
        claim_one(&engine, "first").await;
        clock.advance(ms(1000));
        assert_eq!(engine.reclaim_expired().await.unwrap(), 1);
        assert_eq!(
            drained(&steps),
            [
                "step.ready:first",
                "step.claimed:first",
                "step.lease_expired:first",
                "step.retry_scheduled:first",
                "step.ready:first",
                "step.claimed:first",
                "step.lease_expired:first",
                "step.failed:first",
                "step.skipped:second",
            ],
            "{store}"
        );
    }
}

per_store! {
    async fn a_slow_subscriber_loses_events_without_slowing_the_run(store) {
        let long = template("ev", "long").steps(chain_of("s", 20, "h"));
        let Some(engine) = engine_with(store, ManualClock::new(), &[long]).await else {
            return;
        };
        let tiny = engine.bus().subscribe_with_capacity("*", 2).unwrap();
        let roomy = engine.subscribe("*").unwrap();
        let task = create(&engine, NewTask::new("ev", "long")).await;
        let worker = worker_answering(&engine, &["h"], json!(1));
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!(report.completed, 20, "{store}");
        assert_eq!(status(&engine, task).await, TaskState::Complete, "{store}");

        assert_eq!(tiny.len(), 2, "{store}");
        let total = roomy.len() as u64;
        assert_eq!(
            total,
            2 + 20 * 3 + 1,
            "{store}: created, started, 3 per step, completed"
        );
        assert_eq!(tiny.dropped(), total - 2, "{store}");
        assert_eq!(roomy.dropped(), 0, "{store}");
        // The queue kept the oldest events.
        assert_eq!(
            names_of(&tiny.drain()),
            ["task.created", "step.ready:s0"],
            "{store}"
        );
    }
}

per_store! {
    async fn subscribing_with_a_bad_pattern_is_an_invalid_argument(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[]).await else {
            return;
        };
        assert_err!(
            engine.subscribe("step.["),
            Error::InvalidArgument(_),
            "{store}"
        );
    }
}

fn shop() -> Template {
    template("shop", "order")
        .version("2.1.0")
        .step(step("charge").handler("payments").retry(attempts(4)))
        .step(step("ship").after(&["charge"]))
        .step(step("notify").after_any_outcome_of("ship"))
}

per_store! {
    async fn task_view_reports_fields_progress_and_step_details(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[shop()]).await else {
            return;
        };
        let created_at = engine.now();
        let task = create(
            &engine,
            NewTask::new("shop", "order")
                .context(json!({"order": 42}))
                .priority(3)
                .idempotency_key("o-42"),
        )
        .await;
        let view = task_view(&engine, task).await;
        assert_eq!(view.id, task, "{store}");
        assert_eq!(
            (
                view.namespace.as_str(),
                view.name.as_str(),
                view.version.as_str()
            ),
            ("shop", "order", "2.1.0"),
            "{store}"
        );
        assert_eq!(view.status, TaskState::Pending, "{store}");
        assert_eq!(view.context, json!({"order": 42}), "{store}");
        assert_eq!(view.priority, 3, "{store}");
        assert_eq!(view.idempotency_key.as_deref(), Some("o-42"), "{store}");
        assert_eq!(view.created_at, created_at, "{store}");
        assert_eq!(view.completed_at, None, "{store}");
        assert_eq!((view.progress.total, view.progress.pending), (3, 3));
        assert_eq!(view.progress.percent, 0.0, "{store}");
        let names: Vec<&str> = view.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["charge", "ship", "notify"],
            "{store}: template order"
        );
        let charge = view.step("charge").unwrap();
        assert_eq!(charge.handler, "payments", "{store}");
        assert_eq!((charge.attempts, charge.max_attempts), (0, 4), "{store}");
        assert_eq!(view.step("ship").unwrap().handler, "ship", "{store}");
        let notify = view.step("notify").unwrap();
        assert_eq!(notify.depends_on[0].step, "ship", "{store}");
        assert!(!notify.depends_on[0].requires_success, "{store}");

        let charge = claim_one(&engine, "charge").await;
        clock.advance(ms(250));
        complete(&engine, &charge, json!({"charged": 10})).await;
        let ship = claim_one(&engine, "ship").await;
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::InProgress, "{store}");
        let p = &view.progress;
        assert_eq!(
            (p.complete, p.in_progress, p.pending),
            (1, 1, 1),
            "{store}: {p:?}"
        );
        assert_eq!(p.percent, 33.3, "{store}");
        let c = view.step("charge").unwrap();
        assert_eq!(c.status, StepState::Complete, "{store}");
        assert_eq!(c.result, Some(json!({"charged": 10})), "{store}");
        assert_eq!(c.duration_ms, Some(250), "{store}");
        assert_eq!(c.attempts, 1, "{store}");
        assert_eq!(c.error, None, "{store}");
        let s = view.step("ship").unwrap();
        assert_eq!(s.status, StepState::InProgress, "{store}");
        assert_eq!(s.started_at, Some(engine.now()), "{store}");
        assert_eq!(s.duration_ms, None, "{store}: still running");

        fail(&engine, &ship, permanent("no truck")).await;
        let view = task_view(&engine, task).await;
        assert_eq!(
            view.step("ship").unwrap().error.as_deref(),
            Some("no truck")
        );
        assert_eq!(view.step("ship").unwrap().result, None, "{store}");
        assert_eq!(view.step("ship").unwrap().duration_ms, Some(0), "{store}");

        // The view serializes to the JSON the bindings hand out.
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["status"], "in_progress", "{store}");
        assert_eq!(json["steps"][1]["status"], "error", "{store}");
        assert_eq!(json["progress"]["error"], 1, "{store}");
    }
}

per_store! {
    async fn list_tasks_filters_by_status_namespace_and_name_newest_first(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[shop(), pair()]).await else {
            return;
        };
        let mut orders = Vec::new();
        for _ in 0..3 {
            orders.push(create(&engine, NewTask::new("shop", "order")).await);
        }
        let pair = create(&engine, NewTask::new("ev", "pair")).await;
        engine.cancel_task(orders[1]).await.unwrap();

        let ids = |tasks: Vec<tasker_core::TaskView>| -> Vec<TaskId> {
            tasks.into_iter().map(|t| t.id).collect()
        };
        let all = engine.list_tasks(&TaskFilter::default()).await.unwrap();
        assert_eq!(ids(all), [pair, orders[2], orders[1], orders[0]], "{store}");

        let shop = TaskFilter {
            namespace: Some("shop".into()),
            ..TaskFilter::default()
        };
        assert_eq!(
            ids(engine.list_tasks(&shop).await.unwrap()),
            [orders[2], orders[1], orders[0]],
            "{store}"
        );
        let cancelled = TaskFilter {
            status: Some(TaskState::Cancelled),
            ..TaskFilter::default()
        };
        assert_eq!(
            ids(engine.list_tasks(&cancelled).await.unwrap()),
            [orders[1]],
            "{store}"
        );
        let pending_shop = TaskFilter {
            status: Some(TaskState::Pending),
            namespace: Some("shop".into()),
            limit: 1,
            ..TaskFilter::default()
        };
        assert_eq!(
            ids(engine.list_tasks(&pending_shop).await.unwrap()),
            [orders[2]],
            "{store}"
        );
        let by_name = TaskFilter {
            name: Some("pair".into()),
            ..TaskFilter::default()
        };
        assert_eq!(ids(engine.list_tasks(&by_name).await.unwrap()), [pair]);
        let nothing = TaskFilter {
            namespace: Some("nope".into()),
            ..TaskFilter::default()
        };
        assert!(engine.list_tasks(&nothing).await.unwrap().is_empty());
    }
}

per_store! {
    async fn transitions_form_an_audit_trail_with_reasons_attempts_and_times(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[pair()]).await else {
            return;
        };
        let t0 = engine.now();
        let task = create(&engine, NewTask::new("ev", "pair")).await;
        clock.advance(ms(10));
        let t1 = engine.now();
        let first = claim_one(&engine, "first").await;
        clock.advance(ms(10));
        let t2 = engine.now();
        fail(&engine, &first, retryable("flaky")).await;

        let trail = engine.transitions(task).await.unwrap();
        let rows: Vec<_> = trail
            .iter()
            .map(|t| {
                (
                    t.step.as_deref(),
                    t.from.as_deref(),
                    t.to.as_str(),
                    t.event.as_str(),
                    t.reason.as_deref(),
                    t.attempt,
                    t.at,
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (None, None, "pending", "create", None, 0, t0),
                (None, Some("pending"), "in_progress", "start", None, 0, t1),
                (
                    Some("first"),
                    Some("pending"),
                    "in_progress",
                    "claim",
                    None,
                    1,
                    t1
                ),
                (
                    Some("first"),
                    Some("in_progress"),
                    "error",
                    "fail",
                    Some("flaky"),
                    1,
                    t2
                ),
                (
                    Some("first"),
                    Some("error"),
                    "waiting_for_retry",
                    "schedule_retry",
                    Some("retry in 100 ms"),
                    1,
                    t2
                ),
            ],
            "{store}"
        );
        assert_eq!(trail[2].step_id, Some(first.step_id), "{store}");
        assert_eq!(trail[0].step_id, None, "{store}");
    }
}

per_store! {
    async fn graph_lists_nodes_with_states_and_edges(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[shop()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("shop", "order")).await;
        claim_and_complete(&engine, "charge", json!(1)).await;

        let graph = engine.graph(task).await.unwrap();
        assert_eq!(graph.task_id, task, "{store}");
        let nodes: Vec<_> = graph
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.handler.as_str(), n.status))
            .collect();
        assert_eq!(
            nodes,
            [
                ("charge", "payments", StepState::Complete),
                ("ship", "ship", StepState::Pending),
                ("notify", "notify", StepState::Pending),
            ],
            "{store}"
        );
        let edge = |from: &str, to: &str, requires_success| GraphEdge {
            from: from.into(),
            to: to.into(),
            requires_success,
        };
        assert_eq!(
            graph.edges,
            [edge("charge", "ship", true), edge("ship", "notify", false)],
            "{store}"
        );
    }
}

per_store! {
    async fn unknown_ids_templates_and_bad_versions_are_reported_as_such(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[shop()]).await else {
            return;
        };
        let missing = TaskId::new();
        assert_err!(
            engine.task(missing).await,
            Error::TaskNotFound(id) if id == missing,
            "{store}"
        );
        assert!(matches!(
            engine.transitions(missing).await,
            Err(Error::TaskNotFound(_))
        ));
        assert!(matches!(
            engine.graph(missing).await,
            Err(Error::TaskNotFound(_))
        ));

        assert_err!(
            engine.create_task(NewTask::new("shop", "nope")).await,
            Error::TemplateNotFound { namespace, name, version: None }
                if namespace == "shop" && name == "nope",
            "{store}"
        );
        assert_err!(
            engine
                .create_task(NewTask::new("shop", "order").version("9.9.9"))
                .await,
            Error::TemplateNotFound { version: Some(v), .. } if v == "9.9.9",
            "{store}"
        );
        assert_err!(
            engine
                .create_task(NewTask::new("shop", "order").version("latest"))
                .await,
            Error::InvalidArgument(_),
            "{store}"
        );

        assert_err!(
            engine
                .register_template_str(
                    "namespace: x\nname: y\nversion: 1.0.0\nsteps:\n  - { name: a, depends_on: [a] }\n",
                )
                .await,
            Error::Template(_),
            "{store}"
        );
        assert!(engine
            .list_tasks(&TaskFilter::default())
            .await
            .unwrap()
            .is_empty());
    }
}

fn versioned(version: &str, only_step: &str) -> Template {
    template("v", "flow").version(version).step(step(only_step))
}

async fn version_of(engine: &Engine, version: Option<&str>) -> (String, String) {
    let mut new = NewTask::new("v", "flow");
    if let Some(v) = version {
        new = new.version(v);
    }
    let task = create(engine, new).await;
    let view = task_view(engine, task).await;
    (view.version, view.steps[0].name.clone())
}

per_store! {
    async fn create_task_uses_the_newest_version_by_semver_unless_told_otherwise(store) {
        let versions = [
            versioned("1.0.0", "one"),
            versioned("1.10.0", "ten"),
            versioned("1.2.0", "two"),
        ];
        let Some(engine) = engine_with(store, ManualClock::new(), &versions).await else {
            return;
        };
        assert_eq!(
            version_of(&engine, None).await,
            ("1.10.0".into(), "ten".into()),
            "{store}: 1.10.0 > 1.2.0"
        );
        assert_eq!(
            version_of(&engine, Some("1.0.0")).await,
            ("1.0.0".into(), "one".into()),
            "{store}"
        );
        assert_eq!(
            version_of(&engine, Some("1.2.0")).await,
            ("1.2.0".into(), "two".into()),
            "{store}"
        );
        let graph = engine.template("v", "flow", None).await.unwrap();
        assert_eq!(graph.version().to_string(), "1.10.0", "{store}");
    }
}

per_store! {
    async fn reregistering_a_version_needs_identical_content(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[versioned("1.0.0", "one")]).await else {
            return;
        };
        register(&engine, &versioned("1.0.0", "one")).await; // identical: fine
        engine
            .register_template_value(json!({
                "namespace": "v", "name": "flow", "version": "1.0.0",
                "steps": [{"name": "one"}]
            }))
            .await
            .expect("the same template as JSON is the same content");

        assert_err!(
            engine
                .register_template_str(&versioned("1.0.0", "changed").yaml())
                .await,
            Error::TemplateConflict { namespace, name, version }
                if namespace == "v" && name == "flow" && version == "1.0.0",
            "{store}"
        );
        assert_eq!(
            version_of(&engine, None).await,
            ("1.0.0".into(), "one".into()),
            "{store}: the first content stays"
        );
    }
}

per_store! {
    async fn a_closed_engine_refuses_every_call(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[pair()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("ev", "pair")).await;
        let step = claim_one(&engine, "first").await;
        assert!(!engine.is_closed(), "{store}");
        let clone = engine.clone();
        engine.close();
        assert!(clone.is_closed(), "{store}: clones share the engine");

        let closed = |r: Result<(), Error>| matches!(r, Err(Error::Closed));
        assert!(closed(clone.task(task).await.map(drop)), "{store}");
        assert!(closed(
            clone
                .create_task(NewTask::new("ev", "pair"))
                .await
                .map(drop)
        ));
        assert!(closed(clone.claim(&any_handler(1)).await.map(drop)));
        assert!(closed(clone.complete(step.step_id, 1, json!(1)).await));
        assert!(closed(clone.fail(step.step_id, 1, retryable("x")).await));
        assert!(closed(clone.heartbeat(step.step_id, 1).await.map(drop)));
        assert!(closed(clone.reclaim_expired().await.map(drop)));
        assert!(closed(clone.cancel_task(task).await));
        assert!(closed(clone.pause_task(task).await));
        assert!(closed(clone.resume_task(task).await));
        assert!(closed(clone.retry_task(task).await));
        assert!(closed(clone.resolve_step(task, "first", json!(1)).await));
        assert!(closed(
            clone.list_tasks(&TaskFilter::default()).await.map(drop)
        ));
        assert!(closed(clone.transitions(task).await.map(drop)));
        assert!(closed(clone.graph(task).await.map(drop)));
        assert!(closed(
            clone.register_template_str(&pair().yaml()).await.map(drop)
        ));
        assert!(closed(clone.template("ev", "pair", None).await.map(drop)));
        assert!(
            closed(clone.template("ev", "pair", Some("1.0.0")).await.map(drop)),
            "{store}: not even from the template cache"
        );
        assert!(closed(clone.subscribe("*").map(drop)), "{store}");
        assert!(closed(clone.work_status().await.map(drop)));

        let worker = worker_answering(&clone, &["first"], json!(1));
        assert_err!(
            worker.run_until_idle(RUN_LIMIT).await,
            Error::Closed,
            "{store}"
        );
    }
}

per_store! {
    /// In memory, on one thread, every operation publishes before another starts, so the order is
    /// exact. A SQL store's operation publishes after its commit returns, and a claim by another
    /// task of the engine may see the released step first (its `step.claimed` may come before the
    /// `step.ready` of the operation that released it): there, each step's events precede its
    /// completion and the completions follow the chain.
    async fn events_of_a_chain_run_by_a_worker_arrive_in_causal_order(store) {
        let chain = template("ev", "chain").steps(chain_of("s", 30, "h"));
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain]).await else {
            return;
        };
        for _ in 0..10 {
            let steps = engine.subscribe("step.*").unwrap();
            create(&engine, NewTask::new("ev", "chain")).await;
            let worker = worker_answering(&engine, &["h"], json!(1));
            worker.run_until_idle(RUN_LIMIT).await.unwrap();
            let expected: Vec<String> = (0..30)
                .flat_map(|i| {
                    ["step.ready", "step.claimed", "step.completed"]
                        .map(|name| format!("{name}:s{i}"))
                })
                .collect();
            if store != StoreKind::Memory {
                let got = drained(&steps);
                let at = |e: &String| got.iter().position(|g| g == e);
                for i in 0..30 {
                    let [ready, claimed, completed] =
                        ["step.ready", "step.claimed", "step.completed"]
                            .map(|name| at(&format!("{name}:s{i}")).expect("every event arrives"));
                    // ready is published by the operation that released the step, which may
                    // come after the claim it made possible; both precede the completion.
                    assert!(
                        ready < completed && claimed < completed,
                        "{store}: s{i} in {got:?}"
                    );
                }
                let completions: Vec<&String> = got
                    .iter()
                    .filter(|g| g.starts_with("step.completed"))
                    .collect();
                let chain: Vec<String> = (0..30).map(|i| format!("step.completed:s{i}")).collect();
                assert_eq!(completions, chain.iter().collect::<Vec<_>>(), "{store}");
                assert_eq!(got.len(), expected.len(), "{store}: each event once");
                continue;
            }
            assert_eq!(drained(&steps), expected, "{store}");
        }
    }
}
