//! Child tasks on every store: a handler starts children of another template, its step waits
//! for them and completes with their leaf results in order, or fails when one fails (the
//! others cancelled); cancelling a parent cancels its children and theirs; a follow-up a crash
//! left undone is made good by tending.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};
use tasker_core::error::Result;
use tasker_core::store::{
    Changes, ClaimRequest, ClaimedStep, Created, NewTask, Now, Outcome, ParentLink,
    ReportedAndClaimed, Settled, StepReport, Store, WorkStatus,
};
use tasker_core::view::{TaskFilter, TaskView, TransitionView};
use tasker_core::{
    ChildTask, Children, Engine, HandlerError, ManualClock, StepId, StepState, TaskGraph, TaskId,
    TaskState, TaskTemplate, Worker,
};

use support::*;

/// `family/parent`: `fan_out` starts `n` children (`family/child`, the one the context's
/// `fail` names failing), `summary` gets their results.
fn parent_template() -> Template {
    template("family", "parent").raw(
        "  - name: fan_out\n    retry: {max_attempts: 1}\n  - name: summary\n    depends_on: [fan_out]\n",
    )
}

/// `family/child`: `double` then two leaves, `square` and `label`.
fn child_template() -> Template {
    template("family", "child").raw(
        "  - name: double\n    retry: {max_attempts: 1}\n  - name: square\n    depends_on: [double]\n  - name: label\n    depends_on: [double]\n",
    )
}

/// The children `fan_out` starts for `context`.
fn children_of(context: &Value) -> Children {
    let n = context["n"].as_u64().unwrap_or(0);
    Children::of((0..n).map(|i| {
        ChildTask::new(
            "family",
            "child",
            json!({"i": i, "fail": context["fail"] == json!(i)}),
        )
    }))
}

/// A worker for both templates.
fn family_worker(engine: &Engine) -> Worker {
    Worker::builder(engine.clone())
        .handler("fan_out", |step: ClaimedStep| async move {
            Ok::<_, HandlerError>(children_of(&step.context))
        })
        .handler("summary", |step: ClaimedStep| async move {
            Ok::<_, HandlerError>(step.inputs.get("fan_out").cloned().unwrap_or(Value::Null))
        })
        .handler("double", |step: ClaimedStep| async move {
            if step.context["fail"] == json!(true) {
                return Err(HandlerError::permanent("cannot double"));
            }
            Ok(json!(step.context["i"].as_u64().unwrap() * 2))
        })
        .handler("square", |step: ClaimedStep| async move {
            let d = step.inputs.get("double").and_then(Value::as_u64).unwrap();
            Ok::<_, HandlerError>(json!(d * d))
        })
        .handler("label", |step: ClaimedStep| async move {
            Ok::<_, HandlerError>(json!(format!("child {}", step.context["i"])))
        })
        .concurrency(4)
        .build()
}

/// What child `i` hands its parent.
fn leaf_results(i: u64) -> Value {
    json!({"square": (2 * i) * (2 * i), "label": format!("child {i}")})
}

async fn family(store: StoreKind) -> Option<Engine> {
    engine_with(
        store,
        ManualClock::new(),
        &[parent_template(), child_template()],
    )
    .await
}

/// Claims `fan_out` of a parent with `context` and reports its children; their ids.
async fn started(engine: &Engine, context: Value) -> (TaskId, Vec<TaskId>) {
    let parent = create(
        engine,
        NewTask::new("family", "parent").context(context.clone()),
    )
    .await;
    let step = claim_one(engine, "fan_out").await;
    engine
        .report(step.step_id, step.attempt, children_of(&context))
        .await
        .unwrap();
    let view = task_view(engine, parent).await;
    let fan_out = view.step("fan_out").unwrap();
    assert_eq!(fan_out.status, StepState::WaitingForChildren);
    (parent, fan_out.children.clone().unwrap())
}

