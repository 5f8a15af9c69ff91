"""``Engine.metrics()``: the Prometheus text, read with the Prometheus client library's own
parsers, counts what a run did."""

from __future__ import annotations

from prometheus_client.openmetrics import parser as openmetrics
from prometheus_client import parser as prometheus

from conftest import FAST_RETRY, step, yaml_template
import tasker_core
from tasker_core import RetryableError, Worker


def _samples(text: str, families) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``text`` as parsed: (name, sorted labels) -> value."""
    out = {}
    for family in families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_the_metrics_parse_and_match_the_run(engine):
    engine.register_template(
        yaml_template(
            "metered",
            "fetch",
            step("flaky", "fetch"),
            step("store", "flaky"),
            retry=FAST_RETRY,
        )
    )
    tasks = [engine.create_task("test", "metered", context={"n": n}) for n in range(5)]
    failed_once = set()

    def flaky(step):
        # Each task's first attempt fails, its second succeeds.
        if step.task_id not in failed_once:
            failed_once.add(step.task_id)
            raise RetryableError("not yet")
        return {"ok": True}

    worker = Worker(engine, concurrency=2)
    worker.register("fetch", lambda step: 1)
    worker.register("flaky", flaky)
    worker.register("store", lambda step: 3)
    counts = worker.run_until_idle(timeout=60)
    assert counts["completed"] == 15 and counts["idle"]
    # Two tasks left to run: their roots are ready.
    engine.create_task("test", "metered", context={"n": 5})
    engine.create_task("test", "metered", context={"n": 6})

    text = engine.metrics()
    assert text.endswith("# EOF\n")
    for families in (openmetrics.text_string_to_metric_families,
                     prometheus.text_string_to_metric_families):
        samples = _samples(text, families)
        task = (("name", "metered"), ("namespace", "test"))

        def tasks_total(status: str) -> float:
            return samples[("tasker_tasks_total", tuple(sorted(task + (("status", status),))))]

        assert tasks_total("pending") == 7
        assert tasks_total("in_progress") == 5
        assert tasks_total("complete") == len(tasks)

        def steps_total(name: str, outcome: str) -> float | None:
            labels = (("namespace", "test"), ("outcome", outcome), ("step", name),
                      ("task", "metered"))
            return samples.get(("tasker_steps_total", labels))

        assert steps_total("fetch", "completed") == 5
        assert steps_total("flaky", "retried") == 5
        assert steps_total("flaky", "completed") == 5
        assert steps_total("flaky", "failed") is None
        assert steps_total("store", "completed") == 5
        of = (("namespace", "test"), ("step", "flaky"), ("task", "metered"))
        assert samples[("tasker_step_duration_seconds_count", of)] == 10
        assert samples[("tasker_ready_to_claimed_seconds_count", of)] == 10
        buckets = [v for (name, labels), v in samples.items()
                   if name == "tasker_step_duration_seconds_bucket"
                   and dict(labels).get("step") == "flaky"]
        assert max(buckets) == 10
        assert samples[("tasker_ready_steps", (("handler", "fetch"),))] == 2
        assert samples[("tasker_leases_expired_total", ())] == 0


def test_the_stats_count_the_store(engine):
    engine.register_template(
        yaml_template("counted", "fetch", step("flaky", "fetch"), retry=FAST_RETRY)
    )
    for n in range(3):
        engine.create_task("test", "counted", context={"n": n})
    failed_once = set()

    def flaky(step):
        if step.task_id not in failed_once:
            failed_once.add(step.task_id)
            raise RetryableError("not yet")
        return True

    worker = Worker(engine, concurrency=2)
    worker.register("fetch", lambda step: 1)
    worker.register("flaky", flaky)
    worker.run_until_idle(timeout=60)
    engine.create_task("test", "counted", context={"n": 9})
    stats = engine.stats()
    assert stats["tasks"] == {"complete": 3, "pending": 1}
    assert stats["steps"] == {"complete": 6, "pending": 2}
    assert (stats["retries"], stats["recovered"], stats["lease_expiries"]) == (3, 3, 0)
    handlers = {h["handler"]: h for h in stats["handlers"]}
    assert sorted(handlers) == ["fetch", "flaky"]
    assert handlers["flaky"]["finished"] == 3
    assert handlers["fetch"]["p95_ms"] >= 0 and handlers["fetch"]["mean_ms"] >= 0


def test_an_engine_opened_without_metrics_counts_nothing():
    engine = tasker_core.Engine("memory:", metrics=False)
    engine.register_template(yaml_template("quiet", "only"))
    engine.create_task("test", "quiet")
    samples = _samples(engine.metrics(), openmetrics.text_string_to_metric_families)
    assert not any(name == "tasker_tasks_total" for name, _ in samples)
    assert samples[("tasker_ready_steps", (("handler", "only"),))] == 1
    engine.close()
