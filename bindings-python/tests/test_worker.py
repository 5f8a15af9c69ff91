"""The Worker: registration, run_until_idle, run/stop, async handlers, failures, Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time

import pytest
import tasker_core
from conftest import DIAMOND, FAST_RETRY, step, step_of, wait_for, yaml_template
from tasker_core import PermanentError, RetryableError, Worker


def _validate(step):
    return {"order": step.context["order"], "valid": True}


def _charge(step):
    return {"charged": True, "order": step.inputs["validate"]["order"]}


def _reserve_stock(step):
    return {"reserved": 1}


def _ship(step):
    assert step.inputs["charge"]["charged"] is True
    return {"tracking": f"TRK-{step.context['order']}"}


def _notify(step):
    return {"notified": True, "shipped": step.inputs.get("ship") is not None}


def diamond_worker(engine, overrides=None, **kwargs) -> Worker:
    """A worker with the handlers of the DIAMOND template, some replaced by ``overrides``."""
    handlers = {
        "validate": _validate,
        "charge": _charge,
        "reserve_stock": _reserve_stock,
        "ship": _ship,
        "notify": _notify,
    }
    handlers.update(overrides or {})
    worker = Worker(engine, **kwargs)
    for name, fn in handlers.items():
        worker.register(name, fn)
    return worker


# -- registration ---------------------------------------------------------------------------


def test_handlers_register_by_decorator_call_and_method(memory_engine):
    worker = Worker(memory_engine)

    @worker.handler("a")
    def a(step):
        return 1

    def b(step):
        return 2

    assert worker.handler("b")(b) is b
    assert worker.register("c", lambda step: 3) is not None

    @worker.handler
    def d(step):
        return 4

    @worker.handler()
    def e(step):
        return 5

    assert a(None) == 1  # the decorator returns the function unchanged
    assert worker.handlers == ("a", "b", "c", "d", "e")


def test_bad_worker_arguments_are_type_and_value_errors(memory_engine):
    with pytest.raises(TypeError, match="engine"):
        Worker("memory:")
    with pytest.raises(TypeError, match="concurrency"):
        Worker(memory_engine, concurrency="4")
    with pytest.raises(TypeError, match="concurrency"):
        Worker(memory_engine, concurrency=2.5)
    with pytest.raises(ValueError, match="concurrency"):
        Worker(memory_engine, concurrency=0)
    with pytest.raises(TypeError, match="worker_id"):
        Worker(memory_engine, worker_id=7)
    with pytest.raises(ValueError, match="poll_interval"):
        Worker(memory_engine, poll_interval=-1)
    worker = Worker(memory_engine)
    with pytest.raises(TypeError, match="callable"):
        worker.register("x", 42)
    with pytest.raises(TypeError, match="name"):
        worker.register(42, lambda step: None)
    with pytest.raises(ValueError, match="empty"):
        worker.handler("")
    worker.register("x", lambda step: None)
    with pytest.raises(ValueError, match="registered already"):
        worker.register("x", lambda step: None)
    with pytest.raises(TypeError, match="timeout"):
        worker.run_until_idle(timeout="soon")


def test_a_worker_without_handlers_refuses_to_run(memory_engine):
    with pytest.raises(RuntimeError, match="no handlers"):
        Worker(memory_engine).run_until_idle(timeout=1)


def test_worker_properties(memory_engine):
    worker = Worker(memory_engine, concurrency=3, worker_id="w-7")
    assert (worker.worker_id, worker.concurrency, worker.engine) == (
        "w-7",
        3,
        memory_engine,
    )
    assert not worker.running
    assert "w-7" in repr(worker)
    assert Worker(memory_engine).worker_id != Worker(memory_engine).worker_id


# -- running --------------------------------------------------------------------------------


def test_run_until_idle_runs_a_workflow_to_the_end(engine):
    engine.register_template(DIAMOND)
    task_id = engine.create_task("test", "diamond", context={"order": 42})
    counts = diamond_worker(engine, concurrency=4).run_until_idle(timeout=30)
    assert counts == {"completed": 5, "failed": 0, "lost": 0, "released": 0, "idle": True}
    task = engine.task(task_id)
    assert task["status"] == "complete"
    assert step_of(task, "ship")["result"] == {"tracking": "TRK-42"}
    assert step_of(task, "notify")["result"] == {"notified": True, "shipped": True}
    assert all(s["attempts"] == 1 for s in task["steps"])


def test_run_until_idle_with_nothing_to_do_returns_idle_at_once(engine):
    worker = Worker(engine)
    worker.register("a", lambda step: None)
    started = time.monotonic()
    assert worker.run_until_idle(timeout=10) == {
        "completed": 0,
        "failed": 0,
        "lost": 0,
        "released": 0,
        "idle": True,
    }
    assert time.monotonic() - started < 2


def test_run_until_idle_ignores_steps_of_other_handlers(engine):
    engine.register_template(
        yaml_template("mixed", "mine", step("theirs", handler="someone_else"))
    )
    task_id = engine.create_task("test", "mixed")
    worker = Worker(engine)
    worker.register("mine", lambda step: "done")
    counts = worker.run_until_idle(timeout=10)
    assert counts["completed"] == 1 and counts["idle"]
    assert step_of(engine.task(task_id), "theirs")["status"] == "pending"


def test_run_until_idle_returns_at_the_timeout(memory_engine):
    memory_engine.register_template(yaml_template("slow", "slow"))
    memory_engine.create_task("test", "slow")
    worker = Worker(memory_engine)

    @worker.handler("slow")
    def slow(step):
        time.sleep(0.5)
        return "late"

    started = time.monotonic()
    counts = worker.run_until_idle(timeout=0.1)
    # The running step finishes and reports before run_until_idle returns.
    assert counts == {"completed": 1, "failed": 0, "lost": 0, "released": 0, "idle": False}
    assert 0.4 < time.monotonic() - started < 5


def test_many_tasks_run_within_the_concurrency_limit(engine):
    engine.register_template(yaml_template("many", "work"))
    ids = [engine.create_task("test", "many", context={"i": i}) for i in range(12)]
    worker = Worker(engine, concurrency=3)
    lock = threading.Lock()
    running = [0]
    peak = [0]
    threads = set()

    @worker.handler("work")
    def work(step):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            threads.add(threading.get_ident())
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return step.context["i"]

    counts = worker.run_until_idle(timeout=30)
    assert counts["completed"] == 12
    assert 2 <= peak[0] <= 3
    assert len(threads) <= 3  # the pool's threads, no thread per step
    assert [engine.task(i)["steps"][0]["result"] for i in ids] == list(range(12))


def test_run_stops_when_stop_is_called_from_another_thread(engine, caplog):
    engine.register_template(DIAMOND)
    worker = diamond_worker(engine, concurrency=2)
    result = {}
    thread = threading.Thread(target=lambda: result.update(worker.run()))
    with caplog.at_level(logging.INFO, logger="tasker_core"):
        thread.start()
        wait_for(lambda: worker.running)
        # Work created while the worker runs is picked up.
        ids = [
            engine.create_task("test", "diamond", context={"order": n})
            for n in range(3)
        ]
        wait_for(lambda: all(engine.task(i)["status"] == "complete" for i in ids))
        worker.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert result == {"completed": 15, "failed": 0, "lost": 0, "released": 0, "idle": False}
    assert any("stopped" in r.getMessage() for r in caplog.records)
    assert not worker.running


def test_a_stop_before_run_makes_that_run_return_at_once(memory_engine):
    worker = Worker(memory_engine)
    worker.register("a", lambda step: None)
    worker.stop()
    started = time.monotonic()
    assert worker.run()["completed"] == 0
    assert time.monotonic() - started < 2
    # The request was used up: the next run works (and ends by idleness).
    assert worker.run_until_idle(timeout=5)["idle"]


def test_a_worker_runs_one_loop_at_a_time(memory_engine):
    worker = Worker(memory_engine)
    worker.register("a", lambda step: None)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_for(lambda: worker.running)
        with pytest.raises(RuntimeError, match="running already"):
            worker.run_until_idle(timeout=1)
    finally:
        worker.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def sigint_raises():
    """Python's own SIGINT handler, as in an interactive process (a background job of a
    non-interactive shell starts with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _run_interrupted(worker, interrupts, caplog):
    """Runs ``worker.run()`` in the main thread while ``interrupts`` (a function) sends Ctrl-C.

    Should the run ignore the interrupts, it is stopped after a while and the test fails.
    """
    ignored = []

    def drive() -> None:
        interrupts()
        deadline = time.monotonic() + 10
        while worker.running and time.monotonic() < deadline:
            time.sleep(0.05)
        if worker.running:
            ignored.append(True)
            worker.stop()

    interrupter = threading.Thread(target=drive)
    interrupter.start()
    try:
        with caplog.at_level(logging.INFO, logger="tasker_core"):
            counts = worker.run()
    except (
        KeyboardInterrupt
    ):  # pragma: no cover - the failure these tests guard against
        pytest.fail("run() let KeyboardInterrupt through")
    finally:
        interrupter.join()
    assert not ignored, "run() ignored Ctrl-C"
    return counts


