"""Concurrency keys and rate limits from Python: a key at its limit holds back its steps across
worker processes on one store, and a rate key never gives out more than its bucket allows."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import datetime

import pytest
import tasker_core

KEYED = """
namespace: py_gate
name: keyed
version: 1.0.0
steps:
  - name: charge
    concurrency: { key: "customer:{{context.customer}}", limit: 1 }
  - name: ship
    depends_on: [charge]
    concurrency: { key: "customer:{{context.customer}}", limit: 1 }
"""

WHOLE = """
namespace: py_gate
name: whole
version: 1.0.0
concurrency: { key: "customer:{{context.customer}}", limit: 1 }
steps:
  - name: charge
  - name: ship
    depends_on: [charge]
"""

RATED = """
namespace: py_gate
name: rated
version: 1.0.0
steps:
  - name: call
    rate_limit: { key: py_api, limit: 20, per_ms: 1000, burst: 2 }
"""

# One worker process: runs the handlers until idle and prints its report.
WORKER = textwrap.dedent("""
    import json, sys, time
    import tasker_core

    engine = tasker_core.Engine(sys.argv[1])
    worker = tasker_core.Worker(engine, concurrency=4)

    @worker.handler("charge")
    def charge(step):
        time.sleep(0.005)
        return step.context["customer"]

    @worker.handler("ship")
    def ship(step):
        time.sleep(0.005)
        return True

    @worker.handler("call")
    def call(step):
        return True

    print(json.dumps(worker.run_until_idle(timeout=120)))
""")


def run_workers(url: str, n: int) -> list[dict]:
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, url], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(n)]
    reports = []
    try:
        for w in workers:
            out, err = w.communicate(timeout=180)
            assert w.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    return reports


def at(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def spans(engine: tasker_core.Engine, task_id: str) -> list[tuple[float, float]]:
    """Each step's time in progress, from its transitions."""
    out, started = [], {}
    for t in engine.transitions(task_id):
        if t["step"] is None:
            continue
        if t["to"] == "in_progress":
            started[t["step"]] = at(t["at"])
        elif t["from"] == "in_progress" and t["step"] in started:
            out.append((started.pop(t["step"]), at(t["at"])))
    return out


def overlaps(by_customer: dict[int, list[tuple[float, float]]]) -> list[int]:
    bad = []
    for customer, ss in by_customer.items():
        ss.sort()
        if any(b[0] < a[1] for a, b in zip(ss, ss[1:])):
            bad.append(customer)
    return bad


def test_keys_hold_across_three_worker_processes(postgres_url):
    engine = tasker_core.Engine(postgres_url)
    engine.register_template(KEYED)
    engine.register_template(WHOLE)
    tasks = [(engine.create_task("py_gate", name, {"customer": i % 4}), i % 4)
             for i in range(24) for name in ("keyed", "whole")]
    reports = run_workers(postgres_url, 3)
    assert all(r["idle"] for r in reports)
    assert sum(r["completed"] for r in reports) == 96
    assert sum(1 for r in reports if r["completed"] > 0) >= 2, "more than one process worked"
    steps: dict[int, list[tuple[float, float]]] = {}
    whole: dict[int, list[tuple[float, float]]] = {}
    for task_id, customer in tasks:
        view = engine.task(task_id)
        assert view["status"] == "complete", view
        s = spans(engine, task_id)
        if view["name"] == "keyed":
            steps.setdefault(customer, []).extend(s)
        else:
            # A task holds its key from its first claim to its end.
            whole.setdefault(customer, []).append((min(a for a, _ in s), max(b for _, b in s)))
    assert sum(len(v) for v in steps.values()) == 48
    assert overlaps(steps) == [], "two steps of a customer ran at once"
    assert overlaps(whole) == [], "two tasks of a customer ran at once"
    engine.close()


def test_a_rate_key_never_gives_more_than_its_bucket(postgres_url):
    engine = tasker_core.Engine(postgres_url)
    engine.register_template(RATED)
    ids = [engine.create_task("py_gate", "rated") for _ in range(30)]
    run_workers(postgres_url, 3)
    starts = sorted(s for i in ids for s, _ in spans(engine, i))
    assert len(starts) == 30
    # The bucket: 2 at once, then 20 per second. Over any stretch from the first start, at
    # most 2 + 20 per second of it, and one token of slack: a claim's records begin once it
    # holds the key's lock, a little after the time its bucket was counted at.
    for k, s in enumerate(starts):
        elapsed = s - starts[0]
        assert k + 1 <= 3 + 20 * elapsed, (k, elapsed)
    # Without the limit the 30 would have started within milliseconds.
    assert starts[-1] - starts[0] >= (30 - 3) / 20
    engine.close()


def test_a_context_without_the_key_is_refused(tmp_path):
    engine = tasker_core.Engine(f"sqlite://{tmp_path}/g.db")
    engine.register_template(KEYED)
    with pytest.raises(tasker_core.InvalidContextError, match="context.customer"):
        engine.create_task("py_gate", "keyed", {"customer": {"id": 1}})
    assert engine.list_tasks() == []
    with pytest.raises(tasker_core.TemplateError, match="limit must be at least 1"):
        engine.register_template(KEYED.replace("limit: 1", "limit: 0", 1))
    engine.close()
