"""create_task and the views: task, list_tasks, transitions, graph; bad input."""

from __future__ import annotations

import dataclasses

import time
import uuid

import pytest
import tasker_core
from conftest import DIAMOND, step, step_of, yaml_template


def test_create_task_records_the_context_and_pending_steps(engine):
    engine.register_template(DIAMOND)
    context = {
        "order": 42,
        "lines": [{"sku": "A-1", "qty": 2}],
        "gift": False,
        "note": None,
    }
    task_id = engine.create_task("test", "diamond", context=context)
    task = engine.task(task_id)
    assert task["id"] == task_id
    assert (task["namespace"], task["name"], task["version"]) == (
        "test",
        "diamond",
        "1.0.0",
    )
    assert task["status"] == "pending"
    assert task["context"] == context
    assert task["priority"] == 0 and task["idempotency_key"] is None
    assert [s["name"] for s in task["steps"]] == [
        "validate",
        "charge",
        "reserve_stock",
        "ship",
        "notify",
    ]
    assert all(s["status"] == "pending" and s["attempts"] == 0 for s in task["steps"])
    assert step_of(task, "ship")["depends_on"] == [
        {"step": "charge", "requires_success": True},
        {"step": "reserve_stock", "requires_success": True},
    ]
    assert task["progress"]["total"] == 5 and task["progress"]["pending"] == 5
    assert task["created_at"] and task["completed_at"] is None


def test_create_task_without_a_context(engine):
    engine.register_template(yaml_template("bare", "a"))
    task = engine.task(engine.create_task("test", "bare"))
    assert task["context"] in ({}, None)


def test_the_same_idempotency_key_returns_the_same_task(engine):
    engine.register_template(yaml_template("idem", "a"))
    first = engine.create_task(
        "test", "idem", context={"n": 1}, idempotency_key="order-42"
    )
    second = engine.create_task(
        "test", "idem", context={"n": 1}, idempotency_key="order-42"
    )
    other = engine.create_task(
        "test", "idem", context={"n": 1}, idempotency_key="order-43"
    )
    assert first == second != other
    assert engine.task(first)["idempotency_key"] == "order-42"
    assert len(engine.list_tasks(name="idem")) == 2


def test_higher_priority_tasks_are_claimed_first(engine):
    engine.register_template(yaml_template("prio", "a"))
    low = engine.create_task("test", "prio", priority=0)
    high = engine.create_task("test", "prio", priority=10)
    lowest = engine.create_task("test", "prio", priority=-5)
    assert engine.task(high)["priority"] == 10
    order = [engine.claim("w", None, 1)[0]["task_id"] for _ in range(3)]
    assert order == [high, low, lowest]


def test_wrong_argument_types_are_type_errors(memory_engine):
    with pytest.raises(TypeError):
        memory_engine.create_task(1, 2)
    with pytest.raises(TypeError):
        memory_engine.create_task("test", "x", priority="high")
    with pytest.raises(TypeError):
        memory_engine.task(123)
    with pytest.raises(TypeError):
        memory_engine.claim("w", "not-a-list-of-names-but-a-str", "one")


def test_a_context_that_is_not_json_is_an_invalid_argument(memory_engine):
    memory_engine.register_template(yaml_template("ctx", "a"))
    with pytest.raises(tasker_core.InvalidArgumentError):
        memory_engine.create_task("test", "ctx", context={"when": object()})


def test_an_unknown_task_is_not_found_and_a_malformed_id_is_invalid(engine):
    bogus = str(uuid.uuid4())
    for call in (engine.task, engine.transitions, engine.graph, engine.cancel_task):
        with pytest.raises(tasker_core.NotFoundError):
            call(bogus)
        with pytest.raises(tasker_core.InvalidArgumentError):
            call("not-a-task-id")
    with pytest.raises(tasker_core.InvalidArgumentError):
        engine.complete("not-a-step-id", 1, {})
    with pytest.raises(tasker_core.InvalidArgumentError):
        engine.heartbeat(bogus, 1)  # a task id is not a step id


def test_list_tasks_filters_and_is_newest_first(engine):
    engine.register_template(yaml_template("listed", "a"))
    engine.register_template(yaml_template("listed", "a", namespace="other"))
    ids = []
    for ns in ("test", "test", "other"):
        ids.append(engine.create_task(ns, "listed"))
        time.sleep(0.002)
    engine.cancel_task(ids[0])

    everything = engine.list_tasks()
    assert [t["id"] for t in everything] == list(reversed(ids))
    assert all("steps" in t and "progress" in t for t in everything)
    assert [t["id"] for t in engine.list_tasks(namespace="other")] == [ids[2]]
    assert [t["id"] for t in engine.list_tasks(status="cancelled")] == [ids[0]]
    assert [t["id"] for t in engine.list_tasks(status="pending", namespace="test")] == [
        ids[1]
    ]
    assert [t["id"] for t in engine.list_tasks(limit=1)] == [ids[2]]
    assert engine.list_tasks(name="nothing-by-that-name") == []


