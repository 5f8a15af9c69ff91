"""Durable cron schedules from Python: each tick makes one task; a running worker fires them."""

from __future__ import annotations

import threading
import time

import pytest
import tasker_core

from conftest import wait_for, yaml_template

JOB = yaml_template("job", "run", namespace="py_sched")


def test_a_schedule_makes_a_task_per_tick(engine):
    engine.register_template(JOB)
    view = engine.schedule("every_second", "* * * * * *", "py_sched", "job",
                           context={"from": "cron"}, timezone="Europe/Paris", overlap="allow")
    assert view["name"] == "every_second" and view["next_at"] is not None
    assert [s["name"] for s in engine.schedules()] == ["every_second"]
    time.sleep(1.1)
    assert engine.fire_schedules() >= 1
    made = engine.list_tasks(namespace="py_sched")
    assert made and all(t["context"] == {"from": "cron"} for t in made)
    assert made[0]["idempotency_key"].startswith("schedule:every_second:")
    assert engine.unschedule("every_second") is True
    assert engine.unschedule("every_second") is False
    assert engine.schedules() == []


def test_bad_schedules_are_refused(engine):
    engine.register_template(JOB)
    with pytest.raises(tasker_core.InvalidArgumentError, match="cron expression"):
        engine.schedule("s", "every minute", "py_sched", "job")
    with pytest.raises(tasker_core.InvalidArgumentError, match="time zone"):
        engine.schedule("s", "* * * * *", "py_sched", "job", timezone="Mars/Base")
    with pytest.raises(tasker_core.InvalidArgumentError, match="overlap"):
        engine.schedule("s", "* * * * *", "py_sched", "job", overlap="sometimes")
    with pytest.raises(tasker_core.NotFoundError):
        engine.schedule("s", "* * * * *", "py_sched", "nope")


def test_a_running_worker_fires_the_ticks(engine):
    engine.register_template(JOB)
    worker = tasker_core.Worker(engine, concurrency=2)
    ran = []

    @worker.handler("run")
    def run(step):
        ran.append(step.task_id)
        return {"ok": True}

    engine.schedule("tick", "* * * * * *", "py_sched", "job", overlap="allow")
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: len(ran) >= 2, timeout=10)
    finally:
        worker.stop()
        thread.join(timeout=10)
    done = engine.list_tasks(status="complete", namespace="py_sched")
    assert len(done) >= 2