per_store! {
    async fn a_parent_step_completes_with_its_childrens_leaf_results_in_order(store) {
        let Some(engine) = family(store).await else { return };
        let parent = create(&engine, NewTask::new("family", "parent").context(json!({"n": 5})).priority(7)).await;
        let report = family_worker(&engine).run_until_idle(RUN_LIMIT).await.unwrap();
        assert!(report.idle, "{store}");
        assert_eq!(report.completed, 2 + 5 * 3, "{store}: fan_out, summary and each child's three steps");
        let view = task_view(&engine, parent).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        let expected = Value::Array((0..5).map(leaf_results).collect());
        let fan_out = view.step("fan_out").unwrap();
        assert_eq!(fan_out.result.as_ref(), Some(&expected), "{store}");
        assert_eq!(view.step("summary").unwrap().result.as_ref(), Some(&expected), "{store}");
        let children = fan_out.children.clone().unwrap();
        assert_eq!(children.len(), 5, "{store}");
        for (i, child) in children.iter().enumerate() {
            let c = task_view(&engine, *child).await;
            assert_eq!(c.status, TaskState::Complete, "{store}");
            assert_eq!(c.context["i"], json!(i), "{store}: children in order");
            assert_eq!(c.priority, 7, "{store}: a child has its parent's priority");
            let link = c.parent.unwrap();
            assert_eq!((link.task_id, link.step.as_str()), (parent, "fan_out"), "{store}");
        }
        assert!(view.parent.is_none(), "{store}");
        let graph = engine.graph(parent).await.unwrap();
        let node = graph.nodes.iter().find(|n| n.name == "fan_out").unwrap();
        assert_eq!(node.children, children, "{store}: the graph names the children");
        let trail = step_path(&engine, parent, "fan_out").await;
        assert_eq!(
            trail,
            path(&[("pending", "in_progress"), ("in_progress", "waiting_for_children"), ("waiting_for_children", "complete")]),
            "{store}"
        );
    }
}

per_store! {
    async fn a_step_starting_no_children_completes_with_an_empty_list(store) {
        let Some(engine) = family(store).await else { return };
        let parent = create(&engine, NewTask::new("family", "parent").context(json!({"n": 0}))).await;
        family_worker(&engine).run_until_idle(RUN_LIMIT).await.unwrap();
        let view = task_view(&engine, parent).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(view.step("fan_out").unwrap().result, Some(json!([])), "{store}");
    }
}

per_store! {
    async fn a_failed_child_fails_its_parent_step_and_cancels_the_others(store) {
        let Some(engine) = family(store).await else { return };
        let (parent, children) = started(&engine, json!({"n": 3, "fail": 1})).await;
        // Child 1's first step fails for good; children 0 and 2 have not run.
        let doubles = claim(&engine, 10).await;
        assert_eq!(names(&doubles), ["double", "double", "double"], "{store}");
        let failing = doubles.iter().find(|s| s.task_id() == children[1]).unwrap();
        fail(&engine, failing, permanent("cannot double")).await;
        let view = task_view(&engine, parent).await;
        assert_eq!(view.status, TaskState::Error, "{store}");
        let fan_out = view.step("fan_out").unwrap();
        assert_eq!(fan_out.status, StepState::Error, "{store}");
        let error = fan_out.error.clone().unwrap_or_default();
        assert!(error.contains(&format!("child task 1 ({}) failed", children[1])), "{store}: {error}");
        assert_eq!(view.step("summary").unwrap().status, StepState::Skipped, "{store}");
        assert_eq!(status(&engine, children[1]).await, TaskState::Error, "{store}");
        for other in [children[0], children[2]] {
            assert_eq!(status(&engine, other).await, TaskState::Cancelled, "{store}: the others are cancelled");
        }
        // Their claimed steps may no longer report.
        let held = doubles.iter().find(|s| s.task_id() == children[0]).unwrap();
        let late = engine.complete(held.step_id, held.attempt, json!(0)).await;
        assert!(matches!(late, Err(tasker_core::Error::ClaimLost { .. })), "{store}: {late:?}");
    }
}

