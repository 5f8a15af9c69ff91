#!/usr/bin/env python3
"""Runs the order-fulfilment example and prints each step's state, attempts and duration.

Usage: ``python examples/python/order_fulfilment.py [STORE_URL]``
(default: ``$TASKER_DATABASE_URL``, else the engine's default store, ``./tasker.db``).

The workflow is ``examples/order_fulfilment.yaml``, shared with the Rust, Ruby and C examples:
validate -> (charge, reserve_stock) -> ship -> notify. ``charge`` fails its first attempt with
a retryable "gateway busy" error and a short ``retry_after``, so a run shows a retry;
everything else succeeds.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import tasker_core
from tasker_core import PermanentError, RetryableError, Step

TEMPLATE = (
    Path(__file__).resolve().parent.parent / "order_fulfilment.yaml"
).read_text()


def order_id(step: Step) -> int:
    order = step.context.get("order") if isinstance(step.context, dict) else None
    if not isinstance(order, int) or isinstance(order, bool):
        raise PermanentError('context has no integer "order"')
    return order


def worker(engine: tasker_core.Engine, concurrency: int = 4) -> tasker_core.Worker:
    """A worker with the five handlers of the example."""
    w = tasker_core.Worker(engine, concurrency=concurrency)

    @w.handler("validate")
    def validate(step: Step) -> dict:
        return {"order": order_id(step), "valid": True}

    @w.handler("charge")
    def charge(step: Step) -> dict:
        if step.attempt == 1:
            raise RetryableError("gateway busy", retry_after=0.05)
        return {"charged": True, "amount_cents": 4200}

    @w.handler("reserve_stock")
    def reserve_stock(step: Step) -> dict:
        return {"reserved": 1}

    @w.handler("ship")
    def ship(step: Step) -> dict:
        charged = (step.inputs.get("charge") or {}).get("charged")
        if charged is not True:
            raise PermanentError("refusing to ship an unpaid order")
        return {"tracking": f"TRK-{order_id(step)}"}

    @w.handler("notify")
    def notify(step: Step) -> dict:
        return {"notified": True, "shipped": step.inputs.get("ship") is not None}

    return w


def run(engine: tasker_core.Engine, order: int) -> dict:
    """Registers the template, creates one order task and works it to the end."""
    engine.register_template(TEMPLATE)
    task_id = engine.create_task("shop", "fulfil_order", context={"order": order})
    worker(engine, 4).run_until_idle(timeout=30)
    return engine.task(task_id)


def main(argv: list) -> int:
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    url = argv[1] if len(argv) > 1 else os.environ.get("TASKER_DATABASE_URL")
    try:
        # No URL: the engine's default, the SQLite file ./tasker.db.
        engine = tasker_core.Engine(url) if url else tasker_core.Engine()
    except tasker_core.TaskerError as e:
        print(f"error: cannot open the engine: {e}", file=sys.stderr)
        return 1
    shown = url or getattr(tasker_core._native, "DEFAULT_URL", "sqlite://tasker.db")
    with engine:
        task = run(engine, 42)
    print(
        f"task {task['id']} ({task['namespace']}/{task['name']} {task['version']}) "
        f"on {shown}: {task['status']}"
    )
    print(f"{'step':<14} {'state':<18} {'attempts':>8} {'duration_ms':>12}  result")
    for step in task["steps"]:
        duration = "-" if step["duration_ms"] is None else str(step["duration_ms"])
        result = (
            ""
            if step["result"] is None
            else json.dumps(step["result"], separators=(",", ":"))
        )
        print(
            f"{step['name']:<14} {step['status']:<18} {step['attempts']:>8} {duration:>12}  {result}"
        )
    if task["status"] != "complete":
        print(f"error: the task ended {task['status']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