def test_ctrl_c_stops_run_after_the_running_steps_report(
    memory_engine, caplog, sigint_raises
):
    memory_engine.register_template(
        yaml_template("interrupted", "long", step("next", "long"))
    )
    task_id = memory_engine.create_task("test", "interrupted")
    worker = Worker(memory_engine, concurrency=1)
    started = threading.Event()

    @worker.handler("long")
    def long(step):
        started.set()
        time.sleep(0.5)
        return {"finished": True}

    worker.register("next", lambda step: "should not run")

    def interrupt() -> None:
        if started.wait(10):
            _ctrl_c()

    counts = _run_interrupted(worker, interrupt, caplog)
    assert counts["completed"] == 1 and counts["idle"] is False
    task = memory_engine.task(task_id)
    # The running step finished and reported; its child, ready since, was not claimed.
    assert [s["status"] for s in task["steps"]] == ["complete", "pending"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("interrupted" in m for m in messages)
    assert any("stopped" in m for m in messages)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_second_ctrl_c_stops_waiting_for_the_running_steps(
    memory_engine, caplog, sigint_raises
):
    memory_engine.register_template(yaml_template("abandoned", "stuck"))
    task_id = memory_engine.create_task("test", "abandoned")
    worker = Worker(memory_engine)
    started = threading.Event()
    release = threading.Event()

    @worker.handler("stuck")
    def stuck(step):
        started.set()
        release.wait(10)
        return "eventually"

    def interrupt_twice() -> None:
        if started.wait(10):
            _ctrl_c()
            time.sleep(0.3)
            _ctrl_c()

    began = time.monotonic()
    counts = _run_interrupted(worker, interrupt_twice, caplog)
    assert time.monotonic() - began < 5
    assert counts["completed"] == 0
    assert any("interrupted again" in r.getMessage() for r in caplog.records)
    # The second Ctrl-C released the step at once: pending again, the attempt not counted.
    assert counts["released"] == 1
    step = memory_engine.task(task_id)["steps"][0]
    assert (step["status"], step["attempts"]) == ("pending", 0)
    # The handler returns later: its result is refused (and logged), the step stays pending.
    release.set()
    wait_for(lambda: any("given back" in r.getMessage() for r in caplog.records))
    assert memory_engine.task(task_id)["steps"][0]["status"] == "pending"


def test_ctrl_c_under_an_application_sigint_handler_still_stops_cleanly(
    memory_engine, caplog
):
    memory_engine.register_template(yaml_template("own_handler", "long"))
    task_id = memory_engine.create_task("test", "own_handler")
    worker = Worker(memory_engine)
    started = threading.Event()

    @worker.handler("long")
    def long(step):
        started.set()
        time.sleep(0.3)
        return "done"

    def application_handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, application_handler)
    try:
        counts = _run_interrupted(
            worker, lambda: started.wait(10) and _ctrl_c(), caplog
        )
        assert signal.getsignal(signal.SIGINT) is application_handler  # left alone
    finally:
        signal.signal(signal.SIGINT, previous)
    assert counts["completed"] == 1
    assert memory_engine.task(task_id)["status"] == "complete"


