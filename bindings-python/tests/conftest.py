"""Fixtures of the tasker_core test suite: engines on every embedded store, template helpers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
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
