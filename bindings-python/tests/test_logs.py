"""Step logs from Python: ``step.log`` and the ``logging`` records a handler emits (sync or
async) are kept per attempt, written with the outcome and read with ``Engine.logs``; the
application's logging setup is left as it was."""

from __future__ import annotations

import asyncio
import logging

import pytest

from conftest import FAST_RETRY, step, yaml_template
import tasker_core
from tasker_core import RetryableError, Worker

app = logging.getLogger("app.handlers")


@pytest.fixture(autouse=True)
def _app_logs_at_info():
    """The application logs its handlers at INFO (records below a logger's level are never
    made, so never captured)."""
    before = app.level
    app.setLevel(logging.INFO)
    yield
    app.setLevel(before)


def _lines(engine, task_id, step_name=None):
    return [(l["step"], l["attempt"], l["level"], l["message"])
            for l in engine.logs(task_id, step_name)]


def test_step_log_and_logging_in_sync_and_async_handlers_are_kept_per_attempt(engine):
    engine.register_template(
        yaml_template("logged", "charge", step("notify", "charge"), retry=FAST_RETRY))
    task = engine.create_task("test", "logged")
    root_handlers = list(logging.getLogger().handlers)

    def charge(step):
        step.log("charging", "info")
        app.info("card %s", "visa")
        if step.attempt == 1:
            try:
                raise ValueError("declined")
            except ValueError:
                app.exception("the card was declined")
            raise RetryableError("declined")
        app.debug("below the logger's level: never made")
        assert step.log("done", level="debug")
        return {"charged": True}

    async def notify(step):
        await asyncio.sleep(0)
        app.warning("mail server slow")
        step.log("sent")
        return "sent"

    worker = Worker(engine, concurrency=2)
    worker.register("charge", charge)
    worker.register("notify", notify)
    counts = worker.run_until_idle(timeout=60)
    assert counts["completed"] == 2 and counts["idle"]

    charge_lines = _lines(engine, task, "charge")
    assert [l[:3] for l in charge_lines] == [
        ("charge", 1, "info"), ("charge", 1, "info"), ("charge", 1, "error"),
        ("charge", 2, "info"), ("charge", 2, "info"), ("charge", 2, "debug"),
    ]
    assert [l[3] for l in charge_lines if l[1] == 2] == ["charging", "card visa", "done"]
    # logger.exception keeps the traceback with the message.
    declined = charge_lines[2][3]
    assert declined.startswith("the card was declined\nTraceback") and "ValueError: declined" in declined
    assert _lines(engine, task, "notify") == [
        ("notify", 1, "warn", "mail server slow"), ("notify", 1, "info", "sent")]
    every = engine.logs(task)
    assert [l["step"] for l in every] == ["charge"] * 6 + ["notify"] * 2
    assert all(set(l) == {"step", "step_index", "attempt", "at", "level", "message"} for l in every)
    # The worker's own records (logger "tasker_core") are not the step's, and the
    # application's handlers are untouched.
    assert not any("failed, retryable" in l["message"] for l in every)
    assert logging.getLogger().handlers == root_handlers
    # Outside a handler nothing is captured.
    app.warning("after the run")
    assert len(engine.logs(task)) == 8


def test_logs_of_unknown_tasks_steps_and_levels_are_refused(engine):
    engine.register_template(yaml_template("quiet", "only"))
    task = engine.create_task("test", "quiet")
    refused = []

    def only(step):
        with pytest.raises(tasker_core.InvalidArgumentError, match="loud"):
            step.log("x", "loud")
        refused.append(True)
        return 1

    worker = Worker(engine, concurrency=1)
    worker.register("only", only)
    worker.run_until_idle(timeout=30)
    assert refused == [True]
    assert engine.logs(task) == []
    with pytest.raises(tasker_core.NotFoundError):
        engine.logs(task, "nope")
    with pytest.raises(tasker_core.NotFoundError):
        engine.logs("01900000-0000-7000-8000-000000000000")


def test_a_long_chatty_attempt_keeps_its_latest_lines_bounded(engine):
    engine.register_template(yaml_template("chatty", "talk"))
    task = engine.create_task("test", "chatty")

    def talk(step):
        for i in range(120):
            app.info("line %d", i)
        app.info("x" * 5000)
        return None

    worker = Worker(engine, concurrency=1)
    worker.register("talk", talk)
    worker.run_until_idle(timeout=30)
    lines = engine.logs(task)
    assert len(lines) == 100
    assert lines[0]["message"] == "22 earlier lines dropped"
    assert lines[1]["message"] == "line 22"
    assert len(lines[-1]["message"].encode()) <= 1024 and lines[-1]["message"].endswith("…")
