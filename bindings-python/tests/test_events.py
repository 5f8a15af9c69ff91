"""subscribe: lifecycle events by glob, next(timeout=), iteration."""

from __future__ import annotations

import threading
import time

import pytest
import tasker_core
from conftest import FAST_RETRY, step, yaml_template
from tasker_core import RetryableError, Worker


def _drain(sub, quiet: float = 0.2):
    events = []
    while True:
        event = sub.next(timeout=quiet)
        if event is None:
            return events
        events.append(event)


def test_step_events_of_a_run(engine):
    engine.register_template(
        yaml_template("evented", "a", step("b", "a"), retry=FAST_RETRY)
    )
    sub = engine.subscribe("step.*")
    assert sub.pattern == "step.*"
    assert sub.next(timeout=0.05) is None  # nothing yet

    task_id = engine.create_task("test", "evented")
    worker = Worker(engine)

    @worker.handler("a")
    def a(step):
        if step.attempt == 1:
            raise RetryableError("busy", retry_after=0.01)
        return 1

    worker.register("b", lambda step: 2)
    worker.run_until_idle(timeout=30)

    events = _drain(sub)
    names = [e["name"] for e in events]
    assert all(n.startswith("step.") for n in names)
    assert {"step.claimed", "step.completed", "step.retry_scheduled"} <= set(names)
    assert "task.completed" not in names
    for e in events:
        assert e["task_id"] == task_id
        assert e["step_id"].startswith(task_id)
        assert e["step_name"] in ("a", "b")
        assert e["at"]
    retry = next(e for e in events if e["name"] == "step.retry_scheduled")
    assert retry["step_name"] == "a" and retry["attempt"] == 1
    assert "busy" in str(retry["detail"])
    completed = [
        (e["step_name"], e["attempt"]) for e in events if e["name"] == "step.completed"
    ]
    assert completed == [("a", 2), ("b", 1)]
    assert sub.dropped == 0


def test_task_events_and_a_catch_all_subscription(engine):
    engine.register_template(yaml_template("lifecycle", "a"))
    tasks = engine.subscribe("task.*")
    everything = engine.subscribe()
    assert everything.pattern == "*"
    task_id = engine.create_task("test", "lifecycle")
    (a,) = engine.claim("w", None, 1)
    engine.complete(a["step_id"], 1, {})
    task_names = [e["name"] for e in _drain(tasks)]
    assert task_names == ["task.created", "task.started", "task.completed"]
    all_names = [e["name"] for e in _drain(everything)]
    assert {"task.created", "step.claimed", "step.completed", "task.completed"} <= set(
        all_names
    )
    assert all(e.get("step_id") is None for e in _drain(tasks))
    event = tasks.next(timeout=0.05)
    assert event is None
    engine.cancel_task(engine.create_task("test", "lifecycle"))
    names = [e["name"] for e in _drain(tasks)]
    assert names == ["task.created", "task.cancelled"]
    assert all(e["task_id"] != task_id for e in _drain(tasks))


def test_a_subscription_is_iterable(memory_engine):
    memory_engine.register_template(yaml_template("iterated", "a", "b", "c"))
    sub = memory_engine.subscribe("step.claimed")
    received = []

    def listen() -> None:
        for event in sub:
            received.append(event)
            if len(received) == 3:
                break

    listener = threading.Thread(target=listen)
    listener.start()
    memory_engine.create_task("test", "iterated")
    memory_engine.claim("w", None, 10)
    listener.join(timeout=10)
    assert not listener.is_alive()
    assert sorted(e["step_name"] for e in received) == ["a", "b", "c"]


def test_next_waits_for_an_event_published_meanwhile(memory_engine):
    memory_engine.register_template(yaml_template("later", "a"))
    sub = memory_engine.subscribe("task.created")
    timer = threading.Timer(0.1, lambda: memory_engine.create_task("test", "later"))
    timer.start()
    started = time.monotonic()
    event = sub.next(timeout=5.0)
    timer.join()
    assert event is not None and event["name"] == "task.created"
    assert time.monotonic() - started < 4.0


