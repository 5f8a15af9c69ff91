"""Webhooks from Python, against a real HTTP receiver on 127.0.0.1: deliveries survive a
receiver that fails the first two tries and a worker process killed mid-delivery — each event
delivered once per event id (its ``Idempotency-Key``) — signed with HMAC-SHA256; private
addresses are refused unless the engine allows them."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from conftest import wait_for
import tasker_core
from tasker_core import PermanentError, Worker

SECRET = "webhook-secret-for-tests"


class Receiver:
    """An HTTP server on 127.0.0.1 recording every POST: the first ``fail`` are answered 500;
    with ``hold``, the first request is held (unanswered) until :meth:`release`."""

    def __init__(self, fail: int = 0, hold: bool = False) -> None:
        self.seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.arrived = threading.Event()
        self._released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:  # requests of one batch arrive together
                    n = len(receiver.seen)
                    status = 500 if n < fail else 200
                    receiver.seen.append({
                        "key": self.headers["Idempotency-Key"],
                        "event": self.headers["X-Tasker-Event"],
                        "signature": self.headers["X-Tasker-Signature"],
                        "body": body,
                        "status": status if not (hold and n == 0) else None,
                    })
                receiver.arrived.set()
                if hold and n == 0:
                    receiver._released.wait(30)
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver_factory():
    made: list[Receiver] = []

    def make(**kw: Any) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _template(name: str, url: str, on: list[str], timeout_ms: int = 5000) -> str:
    return json.dumps({
        "namespace": "hooks", "name": name, "version": "1.0.0",
        "webhooks": [{
            "on": on, "url": url, "secret_env": "TASKER_TEST_WEBHOOK_SECRET",
            "timeout_ms": timeout_ms,
            "retry": {"max_attempts": 5, "backoff_base_ms": 10, "backoff_max_ms": 10,
                      "jitter": False},
        }],
        "steps": [{"name": "a"}, {"name": "b", "depends_on": ["a"]}],
    })


def _settled(engine, task_id):
    deliveries = engine.webhook_deliveries(task_id)
    engine.deliver_webhooks()
    if deliveries and all(d["status"] in ("delivered", "failed") for d in deliveries):
        return deliveries
    return None


@pytest.fixture(autouse=True)
def _secret(monkeypatch):
    monkeypatch.setenv("TASKER_TEST_WEBHOOK_SECRET", SECRET)


def test_a_failing_receiver_gets_each_event_once_signed(tmp_path, receiver_factory):
    rx = receiver_factory(fail=2)
    engine = tasker_core.Engine(f"sqlite://{tmp_path / 'h.db'}", allow_private_webhooks=True)
    engine.register_template(_template("failing", rx.url, ["step.failed", "task.*"]))
    task = engine.create_task("hooks", "failing")

    def b(step):
        raise PermanentError("card declined")

    worker = Worker(engine, concurrency=1)
    worker.register("a", lambda step: 1)
    worker.register("b", b)
    worker.run_until_idle(timeout=30)
    deliveries = wait_for(lambda: _settled(engine, task), timeout=20)
    # task.created, task.started, step.failed, task.failed: each delivered.
    assert sorted(d["event"] for d in deliveries) == [
        "step.failed", "task.created", "task.failed", "task.started"]
    assert all(d["status"] == "delivered" for d in deliveries), deliveries
    assert sum(d["attempts"] for d in deliveries) == len(deliveries) + 2
    answered = [s["key"] for s in rx.seen if s["status"] == 200]
    assert sorted(answered) == sorted(d["id"] for d in deliveries), "once per event id"
    for s in rx.seen:
        want = "sha256=" + hmac.new(SECRET.encode(), s["body"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(s["signature"], want)
        body = json.loads(s["body"])
        assert (body["id"], body["name"], body["task_id"]) == (s["key"], s["event"], task)
    failed = next(json.loads(s["body"]) for s in rx.seen if s["event"] == "step.failed")
    assert failed["step_name"] == "b" and failed["detail"]["error"] == "card declined"
    engine.close()


CHILD = r"""
import sys, tasker_core
from tasker_core import Worker
engine = tasker_core.Engine(sys.argv[1], allow_private_webhooks=True)
engine.register_template(sys.argv[2])
print(engine.create_task("hooks", "killed"), flush=True)
worker = Worker(engine, concurrency=1)
worker.register("a", lambda step: 1)
worker.register("b", lambda step: 2)
worker.run()
"""


def test_a_worker_killed_mid_delivery_leaves_it_to_another(tmp_path, receiver_factory):
    rx = receiver_factory(hold=True)
    url = f"sqlite://{tmp_path / 'h.db'}"
    # A time limit long enough that the kill lands first; the lease is twice that.
    template = _template("killed", rx.url, ["task.completed"], timeout_ms=5000)
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, template],
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert child.stdout is not None
        task = child.stdout.readline().strip()
        # The worker sent the delivery; the receiver holds it unanswered: kill the worker.
        assert rx.arrived.wait(30), "the first delivery never came"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    engine = tasker_core.Engine(url, allow_private_webhooks=True)
    [d] = engine.webhook_deliveries(task)
    assert (d["status"], d["attempts"]) == ("delivering", 1)
    # Once its lease (twice the time limit) runs out, another engine sends it again.
    [d] = wait_for(lambda: _settled(engine, task), timeout=40, interval=0.1)
    assert (d["status"], d["attempts"]) == ("delivered", 2), d
    assert [s["key"] for s in rx.seen] == [d["id"], d["id"]], "the same event id both times"
    assert [s["status"] for s in rx.seen] == [None, 200], "answered once"
    engine.close()


def test_private_addresses_are_refused_unless_allowed(tmp_path, receiver_factory):
    rx = receiver_factory()
    engine = tasker_core.Engine(f"sqlite://{tmp_path / 'h.db'}")
    engine.register_template(_template("guarded", rx.url, ["task.completed"]))
    task = engine.create_task("hooks", "guarded")
    worker = Worker(engine, concurrency=1)
    worker.register("a", lambda step: 1)
    worker.register("b", lambda step: 2)
    worker.run_until_idle(timeout=30)
    [d] = wait_for(lambda: _settled(engine, task), timeout=20)
    assert d["status"] == "failed" and d["attempts"] == 1
    assert d["last_error"].startswith("refused: 127.0.0.1 is a loopback address")
    assert rx.seen == []
    with pytest.raises(tasker_core.TemplateError, match="matches no lifecycle event"):
        engine.register_template(_template("bad", rx.url, ["task.done"]))
    engine.close()
