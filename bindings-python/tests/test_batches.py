"""Batch fan-out from Python: a batchable step returns ``tasker_core.Batch``, its worker step
runs once per slice with ``step.batch``, the step after it gets the slices' results in order."""

from __future__ import annotations

import threading

import pytest
import tasker_core

from conftest import step_of


def template(size: int, parallelism: int, on_failure: str = "fail_fast") -> tasker_core.Template:
    return (tasker_core.Template("py_batches", f"rows_{size}_{on_failure}", "1.0.0")
            .step("load", type="batchable",
                  batch={"worker": "process", "size": size, "parallelism": parallelism,
                         "on_failure": on_failure})
            .step("process", type="batch_worker", depends_on=["load"], retry={"max_attempts": 1})
            .step("report", depends_on=["process"]))


def worker_for(engine, by_total=False, fail_slice=None):
    worker = tasker_core.Worker(engine, concurrency=4)
    running, most, lock = [0], [0], threading.Lock()

    @worker.handler("load")
    def load(step):
        n = step.context["n"]
        if by_total:
            return tasker_core.Batch(total=n, result={"n": n})
        return tasker_core.Batch(items=list(range(n)), result={"n": n})

    @worker.handler("process")
    def process(step):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            batch = step.batch
            assert step.inputs["load"] == {"n": step.context["n"]}
            if batch["index"] == fail_slice:
                raise tasker_core.PermanentError("bad slice")
            values = batch["items"] if "items" in batch else range(batch["start"], batch["end"])
            return {"slice": batch["index"], "sum": sum(values)}
        finally:
            with lock:
                running[0] -= 1

    @worker.handler("report")
    def report(step):
        return step.inputs["process"]

    return worker, most


def sums(n: int, size: int) -> list:
    return [{"slice": k, "sum": sum(range(k * size, min((k + 1) * size, n)))}
            for k in range(-(-n // size))]


def test_a_batch_of_items_runs_its_slices_within_the_parallelism(engine):
    engine.register_template(template(100, 2))
    task_id = engine.create_task("py_batches", "rows_100_fail_fast", context={"n": 450})
    worker, most = worker_for(engine)
    counts = worker.run_until_idle(timeout=60)
    assert counts["completed"] == 7 and counts["failed"] == 0, counts
    assert most[0] <= 2
    task = engine.task(task_id)
    assert task["status"] == "complete"
    assert step_of(task, "report")["result"] == sums(450, 100)
    slices = [s for s in task["steps"] if s["instance_of"] == "process"]
    assert [s["name"] for s in slices] == [f"process[{k}]" for k in range(5)]
    assert slices[4]["batch"]["start"] == 400 and len(slices[4]["batch"]["items"]) == 50


def test_a_batch_by_total_and_a_failed_slice_under_continue(engine):
    engine.register_template(template(10, 3, "continue"))
    task_id = engine.create_task("py_batches", "rows_10_continue", context={"n": 35})
    worker, _ = worker_for(engine, by_total=True, fail_slice=1)
    counts = worker.run_until_idle(timeout=60)
    assert counts["failed"] == 1, counts
    task = engine.task(task_id)
    expected = sums(35, 10)
    expected[1] = None
    assert step_of(task, "report")["result"] == expected
    assert step_of(task, "process[3]")["batch"] == {"index": 3, "start": 30, "end": 35}
    assert task["status"] == "error"


def test_a_failed_slice_fails_fast(engine):
    engine.register_template(template(10, 1))
    task_id = engine.create_task("py_batches", "rows_10_fail_fast", context={"n": 30})
    worker, _ = worker_for(engine, fail_slice=0)
    worker.run_until_idle(timeout=60)
    task = engine.task(task_id)
    assert step_of(task, "process")["status"] == "error"
    assert [step_of(task, f"process[{k}]")["skip_reason"] for k in (1, 2)] == ["another slice failed"] * 2
    assert step_of(task, "report")["status"] == "skipped"


def test_a_batch_checks_its_arguments():
    with pytest.raises(TypeError, match="items=.* or total=N"):
        tasker_core.Batch()
    with pytest.raises(TypeError):
        tasker_core.Batch([1], total=3)
    assert tasker_core.Batch(total=5).total == 5
    assert repr(tasker_core.Batch([1, 2])) == "Batch(items=<2 items>)"


def test_the_low_level_protocol_takes_a_batch(memory_engine):
    memory_engine.register_template(template(2, 10))
    memory_engine.create_task("py_batches", "rows_2_fail_fast", context={"n": 3})
    (load,) = memory_engine.claim("w", None, 1)
    memory_engine.complete(load["step_id"], load["attempt"], tasker_core.Batch(items=["a", "b", "c"]))
    slices = memory_engine.claim("w", None, 10)
    assert [s["batch"]["items"] for s in slices] == [["a", "b"], ["c"]]
    assert "batch" not in load