# -- handler outcomes -----------------------------------------------------------------------


def test_async_handlers_run_on_the_workers_event_loop(engine):
    engine.register_template(DIAMOND)
    task_ids = [
        engine.create_task("test", "diamond", context={"order": n}) for n in range(3)
    ]
    loops = set()
    threads = set()

    async def charge(step):
        loops.add(id(asyncio.get_running_loop()))
        threads.add(threading.current_thread().name)
        await asyncio.sleep(0.05)
        return {"charged": True, "order": step.inputs["validate"]["order"]}

    worker = diamond_worker(engine, {"charge": charge}, concurrency=6)
    counts = worker.run_until_idle(timeout=30)
    assert counts["completed"] == 15 and counts["failed"] == 0
    assert all(engine.task(t)["status"] == "complete" for t in task_ids)
    assert all(step_of(engine.task(t), "charge")["result"]["charged"] for t in task_ids)
    assert (
        len(loops) == 1 and len(threads) == 1
    )  # one event loop, on one thread, for all


def test_a_sync_handler_may_return_an_awaitable(memory_engine):
    memory_engine.register_template(yaml_template("awaitable", "a"))
    task_id = memory_engine.create_task("test", "awaitable")

    async def later(value):
        await asyncio.sleep(0)
        return value

    worker = Worker(memory_engine)
    worker.register("a", lambda step: later({"awaited": True}))
    assert worker.run_until_idle(timeout=30)["completed"] == 1
    assert memory_engine.task(task_id)["steps"][0]["result"] == {"awaited": True}


