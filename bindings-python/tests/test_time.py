"""Time from Python: tasks that run later (``run_at`` / ``delay``), template deadlines, and
purging finished tasks."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
import tasker_core

from conftest import step_of, yaml_template

CHAIN = yaml_template("chain", "a", {"name": "b", "depends_on": ["a"]}, namespace="py_time")


def test_a_delayed_task_runs_nothing_before_its_start(engine):
    engine.register_template(CHAIN)
    later = engine.create_task("py_time", "chain", delay=timedelta(hours=1))
    at = datetime.now(timezone.utc) + timedelta(minutes=30)
    also_later = engine.create_task("py_time", "chain", run_at=at.isoformat())
    assert engine.claim("w", None, 10) == []
    a = step_of(engine.task(later), "a")
    assert a["status"] == "pending" and a["next_attempt_at"] is not None
    assert engine.work_status()["waiting"] == 2
    assert step_of(engine.task(also_later), "a")["next_attempt_at"].startswith(
        at.strftime("%Y-%m-%dT%H:%M"))
    # A start in the past, or a naive datetime (UTC), runs at once.
    now = engine.create_task("py_time", "chain", run_at=datetime.utcnow() - timedelta(seconds=1))
    assert [s["task_id"] for s in engine.claim("w", None, 10)] == [now]


def test_bad_starts_are_refused(engine):
    engine.register_template(CHAIN)
    with pytest.raises(tasker_core.InvalidArgumentError, match="not both"):
        engine.create_task("py_time", "chain", run_at="2030-01-01T00:00:00Z", delay=5)
    with pytest.raises(tasker_core.InvalidArgumentError, match="RFC 3339"):
        engine.create_task("py_time", "chain", run_at="tomorrow")
    with pytest.raises(tasker_core.InvalidArgumentError, match="delay"):
        engine.create_task("py_time", "chain", delay=-1)
    with pytest.raises(TypeError):
        engine.create_task("py_time", "chain", run_at=12)
    [t] = engine.create_tasks([{"namespace": "py_time", "name": "chain", "delay": 60}])
    assert step_of(engine.task(t), "a")["next_attempt_at"] is not None


def test_a_deadline_fails_a_task_that_runs_too_long(engine):
    engine.register_template(CHAIN.replace("steps:", "deadline_ms: 200\nsteps:"))
    task = engine.create_task("py_time", "chain")
    assert engine.task(task)["deadline_at"] is not None
    [a] = engine.claim("w", None, 1)
    time.sleep(0.3)
    engine.reclaim_expired()
    view = engine.task(task)
    assert view["status"] == "error"
    assert step_of(view, "a")["error"] == "deadline exceeded"
    assert step_of(view, "b")["status"] == "cancelled"
    with pytest.raises(tasker_core.ClaimLostError):
        engine.complete(a["step_id"], a["attempt"], 1)


def test_purge_deletes_finished_tasks(engine):
    engine.register_template(CHAIN)
    done = engine.create_task("py_time", "chain", idempotency_key="once")
    running = engine.create_task("py_time", "chain")
    engine.cancel_task(done)
    with pytest.raises(tasker_core.InvalidArgumentError):
        engine.purge(datetime.now(timezone.utc), statuses=["pending"])
    assert engine.purge(datetime.now(timezone.utc) - timedelta(hours=1)) == 0
    assert engine.purge(datetime.now(timezone.utc) + timedelta(seconds=1), statuses=["cancelled"]) == 1
    with pytest.raises(tasker_core.NotFoundError):
        engine.task(done)
    assert engine.task(running)["status"] == "pending"
    assert engine.create_task("py_time", "chain", idempotency_key="once") != done
