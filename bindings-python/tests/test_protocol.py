"""The low-level worker protocol: claim, complete, fail, heartbeat, leases, work_status."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
import tasker_core
from conftest import DIAMOND, FAST_RETRY, step, step_of, yaml_template

CLAIM_KEYS = {
    "step_id",
    "task_id",
    "name",
    "handler",
    "namespace",
    "task_name",
    "attempt",
    "max_attempts",
    "context",
    "inputs",
    "lease_expires_at",
    "timeout_ms",
}


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_claim_hands_out_ready_steps_with_their_inputs(engine):
    engine.register_template(DIAMOND)
    task_id = engine.create_task("test", "diamond", context={"order": 7})

    (validate,) = engine.claim("w1", None, 10)
    assert set(validate) >= CLAIM_KEYS
    assert validate["task_id"] == task_id and validate["step_id"].startswith(task_id)
    assert (validate["name"], validate["handler"]) == ("validate", "validate")
    assert (validate["namespace"], validate["task_name"]) == ("test", "diamond")
    assert (validate["attempt"], validate["max_attempts"]) == (1, 3)
    assert validate["context"] == {"order": 7} and validate["inputs"] == {}
    assert validate["timeout_ms"] > 0
    _time(validate["lease_expires_at"])

    assert engine.claim("w1", None, 10) == []  # its children wait for it
    task = engine.task(task_id)
    assert task["status"] == "in_progress"
    assert step_of(task, "validate")["status"] == "in_progress"
    assert step_of(task, "validate")["lease_owner"] == "w1"

    engine.complete(validate["step_id"], 1, {"valid": True})
    children = engine.claim("w1", None, 10)
    assert sorted(c["name"] for c in children) == ["charge", "reserve_stock"]
    for c in children:
        assert c["inputs"] == {"validate": {"valid": True}}
        engine.complete(c["step_id"], c["attempt"], {"from": c["name"]})
    (ship,) = engine.claim("w1", None, 10)
    assert ship["inputs"] == {
        "charge": {"from": "charge"},
        "reserve_stock": {"from": "reserve_stock"},
    }
    engine.complete(ship["step_id"], 1, {"tracking": "T-1"})
    (notify,) = engine.claim("w1", None, 10)
    engine.complete(notify["step_id"], 1, None)

    task = engine.task(task_id)
    assert task["status"] == "complete" and task["completed_at"]
    assert task["progress"]["complete"] == 5 and task["progress"]["percent"] == 100
    assert step_of(task, "ship")["result"] == {"tracking": "T-1"}
    assert all(s["duration_ms"] is not None for s in task["steps"])


def test_claim_respects_the_limit_and_the_handler_filter(engine):
    engine.register_template(
        yaml_template("wide", "a", "b", "c", step("d", handler="other"))
    )
    engine.create_task("test", "wide")
    assert [c["name"] for c in engine.claim("w", ["other"], 10)] == ["d"]
    first = engine.claim("w", ["a", "b", "c"], 2)
    assert len(first) == 2
    rest = engine.claim("w", ["a", "b", "c"], 2)
    assert len(rest) == 1
    assert sorted(c["name"] for c in first + rest) == ["a", "b", "c"]


def test_claim_waits_for_work_made_ready_meanwhile(memory_engine):
    import threading

    memory_engine.register_template(yaml_template("later", "a"))
    timer = threading.Timer(0.1, lambda: memory_engine.create_task("test", "later"))
    timer.start()
    started = time.monotonic()
    claimed = memory_engine.claim("w", None, 1, wait=5.0)
    timer.join()
    assert len(claimed) == 1
    assert time.monotonic() - started < 4.0


def test_a_negative_wait_is_an_invalid_argument(memory_engine):
    with pytest.raises((tasker_core.InvalidArgumentError, ValueError, OverflowError)):
        memory_engine.claim("w", None, 1, wait=-1.0)


def test_heartbeat_extends_the_lease(engine):
    engine.register_template(yaml_template("beating", step("a", timeout_ms=60_000)))
    engine.create_task("test", "beating")
    (a,) = engine.claim("w", None, 1)
    time.sleep(0.01)
    expiry = engine.heartbeat(a["step_id"], a["attempt"])
    assert isinstance(expiry, str)
    assert _time(expiry) > _time(a["lease_expires_at"])


def test_a_retryable_failure_schedules_another_attempt(engine):
    engine.register_template(
        yaml_template("retrying", "a", step("b", "a"), retry=FAST_RETRY)
    )
    task_id = engine.create_task("test", "retrying")
    (a,) = engine.claim("w", None, 1)
    engine.fail(a["step_id"], 1, "gateway busy", retryable=True, retry_after=0.05)
    s = step_of(engine.task(task_id), "a")
    assert s["status"] == "waiting_for_retry" and s["error"] == "gateway busy"
    assert s["next_attempt_at"]
    again = engine.claim("w", None, 1, wait=5.0)
    assert [(c["name"], c["attempt"]) for c in again] == [("a", 2)]
    engine.complete(again[0]["step_id"], 2, {"ok": True})
    s = step_of(engine.task(task_id), "a")
    assert s["status"] == "complete" and s["attempts"] == 2


def test_a_permanent_failure_skips_the_dependents_and_fails_the_task(engine):
    engine.register_template(
        yaml_template(
            "failing",
            "a",
            step("b", "a"),
            step("c", "b"),
            step("cleanup", {"step": "a", "requires_success": False}),
        )
    )
    task_id = engine.create_task("test", "failing")
    (a,) = engine.claim("w", None, 1)
    engine.fail(a["step_id"], 1, "card declined", retryable=False)
    task = engine.task(task_id)
    assert (
        step_of(task, "a")["status"] == "error"
        and step_of(task, "a")["error"] == "card declined"
    )
    assert (
        step_of(task, "b")["status"] == "skipped"
        and step_of(task, "c")["status"] == "skipped"
    )
    # The step that does not require success still runs; then the task has failed.
    (cleanup,) = engine.claim("w", None, 10)
    assert cleanup["name"] == "cleanup" and cleanup["inputs"].get("a") is None
    engine.complete(cleanup["step_id"], 1, {})
    assert engine.task(task_id)["status"] == "error"


def test_the_last_retryable_failure_is_final(engine):
    engine.register_template(
        yaml_template("budget", step("a", retry={**FAST_RETRY, "max_attempts": 2}))
    )
    task_id = engine.create_task("test", "budget")
    for attempt in (1, 2):
        (a,) = engine.claim("w", None, 1, wait=5.0)
        assert a["attempt"] == attempt
        engine.fail(a["step_id"], attempt, f"boom {attempt}")
    task = engine.task(task_id)
    assert task["status"] == "error"
    assert (
        step_of(task, "a")["attempts"] == 2 and step_of(task, "a")["error"] == "boom 2"
    )


def test_a_report_after_the_task_was_cancelled_is_claim_lost(engine):
    engine.register_template(yaml_template("cancelled", "a"))
    task_id = engine.create_task("test", "cancelled")
    (a,) = engine.claim("w", None, 1)
    engine.cancel_task(task_id)
    with pytest.raises(tasker_core.ClaimLostError):
        engine.complete(a["step_id"], 1, {"late": True})
    with pytest.raises(tasker_core.InvalidTransitionError):  # ClaimLostError is one
        engine.fail(a["step_id"], 1, "late")
    with pytest.raises(tasker_core.ClaimLostError):
        engine.heartbeat(a["step_id"], 1)
    assert step_of(engine.task(task_id), "a")["status"] == "cancelled"


def test_a_report_naming_a_stale_attempt_is_claim_lost(engine):
    engine.register_template(yaml_template("stale", step("a", retry=FAST_RETRY)))
    engine.create_task("test", "stale")
    (a,) = engine.claim("w", None, 1)
    engine.fail(a["step_id"], 1, "first")
    (again,) = engine.claim("w", None, 1, wait=5.0)
    with pytest.raises(tasker_core.ClaimLostError):
        engine.complete(a["step_id"], 1, {})
    engine.complete(again["step_id"], 2, {})


def test_an_expired_lease_is_reclaimed_and_the_late_report_refused(engine):
    engine.register_template(
        yaml_template("leased", step("a", timeout_ms=50, retry=FAST_RETRY))
    )
    task_id = engine.create_task("test", "leased")
    (a,) = engine.claim("w1", None, 1)
    time.sleep(0.15)
    assert engine.reclaim_expired() == 1
    with pytest.raises(tasker_core.ClaimLostError):
        engine.complete(a["step_id"], 1, {})
    (again,) = engine.claim("w2", None, 1, wait=5.0)
    assert again["attempt"] == 2
    engine.complete(again["step_id"], 2, {})
    assert engine.task(task_id)["status"] == "complete"
    assert engine.reclaim_expired() == 0


def test_a_result_that_is_not_json_is_an_invalid_argument(engine):
    engine.register_template(yaml_template("unjson", "a"))
    engine.create_task("test", "unjson")
    (a,) = engine.claim("w", None, 1)
    with pytest.raises(tasker_core.InvalidArgumentError, match="JSON"):
        engine.complete(a["step_id"], 1, {"x": object()})
    engine.complete(a["step_id"], 1, {"x": 1})  # the claim is still held


def test_a_negative_retry_after_is_an_invalid_argument(memory_engine):
    memory_engine.register_template(yaml_template("neg", "a"))
    memory_engine.create_task("test", "neg")
    (a,) = memory_engine.claim("w", None, 1)
    with pytest.raises(tasker_core.InvalidArgumentError):
        memory_engine.fail(a["step_id"], 1, "x", retryable=True, retry_after=-1.0)


def test_work_status_counts_ready_running_and_waiting(engine):
    engine.register_template(
        yaml_template(
            "work",
            "a",
            "b",
            step("c", handler="other"),
            retry={**FAST_RETRY, "backoff_base_ms": 60_000, "backoff_max_ms": 60_000},
        )
    )
    assert engine.work_status() == {
        "ready": 0,
        "running": 0,
        "waiting": 0,
        "next_due": None,
    }
    engine.create_task("test", "work")
    assert engine.work_status()["ready"] == 3
    assert engine.work_status(["a", "b"])["ready"] == 2
    (a,) = engine.claim("w", ["a"], 1)
    status = engine.work_status()
    assert (status["ready"], status["running"]) == (2, 1)
    assert status["next_due"]  # the lease's expiry
    engine.fail(a["step_id"], 1, "later")
    status = engine.work_status(["a", "b"])
    assert (status["ready"], status["running"], status["waiting"]) == (1, 0, 1)
    assert _time(status["next_due"])