def test_list_tasks_refuses_an_unknown_status(memory_engine):
    with pytest.raises(tasker_core.InvalidArgumentError):
        memory_engine.list_tasks(status="exploded")


def test_transitions_are_the_audit_trail(engine):
    engine.register_template(yaml_template("audited", "a", step("b", "a")))
    task_id = engine.create_task("test", "audited")
    (claimed,) = engine.claim("w", None, 10)
    engine.complete(claimed["step_id"], claimed["attempt"], {"ok": True})
    trail = engine.transitions(task_id)
    assert trail[0]["step"] is None and trail[0]["to"] == "pending"
    task_level = [(t["from"], t["to"]) for t in trail if t["step"] is None]
    assert ("pending", "in_progress") in task_level
    a = [t for t in trail if t["step"] == "a"]
    assert [(t["from"], t["to"]) for t in a] == [
        ("pending", "in_progress"),
        ("in_progress", "complete"),
    ]
    assert all(t["attempt"] == 1 for t in a)
    assert all(t["step_id"] == claimed["step_id"] for t in a)
    for t in trail:
        assert set(t) >= {
            "step_id",
            "step",
            "from",
            "to",
            "event",
            "reason",
            "attempt",
            "at",
        }


def test_graph_lists_nodes_with_states_and_edges(engine):
    engine.register_template(DIAMOND)
    task_id = engine.create_task("test", "diamond")
    (validate,) = engine.claim("w", ["validate"], 1)
    engine.complete(validate["step_id"], 1, {})
    graph = engine.graph(task_id)
    assert graph["task_id"] == task_id
    nodes = {n["name"]: n for n in graph["nodes"]}
    assert nodes["validate"]["status"] == "complete"
    assert (
        nodes["charge"]["status"] == "pending"
        and nodes["charge"]["handler"] == "charge"
    )
    edges = {(e["from"], e["to"]): e["requires_success"] for e in graph["edges"]}
    assert edges == {
        ("validate", "charge"): True,
        ("validate", "reserve_stock"): True,
        ("charge", "ship"): True,
        ("reserve_stock", "ship"): True,
        ("ship", "notify"): False,
    }


def test_nan_and_infinity_are_refused_rather_than_stored_as_null(memory_engine):
    memory_engine.register_template(
        "namespace: test\nname: ctx\nversion: 1.0.0\nsteps: [{name: a}]\n"
    )
    for bad in (float("nan"), float("inf"), [1.0, float("-inf")], {"deep": {"x": float("nan")}}):
        with pytest.raises(tasker_core.InvalidArgumentError, match="finite"):
            memory_engine.create_task("test", "ctx", context={"value": bad})
    assert memory_engine.list_tasks() == []


@dataclasses.dataclass
class _Point:
    x: float
    ys: list


def test_every_container_pythonize_accepts_is_converted_and_checked(memory_engine):
    import collections
    from types import MappingProxyType

    memory_engine.register_template(
        "namespace: test\nname: containers\nversion: 1.0.0\nsteps: [{name: a}]\n"
    )
    context = {
        "deque": collections.deque([1, 2]),
        "set": {3},
        "frozenset": frozenset({4}),
        "tuple": (5, 6),
        "mapping": MappingProxyType({"k": "v"}),
        "ordered": collections.OrderedDict(a=1),
        "range": range(3),
        "dataclass": _Point(1, [2]),
    }
    task = memory_engine.task(memory_engine.create_task("test", "containers", context=context))
    assert task["context"] == {
        "deque": [1, 2], "set": [3], "frozenset": [4], "tuple": [5, 6], "mapping": {"k": "v"},
        "ordered": {"a": 1}, "range": [0, 1, 2], "dataclass": {"x": 1, "ys": [2]},
    }
    cyclic = collections.deque()
    cyclic.append(cyclic)
    for bad, why in (
        (cyclic, "deeper than 64"),
        (collections.deque([float("nan")]), "finite"),
        ({frozenset({float("inf")})}, "finite"),
        (MappingProxyType({"x": float("nan")}), "finite"),
        ({1: "int key"}, "key must be a str"),
        (b"bytes", "bytes is not a JSON value"),
        (2**70, "64 bits"),
        (object(), "object is not a JSON value"),
        (_Point(float("nan"), []), "finite"),
        (_Point, "type is not a JSON value"),
    ):
        with pytest.raises(tasker_core.InvalidArgumentError, match=why):
            memory_engine.create_task("test", "containers", context={"v": bad})
    assert len(memory_engine.list_tasks()) == 1


