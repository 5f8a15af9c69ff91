//! Decision points and deferred convergence, on every store: the route a decision takes, the
//! steps it passes over, the convergence after it, and what operators and bad decisions do.

mod support;

use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tasker_core::{
    ClaimedStep, Decision, Engine, HandlerError, ManualClock, NewTask, StepKind, StepState,
    TaskState, Worker,
};

use support::*;

/// tasker-core's approval routing: `route` chooses among the three approvals by amount,
/// `finalize` converges on whichever ran; `audit` requires the finance review.
fn approvals() -> Template {
    template("approvals", "routing").steps([
        step("validate"),
        step("route").kind("decision").after(&["validate"]),
        step("auto_approve").after(&["route"]),
        step("manager_approval").after(&["route"]),
        step("finance_review").after(&["route"]),
        step("finalize").kind("deferred_convergence").after(&[
            "auto_approve",
            "manager_approval",
            "finance_review",
        ]),
        step("audit").after(&["finance_review"]),
    ])
}

/// The approvals a request of `amount` needs, as the template's comments describe them.
fn route_for(amount: f64) -> Vec<&'static str> {
    if amount < 1000.0 {
        vec!["auto_approve"]
    } else if amount < 5000.0 {
        vec!["manager_approval"]
    } else {
        vec!["manager_approval", "finance_review"]
    }
}

/// A new routing task whose request was validated and whose route decision chose `chosen`.
async fn decided(engine: &Engine, chosen: &[&str]) -> tasker_core::TaskId {
    let task = create(engine, NewTask::new("approvals", "routing")).await;
    claim_and_complete(engine, "validate", json!(1)).await;
    let route = claim_one(engine, "route").await;
    let decision = Decision::activate(chosen.iter().copied());
    engine
        .report(route.step_id, route.attempt, decision)
        .await
        .unwrap();
    task
}

/// Which handlers ran, in order.
type Ran = Arc<Mutex<Vec<String>>>;

/// A worker running the approvals: `route` decides by the context's amount, `finalize` returns
/// the names of the approvals it was handed.
fn approval_worker(engine: &Engine, ran: &Ran) -> Worker {
    let plain = |ran: Ran| {
        move |step: ClaimedStep| {
            let ran = ran.clone();
            async move {
                ran.lock().push(step.name.to_string());
                Ok::<_, HandlerError>(json!({"approved_by": &*step.name}))
            }
        }
    };
    let route = {
        let ran = ran.clone();
        move |step: ClaimedStep| {
            let ran = ran.clone();
            async move {
                ran.lock().push(step.name.to_string());
                let amount = step.context["amount"].as_f64().unwrap_or(0.0);
                Ok::<_, HandlerError>(
                    Decision::activate(route_for(amount)).with_result(json!({"amount": amount})),
                )
            }
        }
    };
    let finalize = {
        let ran = ran.clone();
        move |step: ClaimedStep| {
            let ran = ran.clone();
            async move {
                ran.lock().push(step.name.to_string());
                let approvals: Vec<&str> = step.inputs.iter().map(|(n, _)| n).collect();
                Ok::<_, HandlerError>(json!({"approvals": approvals}))
            }
        }
    };
    let mut builder = Worker::builder(engine.clone())
        .handler("route", route)
        .handler("finalize", finalize)
        .concurrency(3);
    for name in [
        "validate",
        "auto_approve",
        "manager_approval",
        "finance_review",
        "audit",
    ] {
        builder = builder.handler(name, plain(ran.clone()));
    }
    builder.build()
}