def test_an_async_handler_can_fail(memory_engine):
    memory_engine.register_template(
        yaml_template("async_fail", step("a", retry=FAST_RETRY))
    )
    task_id = memory_engine.create_task("test", "async_fail")
    worker = Worker(memory_engine)

    @worker.handler("a")
    async def a(step):
        await asyncio.sleep(0)
        if step.attempt == 1:
            raise RetryableError("not yet", retry_after=0.01)
        if step.attempt == 2:
            raise ValueError("still not")
        return "third time"

    counts = worker.run_until_idle(timeout=30)
    assert (counts["completed"], counts["failed"]) == (1, 2)
    s = step_of(memory_engine.task(task_id), "a")
    assert (s["status"], s["attempts"], s["result"]) == ("complete", 3, "third time")


def test_an_async_handler_raising_system_exit_fails_its_attempt_and_the_worker_goes_on(memory_engine):
    memory_engine.register_template(
        yaml_template("async_exit", step("a", retry=FAST_RETRY))
    )
    task_id = memory_engine.create_task("test", "async_exit")
    worker = Worker(memory_engine, concurrency=1)

    @worker.handler("a")
    async def a(step):
        if step.attempt == 1:
            sys.exit(3)
        if step.attempt == 2:
            raise KeyboardInterrupt
        return "after both"

    # Before: asyncio re-raised them out of its loop's thread, and the worker hung.
    counts = worker.run_until_idle(timeout=30)
    assert (counts["completed"], counts["failed"]) == (1, 2)
    s = step_of(memory_engine.task(task_id), "a")
    assert (s["status"], s["attempts"], s["result"]) == ("complete", 3, "after both")


def test_an_exception_escaping_a_run_lets_its_running_steps_go(memory_engine):
    memory_engine.register_template(yaml_template("escape", step("a")))
    task_id = memory_engine.create_task("test", "escape")
    worker = Worker(memory_engine, concurrency=1)
    started, release = threading.Event(), threading.Event()

    @worker.handler("a")
    def a(step):
        started.set()
        release.wait(10)
        return "late"

    def escape(*_):
        raise SystemExit("the application exits")

    previous = signal.signal(signal.SIGALRM, escape)
    try:
        threading.Thread(target=lambda: started.wait(10) and signal.setitimer(
            signal.ITIMER_REAL, 0.05), daemon=True).start()
        with pytest.raises(SystemExit):
            worker.run()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        release.set()
    # Let go at once, not held until its lease runs out (the session used to go on claiming).
    wait_for(lambda: step_of(memory_engine.task(task_id), "a")["status"] == "pending", timeout=10)


