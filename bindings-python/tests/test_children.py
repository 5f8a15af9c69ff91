"""Child tasks from Python: a handler returns ``tasker_core.Children``, its step waits for them
and completes with their leaf results in order, or fails when one fails; cancelling a parent
cancels its children. On PostgreSQL, three worker processes share a parent's fifty children."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import tasker_core

from conftest import step_of, wait_for

PARENT = (tasker_core.Template("py_family", "parent", "1.0.0")
          .step("fan_out", retry={"max_attempts": 1})
          .step("summary", depends_on=["fan_out"]))
CHILD = (tasker_core.Template("py_family", "child", "1.0.0")
         .step("work", retry={"max_attempts": 1})
         .step("tidy", depends_on=["work"]))


def children_of(context):
    return tasker_core.Children([
        tasker_core.ChildTask("py_family", "child",
                              {"i": i, "fail": context.get("fail") == i,
                               "sleep": context.get("sleep", 0)})
        for i in range(context["n"])
    ])


def worker_for(engine):
    worker = tasker_core.Worker(engine, concurrency=4)

    @worker.handler("fan_out")
    def fan_out(step):
        return children_of(step.context)

    @worker.handler("summary")
    def summary(step):
        return step.inputs["fan_out"]

    @worker.handler("work")
    def work(step):
        if step.context["fail"]:
            raise tasker_core.PermanentError("cannot work")
        return step.context["i"] * 10

    @worker.handler("tidy")
    def tidy(step):
        return {"i": step.context["i"], "work": step.inputs["work"]}

    return worker


@pytest.fixture
def family(engine):
    engine.register_template(PARENT)
    engine.register_template(CHILD)
    return engine


def test_a_parent_step_completes_with_its_childrens_results_in_order(family):
    parent = family.create_task("py_family", "parent", {"n": 4})
    report = worker_for(family).run_until_idle(timeout=30)
    assert report["idle"]
    view = family.task(parent)
    assert view["status"] == "complete"
    expected = [{"tidy": {"i": i, "work": i * 10}} for i in range(4)]
    fan_out = step_of(view, "fan_out")
    assert fan_out["result"] == expected
    assert step_of(view, "summary")["result"] == expected
    assert len(fan_out["children"]) == 4
    for i, child in enumerate(fan_out["children"]):
        c = family.task(child)
        assert c["context"]["i"] == i
        assert c["parent"] == {"task_id": parent, "step": "fan_out"}
    assert view["parent"] is None


def test_a_failed_child_fails_its_parent_step(family):
    parent = family.create_task("py_family", "parent", {"n": 3, "fail": 2})
    worker_for(family).run_until_idle(timeout=30)
    view = family.task(parent)
    assert view["status"] == "error"
    fan_out = step_of(view, "fan_out")
    assert fan_out["status"] == "error"
    assert f"child task 2 ({fan_out['children'][2]}) failed" in fan_out["error"]
    assert step_of(view, "summary")["status"] == "skipped"


def test_cancelling_a_parent_cancels_its_children(family):
    parent = family.create_task("py_family", "parent", {"n": 3})
    [step] = family.claim("test", ["fan_out"], 1)
    family.complete(step["step_id"], step["attempt"], children_of(step["context"]))
    children = step_of(family.task(parent), "fan_out")["children"]
    [running] = family.claim("test", ["work"], 1)
    family.cancel_task(parent)
    assert [family.task(c)["status"] for c in children] == ["cancelled"] * 3
    with pytest.raises(tasker_core.ClaimLostError):
        family.complete(running["step_id"], running["attempt"], 1)


def test_children_must_be_child_tasks():
    with pytest.raises(TypeError, match="child 0 must be a ChildTask"):
        tasker_core.Children([{"namespace": "a", "name": "b"}])


# One worker process: it runs the family's handlers until idle and prints its report.
WORKER = textwrap.dedent("""
    import json, os, sys, time
    import tasker_core

    engine = tasker_core.Engine(sys.argv[1])
    worker = tasker_core.Worker(engine, concurrency=4)

    @worker.handler("fan_out")
    def fan_out(step):
        n = step.context["n"]
        return tasker_core.Children([
            tasker_core.ChildTask("py_family", "child", {"i": i, "sleep": step.context["sleep"]})
            for i in range(n)])

    @worker.handler("summary")
    def summary(step):
        return len(step.inputs["fan_out"])

    @worker.handler("work")
    def work(step):
        time.sleep(step.context["sleep"])
        return os.getpid()

    @worker.handler("tidy")
    def tidy(step):
        return {"i": step.context["i"], "pid": step.inputs["work"]}

    print(json.dumps(worker.run_until_idle(timeout=120)))
""")


def test_fifty_children_across_three_worker_processes_and_a_cancel_midway(postgres_url):
    engine = tasker_core.Engine(postgres_url)
    engine.register_template(PARENT)
    engine.register_template(CHILD)
    whole = engine.create_task("py_family", "parent", {"n": 50, "sleep": 0.01})
    cut = engine.create_task("py_family", "parent", {"n": 50, "sleep": 1.0})
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, postgres_url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    try:
        # Midway through the slow parent's children: some done, most not.
        def some_done():
            mine = set(step_of(engine.task(cut), "fan_out").get("children") or [])
            done = engine.list_tasks(status="complete", namespace="py_family", name="child",
                                     limit=1000)
            return len(mine & {t["id"] for t in done}) >= 3
        wait_for(some_done, timeout=60, interval=0.02)
        engine.cancel_task(cut)
        reports = []
        for w in workers:
            out, err = w.communicate(timeout=180)
            assert w.returncode == 0, err
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert all(r["idle"] for r in reports)

    view = engine.task(whole)
    assert view["status"] == "complete"
    fan_out = step_of(view, "fan_out")
    results = fan_out["result"]
    assert [r["tidy"]["i"] for r in results] == list(range(50)), "in the children's order"
    assert step_of(view, "summary")["result"] == 50
    pids = {r["tidy"]["pid"] for r in results}
    assert len(pids) >= 2, f"the children ran in one process only: {pids}"
    assert all(engine.task(c)["status"] == "complete" for c in fan_out["children"])

    view = engine.task(cut)
    assert view["status"] == "cancelled"
    children = [engine.task(c) for c in step_of(view, "fan_out")["children"]]
    assert len(children) == 50
    states = [c["status"] for c in children]
    assert set(states) <= {"complete", "cancelled"}, states
    assert states.count("cancelled") > 0 and states.count("complete") >= 3
    for c in children:
        for s in c["steps"]:
            assert s["status"] not in ("pending", "in_progress", "waiting_for_retry"), (c["id"], s)
    engine.close()