per_store! {
    async fn cancelling_a_parent_cancels_its_children_and_theirs(store) {
        let nested = template("family", "nested").raw("  - name: nest\n");
        let Some(engine) = engine_with(store, ManualClock::new(), &[parent_template(), child_template(), nested]).await else {
            return;
        };
        // A `nested` task whose step starts a parent, whose fan_out starts two children.
        let root = create(&engine, NewTask::new("family", "nested")).await;
        let nest = claim_one(&engine, "nest").await;
        let start = Children::of([ChildTask::new("family", "parent", json!({"n": 2}))]);
        engine.report(nest.step_id, nest.attempt, start).await.unwrap();
        let middle = task_view(&engine, root).await.step("nest").unwrap().children.clone().unwrap()[0];
        let fan_out = claim_one(&engine, "fan_out").await;
        engine.report(fan_out.step_id, fan_out.attempt, children_of(&json!({"n": 2}))).await.unwrap();
        let leaves = task_view(&engine, middle).await.step("fan_out").unwrap().children.clone().unwrap();
        let running = claim_one(&engine, "double").await;

        engine.cancel_task(root).await.unwrap();
        assert_eq!(status(&engine, root).await, TaskState::Cancelled, "{store}");
        assert_eq!(status(&engine, middle).await, TaskState::Cancelled, "{store}");
        for leaf in &leaves {
            let view = task_view(&engine, *leaf).await;
            assert_eq!(view.status, TaskState::Cancelled, "{store}");
            assert!(view.steps.iter().all(|s| s.status.is_finished()), "{store}: no step left to run");
        }
        assert!(claim(&engine, 10).await.is_empty(), "{store}: nothing of them is handed out");
        let late = engine.complete(running.step_id, running.attempt, json!(0)).await;
        assert!(matches!(late, Err(tasker_core::Error::ClaimLost { .. })), "{store}: {late:?}");
    }
}

per_store! {
    async fn children_of_an_unknown_template_fail_the_step_and_none_is_started(store) {
        let Some(engine) = family(store).await else { return };
        let parent = create(&engine, NewTask::new("family", "parent")).await;
        let step = claim_one(&engine, "fan_out").await;
        let children = Children::of([
            ChildTask::new("family", "child", json!({"i": 0})),
            ChildTask::new("family", "nope", json!({})),
        ]);
        engine.report(step.step_id, step.attempt, children).await.unwrap();
        let view = task_view(&engine, parent).await;
        let fan_out = view.step("fan_out").unwrap();
        assert_eq!(fan_out.status, StepState::Error, "{store}");
        let error = fan_out.error.clone().unwrap_or_default();
        assert!(error.contains("child task 1 (family/nope)"), "{store}: {error}");
        let all = engine.list_tasks(&TaskFilter::default()).await.unwrap();
        assert_eq!(all.len(), 1, "{store}: no child was created");
    }
}

per_store! {
    async fn a_report_made_again_after_its_answer_was_lost_starts_no_second_set(store) {
        let Some((engine, faults)) = crashing_engine(store).await else { return };
        let parent = create(&engine, NewTask::new("family", "parent")).await;
        let step = claim_one(&engine, "fan_out").await;
        let children = || children_of(&json!({"n": 3}));
        faults.reports.store(true, Ordering::SeqCst);
        let lost = engine.report(step.step_id, step.attempt, children()).await;
        assert!(lost.is_err(), "{store}: {lost:?}");
        let all = engine.list_tasks(&TaskFilter::default()).await.unwrap();
        assert_eq!(all.len(), 1 + 3, "{store}: the children were made before the report was lost");
        // The worker reports again: the same children, not three more.
        faults.reports.store(false, Ordering::SeqCst);
        engine.report(step.step_id, step.attempt, children()).await.unwrap();
        let all = engine.list_tasks(&TaskFilter::default()).await.unwrap();
        assert_eq!(all.len(), 1 + 3, "{store}");
        let mut made: Vec<TaskId> = all.iter().map(|t| t.id).filter(|id| *id != parent).collect();
        let mut waited: Vec<TaskId> = task_view(&engine, parent).await.step("fan_out").unwrap().children.clone().unwrap();
        made.sort();
        waited.sort();
        assert_eq!(made, waited, "{store}");
    }
}

