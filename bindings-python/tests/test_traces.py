"""Traces over OTLP: a real OTLP/HTTP receiver started by the test, decoding what it gets with
the ``opentelemetry-proto`` definitions, receives the spans of a 5-step task whose steps ran
in two worker processes, linked as one trace under the caller's span."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import tasker_core
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

# a -> (b, c) -> d -> e: a, c and e run in one process, b and d in the other.
TEMPLATE = """
namespace: traced
name: five
version: 1.0.0
steps:
  - name: a
  - name: b
    depends_on: [a]
  - name: c
    depends_on: [a]
  - name: d
    depends_on: [b, c]
  - name: e
    depends_on: [d]
"""

# One worker process: runs its handlers until the task is finished, then closes its engine
# (which sends the spans still queued). Each handler returns the traceparent it was handed.
WORKER = textwrap.dedent("""
    import sys, threading, time
    import tasker_core

    url, task_id, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    engine = tasker_core.Engine(url)
    worker = tasker_core.Worker(engine, concurrency=2)
    for name in names:
        worker.register(name, lambda step: {"traceparent": step.traceparent, "pid": PID})
    PID = __import__("os").getpid()
    runner = threading.Thread(target=worker.run)
    runner.start()
    deadline = time.monotonic() + 60
    while engine.task(task_id)["status"] not in ("complete", "error"):
        assert time.monotonic() < deadline, "the task did not finish"
        time.sleep(0.02)
    worker.stop()
    runner.join()
    engine.close()
""")


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on 127.0.0.1: every span it was sent."""

    def __init__(self) -> None:
        self.spans = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (the http.server API)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        assert self.path == "/v1/traces", self.path
        assert self.headers["Content-Type"] == "application/x-protobuf"
        with self.server.lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.server.spans.extend(scope.spans)
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.shutdown()
    r.server_close()


def attributes(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = v.string_value if v.HasField("string_value") else v.int_value
    return out


def test_the_spans_of_a_task_run_in_two_processes_are_one_trace(receiver, tmp_path):
    url = f"sqlite://{tmp_path / 'traced.db'}"
    engine = tasker_core.Engine(url)
    engine.register_template(TEMPLATE)
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    task_id = engine.create_task("traced", "five",
                                 traceparent=f"00-{caller_trace}-{caller_span}-01")
    env = dict(os.environ, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, url, task_id, names], env=env,
                                stderr=subprocess.PIPE, text=True)
               for names in ("a,c,e", "b,d")]
    for w in workers:
        _, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
    task = engine.task(task_id)
    assert task["status"] == "complete"
    pids = {s["result"]["pid"] for s in task["steps"]}
    assert len(pids) == 2, "the steps ran in two processes"

    spans = list(receiver.spans)
    by_name = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert sorted(by_name) == ["step a", "step b", "step c", "step d", "step e",
                               "task traced/five"], sorted(by_name)
    assert all(len(v) == 1 for v in by_name.values()), {k: len(v) for k, v in by_name.items()}
    (task_span,) = by_name["task traced/five"]
    # One trace, the caller's; the task span is the caller's span's child.
    assert {s.trace_id.hex() for s in spans} == {caller_trace}
    assert task_span.parent_span_id.hex() == caller_span
    assert task["traceparent"] == f"00-{caller_trace}-{task_span.span_id.hex()}-01"
    assert attributes(task_span)["tasker.task_id"] == task_id
    for step in task["steps"]:
        (span,) = by_name[f"step {step['name']}"]
        # Each attempt's span is the task span's child, and is what its handler was handed.
        assert span.parent_span_id == task_span.span_id
        assert step["result"]["traceparent"] == f"00-{caller_trace}-{span.span_id.hex()}-01"
        assert attributes(span)["tasker.attempt"] == 1
        assert attributes(span)["tasker.outcome"] == "complete"
        assert task_span.start_time_unix_nano <= span.start_time_unix_nano
        assert span.start_time_unix_nano <= span.end_time_unix_nano <= task_span.end_time_unix_nano
    engine.close()


def test_an_engine_given_an_endpoint_exports_to_it(receiver):
    engine = tasker_core.Engine("memory:", otlp_endpoint=receiver.endpoint)
    engine.register_template(TEMPLATE)
    task_id = engine.create_task("traced", "five")
    worker = tasker_core.Worker(engine)
    for name in "abcde":
        worker.register(name, lambda step: None)
    worker.run_until_idle(timeout=30)
    engine.close()
    names = sorted(s.name for s in receiver.spans)
    assert names == ["step a", "step b", "step c", "step d", "step e", "task traced/five"]
    assert attributes([s for s in receiver.spans if s.name.startswith("task")][0])[
        "tasker.task_id"] == task_id


def test_a_malformed_traceparent_is_refused_and_nothing_is_created(memory_engine):
    memory_engine.register_template(TEMPLATE)
    with pytest.raises(tasker_core.InvalidArgumentError, match="traceparent"):
        memory_engine.create_task("traced", "five", traceparent="00-abc-def-01")
    assert memory_engine.list_tasks() == []
    # Without one, the task starts a trace of its own, which its steps are handed.
    task_id = memory_engine.create_task("traced", "five")
    (claimed,) = memory_engine.claim("w", None, 1)
    trace = memory_engine.task(task_id)["traceparent"].split("-")[1]
    assert claimed["traceparent"].split("-")[1] == trace
    assert json.dumps(claimed["traceparent"]).count("-") == 3
