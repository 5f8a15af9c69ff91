"""Steps/s of no-op Python handlers through the wheel: the Python side of the throughput harness.

    python benches/python/throughput.py [STORE_URL] [TASKS] [CONCURRENCY]

Creates TASKS tasks of the 5-step diamond template, then runs one Worker until idle and divides
the steps by the run's wall time (the same workload as `throughput --template diamond`).
"""

from __future__ import annotations

import sys
import time

import tasker_core

DIAMOND = """
namespace: bench
name: diamond
version: 1.0.0
steps:
  - {name: a, handler: noop}
  - {name: b, handler: noop, depends_on: [a]}
  - {name: c, handler: noop, depends_on: [a]}
  - {name: d, handler: noop, depends_on: [a]}
  - {name: e, handler: noop, depends_on: [b, c, d]}
"""


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else "memory:"
    tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    with tasker_core.Engine(url) as engine:
        engine.register_template(DIAMOND)
        for i in range(tasks):
            engine.create_task("bench", "diamond", context={"i": i})
        worker = tasker_core.Worker(engine, concurrency=concurrency)
        worker.register("noop", lambda step: None)
        started = time.perf_counter()
        report = worker.run_until_idle(timeout=600)
        elapsed = time.perf_counter() - started
        done = len(engine.list_tasks(status="complete", limit=tasks + 1))
        if done != tasks:
            print(f"only {done} of {tasks} tasks completed: {report}", file=sys.stderr)
            return 1
        steps = tasks * 5
        print(
            f"python store={url} tasks={tasks} steps={steps} concurrency={concurrency} "
            f"run={elapsed:.3f}s => {steps / elapsed:.0f} steps/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
