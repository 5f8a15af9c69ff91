"""Opening and closing engines, the package's surface, docstrings, the GIL."""

from __future__ import annotations

import pydoc
import threading
import time
import uuid

import pytest
import tasker_core
from conftest import yaml_template


def test_engine_opens_on_memory_and_on_a_sqlite_file(engine):
    assert engine.closed is False
    summary = engine.register_template(yaml_template("one", "only"))
    task_id = engine.create_task("test", "one")
    assert engine.task(task_id)["status"] == "pending"
    assert summary["steps"] == ["only"]


def test_sqlite_engine_keeps_tasks_across_reopening(sqlite_url):
    with tasker_core.Engine(sqlite_url) as first:
        first.register_template(yaml_template("kept", "only"))
        task_id = first.create_task("test", "kept", context={"n": 1})
    with tasker_core.Engine(sqlite_url) as second:
        assert second.task(task_id)["context"] == {"n": 1}


def test_engine_without_a_url_opens_tasker_db_in_the_working_directory(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with tasker_core.Engine() as engine:
        engine.register_template(yaml_template("default", "only"))
        engine.create_task("test", "default")
    assert (tmp_path / "tasker.db").exists()


def test_engine_is_a_context_manager_that_closes_it():
    with tasker_core.Engine("memory:") as engine:
        assert isinstance(engine, tasker_core.Engine)
        assert not engine.closed
    assert engine.closed


def test_context_manager_closes_on_an_exception_and_lets_it_through():
    with pytest.raises(ZeroDivisionError), tasker_core.Engine("memory:") as engine:
        raise ZeroDivisionError
    assert engine.closed


def test_an_unknown_store_url_is_an_invalid_argument():
    with pytest.raises(tasker_core.InvalidArgumentError, match="nosuchdb"):
        tasker_core.Engine("nosuchdb://x")


def test_a_url_that_is_not_a_str_is_a_type_error():
    with pytest.raises(TypeError):
        tasker_core.Engine(42)


def test_a_closed_engine_raises_store_error_on_every_call(memory_engine):
    memory_engine.register_template(yaml_template("closing", "only"))
    task_id = memory_engine.create_task("test", "closing")
    memory_engine.close()
    assert memory_engine.closed
    step_id = f"{task_id}/0"
    calls = [
        lambda e: e.register_template(
            yaml_template("closing", "only", version="2.0.0")
        ),
        lambda e: e.create_task("test", "closing"),
        lambda e: e.claim("w", None, 1),
        lambda e: e.complete(step_id, 1, {}),
        lambda e: e.fail(step_id, 1, "x"),
        lambda e: e.heartbeat(step_id, 1),
        lambda e: e.task(task_id),
        lambda e: e.list_tasks(),
        lambda e: e.transitions(task_id),
        lambda e: e.graph(task_id),
        lambda e: e.cancel_task(task_id),
        lambda e: e.pause_task(task_id),
        lambda e: e.resume_task(task_id),
        lambda e: e.retry_task(task_id),
        lambda e: e.resolve_step(task_id, "only", {}),
        lambda e: e.subscribe("*"),
        lambda e: e.work_status(),
        lambda e: e.reclaim_expired(),
        lambda e: e.migrate(),
    ]
    for call in calls:
        with pytest.raises(tasker_core.StoreError, match="closed") as raised:
            call(memory_engine)
        assert raised.value.kind == "closed"
    memory_engine.close()  # closing twice is harmless


def test_migrate_is_idempotent(engine):
    engine.migrate()
    engine.migrate()


def test_the_error_hierarchy():
    for cls in (
        tasker_core.TemplateError,
        tasker_core.NotFoundError,
        tasker_core.InvalidTransitionError,
        tasker_core.StoreError,
        tasker_core.InvalidArgumentError,
    ):
        assert issubclass(cls, tasker_core.TaskerError)
    assert issubclass(tasker_core.ClaimLostError, tasker_core.InvalidTransitionError)
    assert issubclass(tasker_core.TaskerError, Exception)
    # Handler signals are not engine errors.
    assert not issubclass(tasker_core.RetryableError, tasker_core.TaskerError)
    assert not issubclass(tasker_core.PermanentError, tasker_core.TaskerError)


def test_handler_signals_carry_their_message_and_delay():
    e = tasker_core.RetryableError("gateway busy", retry_after=2)
    assert (
        str(e) == "gateway busy"
        and e.message == "gateway busy"
        and e.retry_after == 2.0
    )
    assert tasker_core.RetryableError("x").retry_after is None
    assert str(tasker_core.PermanentError("card declined")) == "card declined"
    with pytest.raises(ValueError):
        tasker_core.RetryableError("x", retry_after=-1)
    with pytest.raises(TypeError):
        tasker_core.RetryableError("x", retry_after="soon")


def test_step_is_read_only():
    s = tasker_core.Step(task_id="t", step_id="t/0", name="a", handler="a")
    with pytest.raises(AttributeError):
        s.attempt = 2  # type: ignore[misc]


def test_the_package_exports_the_public_names():
    for name in tasker_core.__all__:
        assert hasattr(tasker_core, name), name
    assert isinstance(tasker_core.__version__, str) and tasker_core.__version__


def test_help_has_docstrings_and_signatures():
    assert tasker_core.Engine.__doc__ and tasker_core.Engine.__doc__.strip()
    assert (
        tasker_core.Engine.create_task.__doc__
        and tasker_core.Engine.create_task.__doc__.strip()
    )
    signature = tasker_core.Engine.create_task.__text_signature__
    assert signature and "namespace" in signature and "idempotency_key" in signature
    for verb in (
        "register_template",
        "claim",
        "complete",
        "fail",
        "heartbeat",
        "task",
        "list_tasks",
        "transitions",
        "graph",
        "cancel_task",
        "pause_task",
        "resume_task",
        "retry_task",
        "resolve_step",
        "subscribe",
        "work_status",
    ):
        assert getattr(tasker_core.Engine, verb).__doc__, verb
    assert tasker_core.Subscription.__doc__
    text = pydoc.render_doc(tasker_core.Engine, renderer=pydoc.plaintext)
    assert "create_task(" in text and "idempotency_key" in text
    assert tasker_core.Worker.__doc__ and tasker_core.Worker.run_until_idle.__doc__


def test_claim_releases_the_gil_while_it_waits(memory_engine):
    counter = [0]
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            counter[0] += 1

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        time.sleep(0.05)
        before = counter[0]
        started = time.monotonic()
        claimed = memory_engine.claim("w", ["nothing-is-ready"], 1, wait=0.5)
        waited = time.monotonic() - started
        during = counter[0] - before
    finally:
        stop.set()
        thread.join()
    assert claimed == []
    assert waited >= 0.4
    # Holding the GIL would have frozen the busy thread for the whole wait.
    assert during > 10_000, during


def test_subscription_next_releases_the_gil(memory_engine):
    sub = memory_engine.subscribe("*")
    counter = [0]
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            counter[0] += 1

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        time.sleep(0.05)
        before = counter[0]
        assert sub.next(timeout=0.3) is None
        during = counter[0] - before
    finally:
        stop.set()
        thread.join()
    assert during > 10_000, during


def test_ids_are_strings_that_name_a_task(memory_engine):
    memory_engine.register_template(yaml_template("ids", "only"))
    task_id = memory_engine.create_task("test", "ids")
    assert isinstance(task_id, str)
    uuid.UUID(task_id)


def test_a_cyclic_or_absurdly_deep_value_is_refused_not_a_crash(memory_engine):
    memory_engine.register_template(
        "namespace: test\nname: deep\nversion: 1.0.0\nsteps: [{name: a}]\n"
    )
    cyclic: dict = {}
    cyclic["self"] = cyclic
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    for bad in (cyclic, deep):
        with pytest.raises(tasker_core.InvalidArgumentError, match="deeper"):
            memory_engine.create_task("test", "deep", context={"v": bad})
    assert memory_engine.list_tasks() == []


def test_absurd_waits_and_delays_are_invalid_arguments_not_panics(memory_engine):
    for wait in (-1.0, float("inf"), float("nan"), 1e19):
        with pytest.raises(tasker_core.InvalidArgumentError):
            memory_engine.claim("w", None, 1, wait=wait)


def _wait_for_child(pid: int, seconds: float) -> int:
    """The wait status of child ``pid``, which must end within ``seconds`` (else it is killed
    and the test fails)."""
    import os
    import signal

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child hung")


def test_a_forked_child_refuses_the_parents_engine_and_opens_its_own():
    import os

    parent = tasker_core.Engine("memory:")
    parent.register_template("namespace: f\nname: k\nversion: 1.0.0\nsteps: [{name: a}]\n")
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            try:
                parent.create_task("f", "k")
            except tasker_core.StoreError:
                child = tasker_core.Engine("memory:")
                child.register_template(
                    "namespace: f\nname: k\nversion: 1.0.0\nsteps: [{name: a}]\n"
                )
                child.create_task("f", "k")
                code = 0
        finally:
            os._exit(code)
    status = _wait_for_child(pid, 20)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert parent.create_task("f", "k")  # the parent's engine still works


def test_a_worker_made_before_a_fork_refuses_to_run_in_the_child():
    import os

    parent = tasker_core.Engine("memory:")
    parent.register_template("namespace: f\nname: w\nversion: 1.0.0\nsteps: [{name: a}]\n")
    worker = tasker_core.Worker(parent, concurrency=1)
    worker.handler("a")(lambda step: "never")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            try:
                worker.run_until_idle(timeout=5)
                said = b"ran"
            except tasker_core.StoreError as e:
                said = b"refused" if "fork" in str(e) else b"other"
            os.write(write, said)
        finally:
            os._exit(0)
    os.close(write)
    _wait_for_child(pid, 30)
    assert os.read(read, 100) == b"refused"
    os.close(read)
