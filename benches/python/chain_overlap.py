"""The peers' workload from Python: the Python side of `throughput --template chain --overlap`.

    python benches/python/chain_overlap.py [STORE_URL] [TASKS] [WORKERS] [CONCURRENCY]

Starts WORKERS workers (threads of this process, CONCURRENCY handlers each) on the 3-step chain
of no-op handlers, then creates TASKS tasks one at a time while they run, and times from the
first create to the last step complete (the store idle), as the Rust harness does.
"""

from __future__ import annotations

import sys
import threading
import time

import tasker_core

CHAIN = """
namespace: bench
name: chain
version: 1.0.0
steps:
  - {name: a, handler: noop}
  - {name: b, handler: noop, depends_on: [a]}
  - {name: c, handler: noop, depends_on: [b]}
"""


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else "memory:"
    tasks = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    with tasker_core.Engine(url) as engine:
        engine.register_template(CHAIN)
        running = []
        for _ in range(workers):
            worker = tasker_core.Worker(engine, concurrency=concurrency)
            worker.register("noop", lambda step: None)
            thread = threading.Thread(target=worker.run, daemon=True)
            thread.start()
            running.append((worker, thread))
        started = time.perf_counter()
        for i in range(tasks):
            engine.create_task("bench", "chain", context={"i": i})
        while True:
            status = engine.work_status(["noop"])
            if status["ready"] == status["running"] == status["waiting"] == 0:
                break
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
        for worker, thread in running:
            worker.stop()
            thread.join()
        done = len(engine.list_tasks(status="complete", limit=tasks + 1))
        if done != tasks:
            print(f"only {done} of {tasks} tasks completed", file=sys.stderr)
            return 1
        steps = tasks * 3
        print(
            f"python store={url} template=chain tasks={tasks} steps={steps} workers={workers} "
            f"concurrency={concurrency} created while the workers ran, one at a time "
            f"run={elapsed:.3f}s => {steps / elapsed:.0f} steps/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
