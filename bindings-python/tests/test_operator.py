"""Operator verbs: cancel_task, pause_task / resume_task, retry_task, resolve_step."""

from __future__ import annotations

import pytest
import tasker_core
from conftest import FAST_RETRY, step, step_of, yaml_template
from tasker_core import PermanentError, Worker

PIPELINE = yaml_template(
    "pipeline", "a", step("b", "a"), step("c", "b"), retry=FAST_RETRY
)


def test_cancel_task_cancels_the_unfinished_steps(engine):
    engine.register_template(PIPELINE)
    task_id = engine.create_task("test", "pipeline")
    (a,) = engine.claim("w", None, 1)
    engine.complete(a["step_id"], 1, {})
    engine.cancel_task(task_id)
    task = engine.task(task_id)
    assert task["status"] == "cancelled" and task["completed_at"]
    assert [s["status"] for s in task["steps"]] == [
        "complete",
        "cancelled",
        "cancelled",
    ]
    assert engine.claim("w", None, 10) == []
    with pytest.raises(tasker_core.InvalidTransitionError):
        engine.cancel_task(task_id)


def test_a_completed_task_cannot_be_cancelled_or_paused(engine):
    engine.register_template(yaml_template("done", "a"))
    task_id = engine.create_task("test", "done")
    (a,) = engine.claim("w", None, 1)
    engine.complete(a["step_id"], 1, "ok")
    for verb in (
        engine.cancel_task,
        engine.pause_task,
        engine.resume_task,
        engine.retry_task,
    ):
        with pytest.raises(tasker_core.InvalidTransitionError):
            verb(task_id)
    assert engine.task(task_id)["status"] == "complete"


def test_a_paused_task_hands_out_nothing_until_resumed(engine):
    engine.register_template(PIPELINE)
    task_id = engine.create_task("test", "pipeline")
    engine.pause_task(task_id)
    assert engine.task(task_id)["status"] == "paused"
    assert engine.claim("w", None, 10) == []
    with pytest.raises(tasker_core.InvalidTransitionError):
        engine.pause_task(task_id)
    engine.resume_task(task_id)
    assert engine.task(task_id)["status"] != "paused"
    assert [c["name"] for c in engine.claim("w", None, 10)] == ["a"]


def test_a_worker_is_idle_while_its_only_task_is_paused(engine):
    engine.register_template(PIPELINE)
    task_id = engine.create_task("test", "pipeline")
    engine.pause_task(task_id)
    worker = Worker(engine)
    for name in "abc":
        worker.register(name, lambda step: step.name)
    assert worker.run_until_idle(timeout=10) == {
        "completed": 0,
        "failed": 0,
        "lost": 0,
        "released": 0,
        "idle": True,
    }
    engine.resume_task(task_id)
    assert worker.run_until_idle(timeout=30)["completed"] == 3
    assert engine.task(task_id)["status"] == "complete"


def test_retry_task_runs_a_failed_task_again(engine):
    engine.register_template(PIPELINE)
    task_id = engine.create_task("test", "pipeline")
    broken = [True]

    def b(step):
        if broken[0]:
            raise PermanentError("dependency down")
        return "fixed"

    worker = Worker(engine)
    worker.register("a", lambda step: "a")
    worker.register("b", b)
    worker.register("c", lambda step: step.inputs["b"])
    worker.run_until_idle(timeout=30)
    task = engine.task(task_id)
    assert task["status"] == "error"
    assert [s["status"] for s in task["steps"]] == ["complete", "error", "skipped"]

    broken[0] = False
    engine.retry_task(task_id)
    assert engine.task(task_id)["status"] in ("pending", "in_progress")
    assert worker.run_until_idle(timeout=30)["completed"] == 2
    task = engine.task(task_id)
    assert task["status"] == "complete"
    assert step_of(task, "c")["result"] == "fixed"
    assert any(
        t["event"]
        for t in engine.transitions(task_id)
        if t["step"] is None and t["to"] != "error"
    )


def test_resolve_step_supplies_a_result_and_the_dependents_run(engine):
    engine.register_template(PIPELINE)
    task_id = engine.create_task("test", "pipeline")
    (a,) = engine.claim("w", None, 1)
    engine.fail(a["step_id"], 1, "no way", retryable=False)
    assert engine.task(task_id)["status"] == "error"

    engine.resolve_step(task_id, "a", {"by": "operator"})
    task = engine.task(task_id)
    assert step_of(task, "a")["status"] == "resolved_manually"
    assert step_of(task, "a")["result"] == {"by": "operator"}
    (b,) = engine.claim("w", None, 10)
    assert b["name"] == "b" and b["inputs"] == {"a": {"by": "operator"}}


def test_resolve_step_of_a_running_step_makes_its_report_claim_lost(engine):
    engine.register_template(PIPELINE)
    task_id = engine.create_task("test", "pipeline")
    (a,) = engine.claim("w", None, 1)
    engine.resolve_step(task_id, "a", "by hand")
    with pytest.raises(tasker_core.ClaimLostError):
        engine.complete(a["step_id"], 1, "by worker")
    assert step_of(engine.task(task_id), "a")["result"] == "by hand"


def test_resolve_step_of_an_unknown_step_is_not_found(engine):
    engine.register_template(PIPELINE)
    task_id = engine.create_task("test", "pipeline")
    with pytest.raises(tasker_core.NotFoundError, match="nope"):
        engine.resolve_step(task_id, "nope", {})
    with pytest.raises(tasker_core.InvalidArgumentError):
        engine.resolve_step(task_id, "a", {"bad": object()})