def test_a_malformed_pattern_is_an_invalid_argument(memory_engine):
    with pytest.raises(tasker_core.InvalidArgumentError):
        memory_engine.subscribe("step.[")
    with pytest.raises(TypeError):
        memory_engine.subscribe(42)


NATIVE_EVENTS = """
namespace: ev
name: native
version: 1.0.0
events: [order.placed]
steps:
  - name: pay
    events:
      - name: payment.taken
        schema: {type: object, required: [amount]}
  - name: ship
    depends_on: [pay]
"""

RAILS_EVENTS = """
name: refund
namespace_name: ev
version: 1.0.0
task_handler_class: Ev::Refund
step_templates:
  - name: refund
    handler_class: Ev::RefundHandler
    custom_events:
      - name: refund.issued
        description: the money went back
"""

CORE_EVENTS = """
name: sync
namespace_name: ev
version: 1.0.0
domain_events: [{name: sync.started}]
steps:
  - name: pull
    handler: {callable: ev.pull}
    publishes_events:
      - {name: sync.pulled, condition: success}
"""


def test_handlers_publish_declared_custom_events(engine):
    """step.publish reaches subscribers under the event's own name, from each format's
    declarations; an undeclared name or a payload breaking its schema is refused with
    InvalidArgumentError, and nothing is published."""
    engine.register_template(NATIVE_EVENTS)
    reg = engine.register_template(RAILS_EVENTS)
    assert reg["format"] == "rails"
    reg = engine.register_template(CORE_EVENTS)
    assert reg["format"] == "tasker_core"
    sub = engine.subscribe("*.*")
    custom = engine.subscribe("payment.*")
    native = engine.create_task("ev", "native")
    engine.create_task("ev", "refund")
    engine.create_task("ev", "sync")
    refused: list[str] = []
    worker = Worker(engine)

    @worker.handler("pay")
    def pay(step):
        step.publish("payment.taken", {"amount": 12})
        step.publish("order.placed")
        for name, payload in [("refund.issued", {}), ("payment.taken", {"amt": 1})]:
            try:
                step.publish(name, payload)
            except tasker_core.InvalidArgumentError as e:
                refused.append(str(e))
        return 1

    @worker.handler("ship")
    def ship(step):
        step.publish("order.placed", {"from": "ship"})
        try:
            step.publish("payment.taken", {"amount": 1})
        except tasker_core.InvalidArgumentError as e:
            refused.append(str(e))
        return 2

    worker.register("Ev::RefundHandler", lambda step: step.publish("refund.issued", [1]))
    worker.register("ev.pull", lambda step: step.publish("sync.pulled", {"rows": 3}))
    worker.run_until_idle(timeout=30)

    assert engine.task(native)["status"] == "complete"
    events = [e for e in _drain(sub) if not e["name"].startswith(("task.", "step."))]
    seen = sorted((e["name"], e["step_name"], str(e["detail"])) for e in events)
    assert seen == sorted(
        [
            ("payment.taken", "pay", str({"amount": 12})),
            ("order.placed", "pay", "None"),
            ("order.placed", "ship", str({"from": "ship"})),
            ("refund.issued", "refund", "[1]"),
            ("sync.pulled", "pull", str({"rows": 3})),
        ]
    )
    taken = _drain(custom)
    assert [e["name"] for e in taken] == ["payment.taken"]
    assert taken[0]["task_id"] == native and taken[0]["attempt"] == 1
    assert len(refused) == 3, refused
    assert "refund.issued" in refused[0] and "order.placed, payment.taken" in refused[0]
    assert "amount" in refused[1]
    assert "payment.taken" in refused[2] and "may publish: order.placed" in refused[2]


def test_a_reserved_or_malformed_event_declaration_is_a_template_error(engine):
    for events, expected in [("[step.done]", "engine's own"), ("[a b]", "not allowed")]:
        with pytest.raises(tasker_core.TemplateError, match=expected):
            engine.register_template(
                f"namespace: ev\nname: bad\nversion: 1.0.0\nsteps:\n"
                f"  - name: s\n    events: {events}\n"
            )