def test_a_retry_after_past_a_year_is_capped_not_refused(memory_engine):
    memory_engine.register_template(
        yaml_template("far", step("a", retry={"max_attempts": 2, "backoff_base_ms": 10, "backoff_max_ms": 60000}))
    )
    task_id = memory_engine.create_task("test", "far")
    worker = Worker(memory_engine, concurrency=1)

    @worker.handler("a")
    def a(step):
        raise RetryableError("come back much later", retry_after=4e7)

    counts = worker.run_until_idle(timeout=5)
    assert counts["failed"] == 1
    s = step_of(memory_engine.task(task_id), "a")
    assert (s["status"], s["attempts"]) == ("waiting_for_retry", 1)


def test_an_async_handler_past_its_timeout_is_cancelled_and_retried(memory_engine):
    memory_engine.register_template(
        yaml_template(
            "async_slow",
            step("a", timeout_ms=200, retry={**FAST_RETRY, "max_attempts": 2}),
        )
    )
    task_id = memory_engine.create_task("test", "async_slow")
    worker = Worker(memory_engine)
    cancelled = []

    @worker.handler("a")
    async def a(step):
        if step.attempt == 1:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append(step.attempt)
                raise
        return "quick"

    started = time.monotonic()
    counts = worker.run_until_idle(timeout=30)
    assert time.monotonic() - started < 10
    assert (counts["completed"], counts["failed"], counts["lost"]) == (1, 1, 0)
    assert cancelled == [1]
    s = step_of(memory_engine.task(task_id), "a")
    assert s["status"] == "complete" and s["attempts"] == 2


def test_a_plain_exception_is_retried_and_logged_with_its_traceback(engine, caplog):
    engine.register_template(
        yaml_template("flaky", step("a", retry={**FAST_RETRY, "max_attempts": 2}))
    )
    task_id = engine.create_task("test", "flaky")
    worker = Worker(engine)

    @worker.handler("a")
    def a(step):
        if step.attempt == 1:
            raise ZeroDivisionError("division by zero")
        return {"attempt": step.attempt}

    with caplog.at_level(logging.INFO, logger="tasker_core"):
        counts = worker.run_until_idle(timeout=30)
    assert (counts["completed"], counts["failed"]) == (1, 1)
    s = step_of(engine.task(task_id), "a")
    assert (
        s["status"] == "complete"
        and s["attempts"] == 2
        and s["result"] == {"attempt": 2}
    )
    failure = [
        r
        for r in caplog.records
        if r.exc_info and "ZeroDivisionError" in r.getMessage()
    ]
    assert failure, "the handler's traceback is logged"
    retried = [
        t
        for t in engine.transitions(task_id)
        if t["step"] == "a" and t["to"] == "error"
    ]
    assert retried and "ZeroDivisionError('division by zero')" in (
        retried[0]["reason"] or ""
    )


def test_retryable_error_with_retry_after(engine):
    engine.register_template(
        yaml_template(
            "busy",
            step(
                "a",
                retry={
                    "max_attempts": 3,
                    "backoff_base_ms": 60_000,
                    "backoff_max_ms": 60_000,
                },
            ),
        )
    )
    task_id = engine.create_task("test", "busy")
    worker = Worker(engine)

    @worker.handler("a")
    def a(step):
        if step.attempt == 1:
            raise RetryableError("gateway busy", retry_after=0.01)
        return "charged"

    started = time.monotonic()
    counts = worker.run_until_idle(timeout=30)
    # retry_after replaced the one-minute backoff.
    assert time.monotonic() - started < 10
    assert (counts["completed"], counts["failed"]) == (1, 1)
    s = step_of(engine.task(task_id), "a")
    assert (s["status"], s["attempts"], s["result"]) == ("complete", 2, "charged")