per_store! {
    async fn a_task_naming_a_parent_is_refused(store) {
        let Some(engine) = family(store).await else { return };
        let parent = create(&engine, NewTask::new("family", "parent")).await;
        let mut task = NewTask::new("family", "child");
        task.parent = Some(ParentLink { task_id: parent, step: "fan_out".into(), index: 0, attempt: 1, key: None, above: Vec::new() });
        assert_err!(engine.create_task(task).await, tasker_core::Error::InvalidArgument(_), "{store}");
    }
}

/// What [`Crashing`] fails while set.
#[derive(Debug, Default)]
struct Faults {
    /// The follow-ups of child tasks (settling a parent step, cancelling a child): what a
    /// process that died between two operations leaves undone.
    follow_ups: AtomicBool,
    /// Reports: an answer lost on the way.
    reports: AtomicBool,
}

/// A store failing what its [`Faults`] say.
#[derive(Debug)]
struct Crashing {
    inner: Arc<dyn Store>,
    faults: Arc<Faults>,
}

impl Crashing {
    fn check(&self, fault: &AtomicBool) -> Result<()> {
        if fault.load(Ordering::SeqCst) {
            return Err(tasker_core::Error::store(
                tasker_core::StoreErrorKind::Unavailable,
                "the process died",
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for Crashing {
    async fn save_template(&self, graph: &TaskGraph) -> Result<()> {
        self.inner.save_template(graph).await
    }
    async fn resolve_template_version(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&semver::Version>,
    ) -> Result<semver::Version> {
        self.inner
            .resolve_template_version(namespace, name, version)
            .await
    }
    async fn load_template(
        &self,
        namespace: &str,
        name: &str,
        version: &semver::Version,
    ) -> Result<TaskTemplate> {
        self.inner.load_template(namespace, name, version).await
    }
    async fn templates(&self) -> Result<Vec<tasker_core::view::TemplateView>> {
        self.inner.templates().await
    }
    async fn create_task(
        &self,
        graph: Arc<TaskGraph>,
        task: &NewTask,
        now: tasker_core::Timestamp,
    ) -> Result<Created> {
        self.inner.create_task(graph, task, now).await
    }
    async fn create_tasks(
        &self,
        tasks: &[(Arc<TaskGraph>, NewTask)],
        now: tasker_core::Timestamp,
    ) -> Result<Vec<Created>> {
        self.inner.create_tasks(tasks, now).await
    }
    async fn claim(
        &self,
        request: &ClaimRequest,
        now: Now<'_>,
    ) -> Result<(Vec<ClaimedStep>, Changes)> {
        self.inner.claim(request, now).await
    }
    async fn report(
        &self,
        step: StepId,
        attempt: u32,
        outcome: Outcome,
        now: tasker_core::Timestamp,
    ) -> Result<Changes> {
        self.check(&self.faults.reports)?;
        self.inner.report(step, attempt, outcome, now).await
    }
    async fn report_many(
        &self,
        reports: Vec<StepReport>,
        now: tasker_core::Timestamp,
    ) -> Result<(Vec<Result<()>>, Changes)> {
        self.inner.report_many(reports, now).await
    }
    async fn report_and_claim(
        &self,
        reports: Vec<StepReport>,
        request: &ClaimRequest,
        now: Now<'_>,
    ) -> Result<ReportedAndClaimed> {
        self.inner.report_and_claim(reports, request, now).await
    }
    async fn release(
        &self,
        step: StepId,
        attempt: u32,
        now: tasker_core::Timestamp,
    ) -> Result<Changes> {
        self.inner.release(step, attempt, now).await
    }
    async fn heartbeat(
        &self,
        step: StepId,
        attempt: u32,
        now: tasker_core::Timestamp,
    ) -> Result<tasker_core::Timestamp> {
        self.inner.heartbeat(step, attempt, now).await
    }
    async fn reclaim_expired(&self, now: tasker_core::Timestamp) -> Result<Changes> {
        self.inner.reclaim_expired(now).await
    }
    async fn cancel_task(&self, task: TaskId, now: tasker_core::Timestamp) -> Result<Changes> {
        self.inner.cancel_task(task, now).await
    }
    async fn pause_task(&self, task: TaskId, now: tasker_core::Timestamp) -> Result<Changes> {
        self.inner.pause_task(task, now).await
    }
    async fn resume_task(&self, task: TaskId, now: tasker_core::Timestamp) -> Result<Changes> {
        self.inner.resume_task(task, now).await
    }
    async fn retry_task(&self, task: TaskId, now: tasker_core::Timestamp) -> Result<Changes> {
        self.inner.retry_task(task, now).await
    }
    async fn resolve_step(
        &self,
        step: StepId,
        result: Value,
        now: tasker_core::Timestamp,
    ) -> Result<Changes> {
        self.inner.resolve_step(step, result, now).await
    }
    async fn settle_children(
        &self,
        step: StepId,
        children: &[TaskId],
        settled: Settled,
        now: tasker_core::Timestamp,
    ) -> Result<Changes> {
        self.check(&self.faults.follow_ups)?;
        self.inner
            .settle_children(step, children, settled, now)
            .await
    }
    async fn purge(
        &self,
        finished_before: tasker_core::Timestamp,
        statuses: &[TaskState],
    ) -> Result<u64> {
        self.inner.purge(finished_before, statuses).await
    }
    async fn task_states(&self, ids: &[TaskId]) -> Result<Vec<(TaskId, TaskState)>> {
        self.check(&self.faults.follow_ups)?;
        self.inner.task_states(ids).await
    }
    async fn waiting_for_children(
        &self,
        after: Option<StepId>,
        limit: usize,
    ) -> Result<Vec<StepId>> {
        self.inner.waiting_for_children(after, limit).await
    }
    async fn open_children(
        &self,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<(TaskId, ParentLink)>> {
        self.inner.open_children(after, limit).await
    }
    async fn save_schedule(
        &self,
        spec: &tasker_core::schedule::ScheduleSpec,
        next_at: Option<tasker_core::Timestamp>,
        now: tasker_core::Timestamp,
    ) -> Result<()> {
        self.inner.save_schedule(spec, next_at, now).await
    }
    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        self.inner.delete_schedule(name).await
    }
    async fn schedules(
        &self,
        due_by: Option<tasker_core::Timestamp>,
    ) -> Result<Vec<tasker_core::schedule::ScheduleView>> {
        self.inner.schedules(due_by).await
    }
    async fn advance_schedule(
        &self,
        name: &str,
        from: tasker_core::Timestamp,
        to: Option<tasker_core::Timestamp>,
        last_task: Option<TaskId>,
        now: tasker_core::Timestamp,
    ) -> Result<bool> {
        self.inner
            .advance_schedule(name, from, to, last_task, now)
            .await
    }
    async fn step_id(&self, task: TaskId, name: &str) -> Result<StepId> {
        self.inner.step_id(task, name).await
    }
    async fn task(&self, task: TaskId) -> Result<TaskView> {
        self.inner.task(task).await
    }
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskView>> {
        self.inner.list_tasks(filter).await
    }
    async fn transitions(&self, task: TaskId) -> Result<Vec<TransitionView>> {
        self.inner.transitions(task).await
    }
    async fn work_status(
        &self,
        handlers: Option<&[Arc<str>]>,
        now: tasker_core::Timestamp,
    ) -> Result<WorkStatus> {
        self.inner.work_status(handlers, now).await
    }

    async fn ready_by_handler(&self, now: tasker_core::Timestamp) -> Result<Vec<(String, u64)>> {
        self.inner.ready_by_handler(now).await
    }

    async fn stats(&self) -> Result<tasker_core::view::Stats> {
        self.inner.stats().await
    }

    async fn logs(
        &self,
        task: TaskId,
        step: Option<u32>,
    ) -> Result<Vec<tasker_core::logs::LogView>> {
        self.inner.logs(task, step).await
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        limit: usize,
        now: tasker_core::Timestamp,
    ) -> Result<Vec<tasker_core::webhooks::Delivery>> {
        self.inner.claim_deliveries(owner, limit, now).await
    }

    async fn settle_delivery(
        &self,
        id: &str,
        attempt: u32,
        settled: &tasker_core::webhooks::Settlement,
        now: tasker_core::Timestamp,
    ) -> Result<bool> {
        self.inner.settle_delivery(id, attempt, settled, now).await
    }

    async fn webhook_deliveries(
        &self,
        task: TaskId,
    ) -> Result<Vec<tasker_core::webhooks::DeliveryView>> {
        self.inner.webhook_deliveries(task).await
    }
}

/// An engine on a fresh store of `kind` failing what the faults say.
async fn crashing_engine(kind: StoreKind) -> Option<(Engine, Arc<Faults>)> {
    let url = store_url(kind).await?;
    let faults = Arc::new(Faults::default());
    let flag = faults.clone();
    let engine = Engine::builder()
        .url(url)
        .clock(Arc::new(ManualClock::new()))
        .wrap_store(move |inner| {
            Arc::new(Crashing {
                inner,
                faults: flag,
            })
        })
        .build()
        .await
        .unwrap();
    for t in [parent_template(), child_template()] {
        register(&engine, &t).await;
    }
    Some((engine, faults))
}

per_store! {
    async fn tending_settles_a_parent_whose_last_child_ended_in_a_crash(store) {
        let Some((engine, faults)) = crashing_engine(store).await else { return };
        let (parent, children) = started(&engine, json!({"n": 2})).await;
        // The children run; the follow-ups of their ends are lost.
        faults.follow_ups.store(true, Ordering::SeqCst);
        let worker = Worker::builder(engine.clone())
            .handler("double", |_: ClaimedStep| async { Ok::<_, HandlerError>(json!(2)) })
            .handler("square", |_: ClaimedStep| async { Ok::<_, HandlerError>(json!(4)) })
            .handler("label", |_: ClaimedStep| async { Ok::<_, HandlerError>(json!("x")) })
            .build();
        worker.run_until_idle(RUN_LIMIT).await.unwrap();
        for child in &children {
            assert_eq!(status(&engine, *child).await, TaskState::Complete, "{store}");
        }
        assert_eq!(task_view(&engine, parent).await.step("fan_out").unwrap().status, StepState::WaitingForChildren, "{store}");
        // Back up: tending finds the step and completes it.
        faults.follow_ups.store(false, Ordering::SeqCst);
        assert_eq!(engine.tend_children().await.unwrap(), 1, "{store}");
        let fan_out = task_view(&engine, parent).await.step("fan_out").cloned().unwrap();
        assert_eq!(fan_out.status, StepState::Complete, "{store}");
        assert_eq!(fan_out.result, Some(json!([{"square": 4, "label": "x"}, {"square": 4, "label": "x"}])), "{store}");
        assert_eq!(engine.tend_children().await.unwrap(), 0, "{store}: nothing more to do");
    }
}

per_store! {
    async fn tending_cancels_the_children_a_crashed_cancel_left_running(store) {
        let Some((engine, faults)) = crashing_engine(store).await else { return };
        let (parent, children) = started(&engine, json!({"n": 3})).await;
        faults.follow_ups.store(true, Ordering::SeqCst);
        engine.cancel_task(parent).await.unwrap();
        for child in &children {
            assert_eq!(status(&engine, *child).await, TaskState::Pending, "{store}: left running by the crash");
        }
        faults.follow_ups.store(false, Ordering::SeqCst);
        assert_eq!(engine.tend_children().await.unwrap(), 3, "{store}");
        for child in &children {
            assert_eq!(status(&engine, *child).await, TaskState::Cancelled, "{store}");
        }
    }
}

per_store! {
    async fn tending_leaves_the_children_of_a_running_parent_alone(store) {
        let Some(engine) = family(store).await else { return };
        let (parent, children) = started(&engine, json!({"n": 2})).await;
        assert_eq!(engine.tend_children().await.unwrap(), 0, "{store}");
        for child in &children {
            assert_eq!(status(&engine, *child).await, TaskState::Pending, "{store}");
        }
        assert_eq!(status(&engine, parent).await, TaskState::InProgress, "{store}");
    }
}

per_store! {
    async fn a_report_recorded_after_its_children_finished_completes_the_step_at_once(store) {
        let Some((engine, faults)) = crashing_engine(store).await else { return };
        let parent = create(&engine, NewTask::new("family", "parent").context(json!({"n": 2}))).await;
        let step = claim_one(&engine, "fan_out").await;
        let children = || children_of(&json!({"n": 2}));
        faults.reports.store(true, Ordering::SeqCst);
        assert!(engine.report(step.step_id, step.attempt, children()).await.is_err(), "{store}");
        faults.reports.store(false, Ordering::SeqCst);
        // The children run to the end before the report is made again.
        for (name, result) in [("double", json!(2)), ("square", json!(4)), ("label", json!("x"))] {
            for step in engine.claim(&only_handlers(&[name], 10)).await.unwrap() {
                complete(&engine, &step, result.clone()).await;
            }
        }
        engine.report(step.step_id, step.attempt, children()).await.unwrap();
        let fan_out = task_view(&engine, parent).await.step("fan_out").cloned().unwrap();
        assert_eq!(fan_out.status, StepState::Complete, "{store}: settled by the report itself: {:?}", fan_out.error);
        assert_eq!(fan_out.result, Some(json!([{"square": 4, "label": "x"}, {"square": 4, "label": "x"}])), "{store}");
    }
}

per_store! {
    async fn a_step_that_may_not_start_children_starts_none(store) {
        let decider = template("family", "decider").raw("  - name: pick\n    type: decision\n  - name: after\n    depends_on: [pick]\n");
        let Some(engine) = engine_with(store, ManualClock::new(), &[decider, child_template()]).await else { return };
        let task = create(&engine, NewTask::new("family", "decider")).await;
        let step = claim_one(&engine, "pick").await;
        engine.report(step.step_id, step.attempt, children_of(&json!({"n": 2}))).await.unwrap();
        let pick = task_view(&engine, task).await.step("pick").cloned().unwrap();
        assert_eq!(pick.status, StepState::Error, "{store}");
        let error = pick.error.unwrap_or_default();
        assert!(error.contains("returned child tasks"), "{store}: {error}");
        assert_eq!(engine.list_tasks(&TaskFilter::default()).await.unwrap().len(), 1, "{store}: no child was made");
    }
}

per_store! {
    async fn the_children_of_an_attempt_that_was_lost_are_cancelled_once_another_runs(store) {
        let clock = ManualClock::new();
        let url = match store_url(store).await { Some(url) => url, None => return };
        let faults = Arc::new(Faults::default());
        let flag = faults.clone();
        let engine = Engine::builder()
            .url(url)
            .clock(Arc::new(clock.clone()))
            .wrap_store(move |inner| Arc::new(Crashing { inner, faults: flag }))
            .build()
            .await
            .unwrap();
        let retried = template("family", "parent").raw("  - name: fan_out\n    retry: {max_attempts: 3, backoff_base_ms: 0}\n");
        register(&engine, &retried).await;
        register(&engine, &child_template()).await;
        let parent = create(&engine, NewTask::new("family", "parent")).await;
        let first = claim_one(&engine, "fan_out").await;
        // The first attempt's report is lost after its children were made.
        faults.reports.store(true, Ordering::SeqCst);
        assert!(engine.report(first.step_id, first.attempt, children_of(&json!({"n": 2}))).await.is_err());
        faults.reports.store(false, Ordering::SeqCst);
        let old: Vec<TaskId> = engine.list_tasks(&TaskFilter::default()).await.unwrap().iter().map(|t| t.id).filter(|id| *id != parent).collect();
        assert_eq!(old.len(), 2, "{store}");
        // While it may still report, its children are left alone.
        assert_eq!(engine.tend_children().await.unwrap(), 0, "{store}");
        // Its lease runs out; the second attempt runs.
        clock.advance(std::time::Duration::from_secs(3600));
        engine.reclaim_expired().await.unwrap();
        clock.advance(std::time::Duration::from_secs(3600));
        let second = engine.claim(&only_handlers(&["fan_out"], 1)).await.unwrap().pop().expect("fan_out again");
        assert_eq!(second.attempt, 2, "{store}");
        assert_eq!(engine.tend_children().await.unwrap(), 2, "{store}: the first attempt's children");
        for child in &old {
            assert_eq!(status(&engine, *child).await, TaskState::Cancelled, "{store}");
        }
        engine.report(second.step_id, second.attempt, children_of(&json!({"n": 2}))).await.unwrap();
        let waited = task_view(&engine, parent).await.step("fan_out").unwrap().children.clone().unwrap();
        assert!(waited.iter().all(|c| !old.contains(c)), "{store}: new children for the new attempt");
    }
}

per_store! {
    async fn callers_may_neither_use_child_keys_nor_report_children_ids(store) {
        let Some(engine) = family(store).await else { return };
        let keyed = NewTask::new("family", "child").idempotency_key("child:mine");
        assert_err!(engine.create_task(keyed).await, tasker_core::Error::InvalidArgument(_), "{store}");
        let parent = create(&engine, NewTask::new("family", "parent")).await;
        let other = create(&engine, NewTask::new("family", "child")).await;
        let step = claim_one(&engine, "fan_out").await;
        let report = StepReport { step: step.step_id, attempt: step.attempt, outcome: Outcome::Children(vec![other]), logs: Vec::new() };
        let results = engine.report_many(vec![report]).await.unwrap();
        assert!(results[0].is_ok(), "{store}: {results:?}");
        let fan_out = task_view(&engine, parent).await.step("fan_out").cloned().unwrap();
        assert_eq!(fan_out.status, StepState::Error, "{store}: refused for good");
        assert_eq!(status(&engine, other).await, TaskState::Pending, "{store}: the other task is left alone");
    }
}

per_store! {
    async fn purging_keeps_the_finished_children_of_a_parent_that_still_runs(store) {
        let Some(engine) = family(store).await else { return };
        let (parent, children) = started(&engine, json!({"n": 2})).await;
        for name in ["double", "square", "label"] {
            let steps = engine.claim(&only_handlers(&[name], 10)).await.unwrap();
            for step in steps.iter().filter(|s| s.task_id() == children[0]) {
                complete(&engine, step, json!(1)).await;
            }
        }
        assert_eq!(status(&engine, children[0]).await, TaskState::Complete, "{store}");
        let later = tasker_core::clock::add_ms(tasker_core::Clock::now(&ManualClock::new()), 3_600_000_000);
        assert_eq!(engine.purge(later, None).await.unwrap(), 0, "{store}: its parent still reads it");
        engine.cancel_task(parent).await.unwrap();
        assert_eq!(engine.purge(later, None).await.unwrap(), 3, "{store}: the parent and both children");
    }
}
