"""The worker conformance suite, Python side: the cases of core/tests/worker_conformance.rs,
run through the wheel on memory and SQLite (../shared/API.md § "Worker semantics")."""

from __future__ import annotations

import logging
import threading
import time

from tasker_core import Engine, Worker


def one_step(engine, name: str, **fields) -> str:
    extra = "".join(f"\n    {k}: {v}" for k, v in fields.items())
    engine.register_template(
        f"namespace: conf\nname: {name}\nversion: 1.0.0\nsteps:\n  - name: s{extra}\n"
    )
    return engine.create_task("conf", name)


def events(engine, task_id: str) -> list[str]:
    return [t["event"] for t in engine.transitions(task_id) if t["step"] == "s"]


def test_timeout_ms_fails_a_sync_handler_and_its_late_return_is_refused(engine, caplog):
    task_id = one_step(engine, "timeout", timeout_ms=200,
                       retry="{max_attempts: 2, backoff_base_ms: 1, jitter: false}")
    worker = Worker(engine, concurrency=2)

    @worker.handler("s")
    def slow(step):
        if step.attempt == 1:
            time.sleep(0.6)  # a plain function cannot be killed
            return "late"
        return "on time"

    with caplog.at_level(logging.WARNING, "tasker_core"):
        counts = worker.run_until_idle(timeout=20)
    s = engine.task(task_id)["steps"][0]
    assert (s["status"], s["result"], s["attempts"]) == ("complete", "on time", 2)
    assert counts["failed"] == 1 and counts["completed"] == 1
    reasons = [t["reason"] for t in engine.transitions(task_id) if t["event"] == "fail"]
    assert reasons == ["timed out after 200 ms"]
    assert any("timeout" in r.getMessage() for r in caplog.records)


def test_an_async_handler_is_cancelled_at_its_timeout(memory_engine):
    import asyncio

    task_id = one_step(memory_engine, "async_timeout", timeout_ms=150,
                       retry="{max_attempts: 1}")
    worker = Worker(memory_engine)
    cancelled = threading.Event()

    @worker.handler("s")
    async def forever(step):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    began = time.monotonic()
    worker.run_until_idle(timeout=20)
    assert time.monotonic() - began < 5
    assert cancelled.wait(5)
    s = memory_engine.task(task_id)["steps"][0]
    assert (s["status"], s["error"]) == ("error", "timed out after 150 ms")


def test_the_lease_is_renewed_while_a_long_handler_runs(engine):
    task_id = one_step(engine, "lease", timeout_ms=10000, lease_ms=150)
    worker = Worker(engine)
    worker.register("s", lambda step: time.sleep(0.7) or "alive")
    rival_got = []

    def rival():
        time.sleep(0.1)
        for _ in range(12):
            rival_got.extend(engine.claim("rival", None, 1))
            time.sleep(0.04)

    t = threading.Thread(target=rival)
    t.start()
    counts = worker.run_until_idle(timeout=20)
    t.join()
    assert rival_got == [] and counts["completed"] == 1
    assert engine.task(task_id)["steps"][0]["attempts"] == 1
    assert "lease_expired" not in events(engine, task_id)


def test_a_dead_workers_step_comes_back_within_a_few_leases(engine):
    task_id = one_step(engine, "dead", lease_ms=200,
                       retry="{max_attempts: 3, backoff_base_ms: 1, jitter: false}")
    assert len(engine.claim("dead-worker", None, 1)) == 1  # then its process died
    worker = Worker(engine)
    worker.register("s", lambda step: "recovered")
    began = time.monotonic()
    worker.run_until_idle(timeout=20)
    assert time.monotonic() - began < 0.8
    s = engine.task(task_id)["steps"][0]
    assert (s["status"], s["attempts"]) == ("complete", 2)
    assert "lease_expired" in events(engine, task_id)


def test_stop_releases_what_outlives_the_drain_timeout(engine):
    task_id = one_step(engine, "release")
    worker = Worker(engine, drain_timeout=0.1)
    started, done = threading.Event(), threading.Event()

    @worker.handler("s")
    def stuck(step):
        started.set()
        done.wait(10)
        return "never recorded"

    threading.Thread(target=lambda: started.wait(10) and worker.stop()).start()
    counts = worker.run()
    done.set()
    assert counts["released"] == 1 and counts["completed"] == 0
    s = engine.task(task_id)["steps"][0]
    assert (s["status"], s["attempts"]) == ("pending", 0)
    assert "release" in events(engine, task_id)
    assert engine.claim("next", None, 1)[0]["attempt"] == 1


def test_a_claim_lost_to_a_cancel_is_counted_lost(engine):
    task_id = one_step(engine, "lost")
    worker = Worker(engine)
    worker.register("s", lambda step: engine.cancel_task(step.task_id) or "too late")
    counts = worker.run_until_idle(timeout=20)
    assert (counts["completed"], counts["lost"]) == (0, 1)
    assert engine.task(task_id)["status"] == "cancelled"


def test_step_heartbeat_renews_the_lease(memory_engine):
    one_step(memory_engine, "heartbeat", lease_ms=5000)
    worker = Worker(memory_engine)
    seen = []
    worker.register("s", lambda step: seen.append(step.heartbeat()) or "ok")
    assert worker.run_until_idle(timeout=20)["completed"] == 1
    assert len(seen) == 1 and "T" in seen[0]


def test_a_store_outage_is_waited_out_and_no_outcome_is_lost(outage_proxy):
    proxy = outage_proxy(1.5)
    with Engine(proxy.url) as engine:
        engine.register_template(
            "namespace: conf\nname: outage\nversion: 1.0.0\nsteps:\n  - name: first\n"
            "  - name: second\n    depends_on: [first]\n")
        tasks = [engine.create_task("conf", "outage") for _ in range(20)]
        worker = Worker(engine, concurrency=4)
        cut = threading.Event()

        @worker.handler("first")
        def first(step):
            if not cut.is_set():
                cut.set()
                proxy.cut()
            return "first"

        worker.register("second", lambda step: "second")
        started = time.monotonic()
        report = worker.run_until_idle(timeout=60)
        assert cut.is_set()
        assert (report["completed"], report["lost"], report["failed"]) == (40, 0, 0), report
        assert report["idle"], report
        assert time.monotonic() - started >= 1.5
        assert all(engine.task(t)["status"] == "complete" for t in tasks)
    cut_connections, refused = proxy.finish()
    assert cut_connections + refused > 0