def test_a_permanent_error_fails_the_task_and_skips_the_dependents(engine):
    engine.register_template(DIAMOND)
    task_id = engine.create_task("test", "diamond", context={"order": 1})

    def charge(step):
        raise PermanentError("card declined")

    worker = diamond_worker(engine, {"charge": charge})

    counts = worker.run_until_idle(timeout=30)
    task = engine.task(task_id)
    assert task["status"] == "error"
    charge_view = step_of(task, "charge")
    assert (charge_view["status"], charge_view["attempts"], charge_view["error"]) == (
        "error",
        1,
        "card declined",
    )
    assert step_of(task, "ship")["status"] == "skipped"
    # notify does not require ship's success: it ran and saw no shipment.
    assert step_of(task, "notify")["result"] == {"notified": True, "shipped": False}
    assert counts == {"completed": 3, "failed": 1, "lost": 0, "released": 0, "idle": True}


def test_a_result_that_is_not_json_fails_the_step_for_good(engine):
    engine.register_template(
        yaml_template("unserialisable", step("a", retry=FAST_RETRY))
    )
    task_id = engine.create_task("test", "unserialisable")
    worker = Worker(engine)
    worker.register("a", lambda step: object())
    counts = worker.run_until_idle(timeout=30)
    assert (counts["completed"], counts["failed"]) == (0, 1)
    s = step_of(engine.task(task_id), "a")
    assert s["status"] == "error" and s["attempts"] == 1
    assert s["error"].startswith("result is not JSON-serialisable: ")
    assert engine.task(task_id)["status"] == "error"


def test_a_report_on_a_lost_claim_is_counted(memory_engine, caplog):
    memory_engine.register_template(yaml_template("lost", "a"))
    task_id = memory_engine.create_task("test", "lost")
    worker = Worker(memory_engine)

    @worker.handler("a")
    def a(step):
        memory_engine.cancel_task(step.task_id)  # the claim is gone before the report
        return "too late"

    with caplog.at_level(logging.WARNING, logger="tasker_core"):
        counts = worker.run_until_idle(timeout=30)
    assert counts == {"completed": 0, "failed": 0, "lost": 1, "released": 0, "idle": True}
    assert memory_engine.task(task_id)["status"] == "cancelled"


def test_a_handler_receives_a_read_only_step(memory_engine):
    memory_engine.register_template(yaml_template("fields", "a", step("b", "a")))
    task_id = memory_engine.create_task("test", "fields", context={"k": "v"})
    seen = []
    worker = Worker(memory_engine)
    worker.register("a", lambda step: {"from": "a"})
    worker.register("b", seen.append)
    worker.run_until_idle(timeout=30)
    (s,) = seen
    assert isinstance(s, tasker_core.Step)
    assert (s.task_id, s.name, s.handler, s.attempt, s.max_attempts) == (
        task_id,
        "b",
        "b",
        1,
        3,
    )
    assert (s.namespace, s.task_name, s.context, s.inputs) == (
        "test",
        "fields",
        {"k": "v"},
        {"a": {"from": "a"}},
    )
    assert s.step_id.startswith(task_id) and s.timeout_ms and s.lease_expires_at
    with pytest.raises(AttributeError):
        s.name = "other"  # type: ignore[misc]


def test_a_closed_engine_ends_the_run_with_store_error(memory_engine):
    worker = Worker(memory_engine)
    worker.register("a", lambda step: None)
    memory_engine.close()
    with pytest.raises(tasker_core.StoreError):
        worker.run_until_idle(timeout=5)


def test_no_worker_threads_are_left_behind(memory_engine):
    memory_engine.register_template(yaml_template("threads", "a", "b"))
    memory_engine.create_task("test", "threads")
    before = threading.active_count()
    worker = Worker(memory_engine, concurrency=4)
    worker.register("a", lambda step: None)

    @worker.handler("b")
    async def b(step):
        return None

    worker.run_until_idle(timeout=30)
    assert threading.active_count() == before