def test_the_limits_are_the_cores(memory_engine):
    memory_engine.register_template(
        "namespace: test\nname: limits\nversion: 1.0.0\nsteps: [{name: a}]\n"
    )
    fits: object = 1
    for _ in range(63):  # the context dict is the 64th level
        fits = [fits]
    memory_engine.create_task("test", "limits", context={"v": fits})
    with pytest.raises(tasker_core.InvalidArgumentError, match="deeper than 64"):
        memory_engine.create_task("test", "limits", context={"v": [fits]})
    with pytest.raises(tasker_core.InvalidArgumentError, match="1024 KiB"):
        memory_engine.create_task("test", "limits", context={"v": "x" * (1 << 20)})
    with pytest.raises(tasker_core.InvalidArgumentError, match="256 bytes"):
        memory_engine.create_task("test", "limits", idempotency_key="k" * 256)
    first = memory_engine.create_task("test", "limits", context={"o": 1}, idempotency_key="o-1")
    assert memory_engine.create_task("test", "limits", context={"o": 1}, idempotency_key="o-1") == first
    with pytest.raises(tasker_core.IdempotencyConflictError, match="o-1"):
        memory_engine.create_task("test", "limits", context={"o": 2}, idempotency_key="o-1")
    assert issubclass(tasker_core.IdempotencyConflictError, tasker_core.InvalidArgumentError)
    with pytest.raises(tasker_core.InvalidArgumentError, match="between 1 and 1000"):
        memory_engine.claim("w", None, 1001)
    with pytest.raises(tasker_core.TemplateError, match="at most 1000"):
        memory_engine.register_template(
            "namespace: test\nname: budget\nversion: 1.0.0\n"
            "steps: [{name: a, retry: {max_attempts: 4294967295}}]\n")


def test_a_task_whose_rows_cannot_be_read_does_not_stop_the_worker(tmp_path):
    import sqlite3

    url = f"sqlite://{tmp_path / 'tasker.db'}"
    with tasker_core.Engine(url) as engine:
        engine.register_template(
            "namespace: test\nname: rows\nversion: 1.0.0\nsteps: [{name: a}]\n")
        bad = engine.create_task("test", "rows")
        good = [engine.create_task("test", "rows") for _ in range(3)]
    db = sqlite3.connect(tmp_path / "tasker.db")
    # What an earlier version let in: a context nested deeper than JSON readers go.
    db.execute("UPDATE tasker_tasks SET context = ? WHERE task_id = ?",
               ("[" * 200 + "]" * 200, bad))
    db.commit()
    db.close()
    with tasker_core.Engine(url) as engine:
        worker = tasker_core.Worker(engine, concurrency=2)
        worker.register("a", lambda step: "done")
        counts = worker.run_until_idle(timeout=30)
        assert (counts["completed"], counts["lost"]) == (3, 0), counts
        assert all(engine.task(t)["status"] == "complete" for t in good)
        assert len(engine.list_tasks()) == 3
        with pytest.raises(tasker_core.StoreError, match="unreadable") as raised:
            engine.task(bad)
        assert raised.value.kind == "corrupt"
        assert engine.transitions(bad)[-1]["event"] == "unreadable"


def test_create_tasks_makes_a_batch_in_order(engine):
    engine.register_template(
        "namespace: test\nname: batch\nversion: 1.0.0\nsteps: [{name: a}]\n")
    ids = engine.create_tasks(
        [{"namespace": "test", "name": "batch", "context": {"i": i}} for i in range(50)]
        + [{"namespace": "test", "name": "batch", "idempotency_key": "k", "priority": 3}] * 2)
    assert len(ids) == 52 and len(set(ids)) == 51 and ids[50] == ids[51]
    assert [engine.task(i)["context"] for i in ids[:3]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert engine.task(ids[50])["priority"] == 3
    worker = tasker_core.Worker(engine, concurrency=4)
    worker.register("a", lambda step: step.context.get("i"))
    assert worker.run_until_idle(timeout=30)["completed"] == 51
    before = len(engine.list_tasks(limit=1000))
    for bad, error in (
        ([{"namespace": "test", "name": "batch"}, {"namespace": "test", "name": "nope"}],
         tasker_core.NotFoundError),
        ([{"namespace": "test", "name": "batch", "context": {"x": float("nan")}}],
         tasker_core.InvalidArgumentError),
        ([{"namespace": "test", "name": "batch", "contxt": {}}], TypeError),
        ([{"namespace": "test"}], TypeError),
        (["not a mapping"], TypeError),
    ):
        with pytest.raises(error):
            engine.create_tasks(bad)
    assert len(engine.list_tasks(limit=1000)) == before, "nothing of a refused batch"