per_store! {
    async fn each_amount_takes_its_route_and_the_convergence_sees_only_that_route(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[approvals()]).await else {
            return;
        };
        let amounts = [250.0, 2500.0, 25000.0];
        let mut tasks = Vec::new();
        for amount in amounts {
            let task = NewTask::new("approvals", "routing").context(json!({"amount": amount}));
            tasks.push(create(&engine, task).await);
        }
        let ran: Ran = Arc::default();
        let report = approval_worker(&engine, &ran)
            .run_until_idle(RUN_LIMIT)
            .await
            .unwrap();
        assert!(report.idle, "{store}");

        for (amount, task) in amounts.into_iter().zip(tasks) {
            let view = task_view(&engine, task).await;
            assert_eq!(view.status, TaskState::Complete, "{store} {amount}");
            let route = route_for(amount);
            for name in ["auto_approve", "manager_approval", "finance_review"] {
                let s = view.step(name).unwrap();
                if route.contains(&name) {
                    assert_eq!(s.status, StepState::Complete, "{store} {amount} {name}");
                    assert_eq!(s.skip_reason, None);
                } else {
                    assert_eq!(s.status, StepState::Skipped, "{store} {amount} {name}");
                    assert_eq!(s.skip_reason.as_deref(), Some("not chosen"), "{store} {amount} {name}");
                    let reasons: Vec<_> = transitions_of(&engine, task, Some(name)).await.into_iter().filter_map(|t| t.reason).collect();
                    assert_eq!(reasons, ["not chosen"], "{store} {amount} {name}");
                }
            }
            // The audit requires the finance review: it runs only on the large route.
            let audit = view.step("audit").unwrap();
            let large = route.contains(&"finance_review");
            assert_eq!(audit.status, if large { StepState::Complete } else { StepState::Skipped }, "{store} {amount}");
            let decided = view.step("route").unwrap();
            assert_eq!(decided.kind, StepKind::Decision);
            assert_eq!(decided.chosen.as_deref(), Some(&route.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..]), "{store} {amount}");
            assert_eq!(decided.result, Some(json!({"amount": amount})), "{store}");
            // The convergence got the chosen approvals' results, and only theirs.
            let finalize = view.step("finalize").unwrap();
            assert_eq!(finalize.status, StepState::Complete, "{store} {amount}");
            assert_eq!(finalize.result, Some(json!({"approvals": route})), "{store} {amount}");
            let reason = transitions_of(&engine, task, Some("route")).await.into_iter().find(|t| t.to == "complete").and_then(|t| t.reason);
            assert_eq!(reason, Some(format!("chose {}", route.join(", "))), "{store}");
        }
        let ran = ran.lock().clone();
        assert_eq!(ran.iter().filter(|n| *n == "finalize").count(), 3, "{store}: {ran:?}");
        assert_eq!(ran.iter().filter(|n| *n == "audit").count(), 1, "{store}: {ran:?}");
    }
}

per_store! {
    async fn choosing_none_skips_every_branch_and_the_convergence_still_runs(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[approvals()]).await else {
            return;
        };
        let task = decided(&engine, &[]).await;
        let finalize = claim_one_with_inputs(&engine, "finalize", json!({})).await;
        complete(&engine, &finalize, json!("done")).await;
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(view.progress.skipped, 4, "{store}: three approvals and the audit");
    }
}

per_store! {
    async fn a_decision_naming_a_step_that_does_not_depend_on_it_fails_the_step_for_good(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[approvals()]).await else {
            return;
        };
        let task = decided(&engine, &["manager_approval", "audit"]).await;
        let view = task_view(&engine, task).await;
        let step = view.step("route").unwrap();
        assert_eq!(step.status, StepState::Error, "{store}: no retry of a bad decision");
        let error = step.error.clone().unwrap_or_default();
        assert!(error.contains("chose \"audit\", which does not depend on it"), "{store}: {error}");
        assert!(error.contains("auto_approve, manager_approval, finance_review"), "{store}: {error}");
        assert_eq!(view.status, TaskState::Error, "{store}");
        // The approvals and the convergence were skipped because the decision failed.
        let finalize = view.step("finalize").unwrap();
        assert_eq!(finalize.skip_reason.as_deref(), Some("a required parent failed"), "{store}");
    }
}

per_store! {
    async fn a_plain_result_from_a_decision_step_and_a_decision_from_a_plain_step_fail_for_good(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[approvals()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("approvals", "routing")).await;
        let validate = claim_one(&engine, "validate").await;
        engine
            .report(validate.step_id, validate.attempt, Decision::activate(["route"]))
            .await
            .unwrap();
        let view = task_view(&engine, task).await;
        let error = view.step("validate").unwrap().error.clone().unwrap_or_default();
        assert!(error.contains("is not a decision step"), "{store}: {error}");

        let second = create(&engine, NewTask::new("approvals", "routing")).await;
        claim_and_complete(&engine, "validate", json!(1)).await;
        let route = claim_one(&engine, "route").await;
        complete(&engine, &route, json!({"route": "manager_approval"})).await;
        let view = task_view(&engine, second).await;
        let route = view.step("route").unwrap();
        assert_eq!(route.status, StepState::Error, "{store}");
        let error = route.error.clone().unwrap_or_default();
        assert!(error.contains("returned a plain result"), "{store}: {error}");
    }
}

