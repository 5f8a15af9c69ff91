"""Fixtures of the tasker_core test suite: engines on every embedded store, template helpers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

import pytest
import tasker_core

# Retries that come back at once, so that tests about retries do not sleep.
FAST_RETRY = {
    "max_attempts": 3,
    "backoff_base_ms": 0,
    "backoff_max_ms": 0,
    "jitter": False,
}


def step(name: str, *parents: str | dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A step of a template: ``step("ship", "charge", {"step": "x", "requires_success": False})``."""
    spec: dict[str, Any] = {"name": name}
    if parents:
        spec["depends_on"] = list(parents)
    spec.update(fields)
    return spec


def yaml_template(
    name: str,
    *steps: str | dict[str, Any],
    namespace: str = "test",
    version: str = "1.0.0",
    retry: dict[str, Any] | None = None,
    timeout_ms: int | None = None,
) -> str:
    """The YAML text of a template; each step is a name or a dict made by :func:`step`."""
    lines = [f"namespace: {namespace}", f"name: {name}", f"version: {version}"]
    defaults = {}
    if retry is not None:
        defaults["retry"] = retry
    if timeout_ms is not None:
        defaults["timeout_ms"] = timeout_ms
    if defaults:
        lines.append(f"defaults: {json.dumps(defaults)}")
    lines.append("steps:")
    for s in steps:
        spec = {"name": s} if isinstance(s, str) else s
        # A JSON object is a YAML flow mapping.
        lines.append(f"  - {json.dumps(spec)}")
    return "\n".join(lines) + "\n"


# The order-fulfilment shape of API.md, with fast retries.
DIAMOND = yaml_template(
    "diamond",
    step("validate"),
    step("charge", "validate"),
    step("reserve_stock", "validate"),
    step("ship", "charge", "reserve_stock"),
    step("notify", {"step": "ship", "requires_success": False}),
    retry=FAST_RETRY,
)


def _open(kind: str, tmp_path) -> tasker_core.Engine:
    if kind == "memory":
        return tasker_core.Engine("memory:")
    return tasker_core.Engine(f"sqlite://{tmp_path / 'tasker.db'}")


@pytest.fixture(params=["memory", "sqlite"])
def engine(request, tmp_path) -> Iterable[tasker_core.Engine]:
    """An engine on each embedded store: in memory, and on a fresh SQLite file."""
    e = _open(request.param, tmp_path)
    yield e
    e.close()


@pytest.fixture
def memory_engine() -> Iterable[tasker_core.Engine]:
    """An engine in memory, for tests where the store makes no difference."""
    e = tasker_core.Engine("memory:")
    yield e
    e.close()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """The URL of a fresh SQLite file."""
    return f"sqlite://{tmp_path / 'tasker.db'}"


@pytest.fixture
def template() -> Callable[..., str]:
    """The :func:`yaml_template` helper, for tests that build their own templates."""
    return yaml_template


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01
) -> Any:
    """Polls ``predicate`` until it returns something truthy; fails the test at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)


def step_of(task: dict[str, Any], name: str) -> dict[str, Any]:
    """The step named ``name`` of a task view."""
    for s in task["steps"]:
        if s["name"] == name:
            return s
    raise KeyError(name)


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def postgres_url() -> Iterable[str]:
    """A fresh schema on the server of ``TASKER_TEST_POSTGRES_URL`` (the test command starts
    one), dropped afterwards; the test is skipped without it."""
    base = os.environ.get("TASKER_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("TASKER_TEST_POSTGRES_URL is not set")
    schema = f"tasker_test_py_{uuid.uuid4().hex}"
    subprocess.run(["psql", "-q", base, "-c", f"CREATE SCHEMA {schema}"], check=True)
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-c%20search_path%3D{schema}"
    subprocess.run(["psql", "-q", base, "-c", f"DROP SCHEMA {schema} CASCADE"], check=False,
                   capture_output=True)


class OutageProxy:
    """``tests/support/outage_proxy.py`` in front of the PostgreSQL server of ``url`` (the
    program every language's conformance suite starts): :meth:`cut` takes it down for
    ``down_for`` seconds; :meth:`finish` returns how many connections it cut and refused."""

    def __init__(self, url: str, down_for: float) -> None:
        self._child = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/support/outage_proxy.py"), url, str(down_for)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._child.stdout is not None
        pid, self.url = self._child.stdout.readline().split()
        self._pid = int(pid)

    def cut(self) -> None:
        """Takes the proxy down, and returns once it is down (it says so on its stdout)."""
        assert self._child.stdout is not None
        os.kill(self._pid, signal.SIGUSR1)
        line = self._child.stdout.readline()
        assert line.strip() == "down", f"the proxy said {line!r}, not down"

    def finish(self) -> tuple[int, int]:
        out, _ = self._child.communicate(timeout=10)
        counts = dict(w.split("=") for w in out.split() if "=" in w)
        return int(counts["cut"]), int(counts["refused"])

    def kill(self) -> None:
        if self._child.poll() is None:
            self._child.kill()
            self._child.wait()


@pytest.fixture
def outage_proxy(postgres_url) -> Iterable[Callable[[float], OutageProxy]]:
    """Starts :class:`OutageProxy` instances in front of a fresh PostgreSQL schema."""
    made: list[OutageProxy] = []

    def start(down_for: float) -> OutageProxy:
        made.append(OutageProxy(postgres_url, down_for))
        return made[-1]

    yield start
    for proxy in made:
        proxy.kill()