per_store! {
    async fn an_operator_retry_after_a_chosen_branch_failed_keeps_the_decision(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[approvals()]).await else {
            return;
        };
        let task = decided(&engine, &["manager_approval", "finance_review"]).await;
        let mut claimed = claim(&engine, 2).await;
        claimed.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(names(&claimed), ["finance_review", "manager_approval"], "{store}");
        complete(&engine, &claimed[1], json!("ok")).await;
        fail(&engine, &claimed[0], permanent("card declined")).await;
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Error, "{store}");
        assert_eq!(view.step("finalize").unwrap().skip_reason.as_deref(), Some("a required parent failed"));

        engine.retry_task(task).await.unwrap();
        let view = task_view(&engine, task).await;
        assert_eq!(view.step("auto_approve").unwrap().status, StepState::Skipped, "{store}: still not chosen");
        assert_eq!(view.step("finalize").unwrap().status, StepState::Pending, "{store}");
        let review = claim_one(&engine, "finance_review").await;
        complete(&engine, &review, json!("ok")).await;
        let mut rest = claim(&engine, 2).await;
        rest.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(names(&rest), ["audit", "finalize"], "{store}");
        assert_eq!(rest[1].inputs.to_json(), json!({"manager_approval": "ok", "finance_review": "ok"}), "{store}");
        for s in &rest {
            complete(&engine, s, json!("ok")).await;
        }
        assert_eq!(status(&engine, task).await, TaskState::Complete, "{store}");
    }
}

/// A decision taken on one engine is read back by another on the same store (it is in the
/// rows, not only in a cache): the second engine runs the chosen branch and the convergence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_is_kept_in_the_store() {
    for (store, url) in sql_store_urls().await {
        let first = Engine::open(&url).await.unwrap();
        register(&first, &approvals()).await;
        let task = decided(&first, &["auto_approve"]).await;
        first.close();

        let second = Engine::open(&url).await.unwrap();
        let view = task_view(&second, task).await;
        assert_eq!(
            view.step("route").unwrap().chosen,
            Some(vec!["auto_approve".to_owned()]),
            "{store}"
        );
        assert_eq!(
            view.step("finance_review").unwrap().skip_reason.as_deref(),
            Some("not chosen"),
            "{store}"
        );
        let auto = claim_one(&second, "auto_approve").await;
        complete(&second, &auto, json!("ok")).await;
        let finalize =
            claim_one_with_inputs(&second, "finalize", json!({"auto_approve": "ok"})).await;
        complete(&second, &finalize, Value::Null).await;
        assert_eq!(status(&second, task).await, TaskState::Complete, "{store}");
    }
}

#[test]
fn templates_refuse_a_decision_without_dependents_and_a_convergence_without_dependencies() {
    let lonely = "namespace: t\nname: d\nversion: 1.0.0\nsteps:\n  - {name: d, type: decision}\n";
    let err = tasker_core::TaskTemplate::parse(lonely)
        .unwrap()
        .compile()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "step \"d\" of type decision: no step depends on it, so it has nothing to choose from"
    );
    let empty = "namespace: t\nname: c\nversion: 1.0.0\nsteps:\n  - {name: c, type: deferred_convergence}\n";
    let err = tasker_core::TaskTemplate::parse(empty)
        .unwrap()
        .compile()
        .unwrap_err();
    assert!(
        err.to_string().contains("has no dependencies to converge"),
        "{err}"
    );
    let unknown = "namespace: t\nname: c\nversion: 1.0.0\nsteps:\n  - {name: c, type: fan_out}\n";
    let err = tasker_core::TaskTemplate::parse(unknown).unwrap_err();
    assert!(
        err.to_string().contains("unknown variant `fan_out`"),
        "{err}"
    );
}

per_store! {
    async fn a_worker_counts_a_refused_decision_as_a_failure(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[approvals()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("approvals", "routing")).await;
        let worker = Worker::builder(engine.clone())
            .handler("validate", |_step: ClaimedStep| async { Ok::<_, HandlerError>(json!(1)) })
            .handler("route", |_step: ClaimedStep| async {
                Ok::<_, HandlerError>(Decision::activate(["audit"]))
            })
            .build();
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!((report.completed, report.failed), (1, 1), "{store}: {report:?}");
        let view = task_view(&engine, task).await;
        let route = view.step("route").unwrap();
        assert_eq!((route.status, route.attempts), (StepState::Error, 1), "{store}");
        assert!(route.error.as_deref().unwrap_or_default().contains("which does not depend on it"), "{store}");
    }
}
