"""Tasker Core: workflow orchestration with a Rust core.

A *task* is one run of a *template*: a DAG of *steps*. The engine (written in Rust, in the
``tasker_core._native`` extension module) decides which steps are ready, hands them out with a
lease, retries failures with backoff, records every state change and publishes lifecycle
events. This package adds what belongs to Python: the :class:`Worker` that runs your handler
functions, the :class:`Step` they receive, and the two exceptions a handler raises to say how
it failed.

>>> import tasker_core
>>> engine = tasker_core.Engine("memory:")
>>> _ = engine.register_template(
...     "namespace: demo\\nname: hello\\nversion: 1.0.0\\nsteps: [{name: greet}]")
>>> task_id = engine.create_task("demo", "hello", context={"who": "world"})
>>> worker = tasker_core.Worker(engine, concurrency=2)
>>> @worker.handler("greet")
... def greet(step):
...     return {"greeting": "hello " + step.context["who"]}
>>> worker.run_until_idle(timeout=10)["completed"]
1
>>> engine.task(task_id)["status"]
'complete'
>>> engine.close()
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ._native import (
    Batch,
    ChildTask,
    Children,
    ClaimLostError,
    Decision,
    Engine,
    WorkerRuns,
    WorkerSession,
    IdempotencyConflictError,
    InvalidArgumentError,
    InvalidContextError,
    InvalidTransitionError,
    NotFoundError,
    StoreError,
    Subscription,
    TaskerError,
    TemplateError,
)

__all__ = [
    "Batch",
    "ChildTask",
    "Children",
    "ClaimLostError",
    "Decision",
    "Engine",
    "IdempotencyConflictError",
    "InvalidArgumentError",
    "InvalidContextError",
    "InvalidTransitionError",
    "NotFoundError",
    "PermanentError",
    "RetryableError",
    "Step",
    "Template",
    "StoreError",
    "Subscription",
    "TaskerError",
    "TemplateError",
    "Worker",
    "WorkerRuns",
    "WorkerSession",
    "__version__",
]


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python < 3.8 is not supported anyway
        return "0.1.0"
    try:
        return version("tasker-core")
    except PackageNotFoundError:
        return "0.1.0"


__version__: str = _version()

# A library logs, an application decides where the log goes.
logging.getLogger("tasker_core").addHandler(logging.NullHandler())


class RetryableError(Exception):
    """Raised by a handler: this attempt failed, try the step again.

    The step is retried while it has attempts left (``retry.max_attempts`` of its template).
    ``retry_after`` (seconds, or a :class:`datetime.timedelta`) overrides the step's backoff
    for the next attempt; ``None`` keeps the backoff.

    Any exception other than :class:`PermanentError` is retryable too; raise this one to give
    a clear message or a ``retry_after``.
    """

    message: str
    retry_after: float | None

    def __init__(
        self, message: str, retry_after: float | timedelta | None = None
    ) -> None:
        super().__init__(message)
        self.message = str(message)
        self.retry_after = _seconds(retry_after, "retry_after")

    def __repr__(self) -> str:
        if self.retry_after is None:
            return f"RetryableError({self.message!r})"
        return f"RetryableError({self.message!r}, retry_after={self.retry_after!r})"


class PermanentError(Exception):
    """Raised by a handler: this step failed for good, do not try it again.

    The step ends in ``error``; the steps that require it to succeed are ``skipped`` and the
    task ends in ``error`` once nothing else can run (an operator may still ``retry_task`` or
    ``resolve_step``).
    """

    message: str

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = str(message)

    def __repr__(self) -> str:
        return f"PermanentError({self.message!r})"


def _seconds(value: float | timedelta | None, what: str) -> float | None:
    """``value`` as a non-negative number of seconds (or None)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{what} must be a number of seconds, a timedelta or None, "
            f"not {type(value).__name__}"
        )
    seconds = float(value)
    if not seconds >= 0.0 or seconds == float("inf"):
        raise ValueError(
            f"{what} must be a finite number of seconds >= 0, not {value!r}"
        )
    return seconds


@dataclass(frozen=True)
class Step:
    """One claimed attempt of a step, as a handler receives it.

    ``context`` is the task's context, ``inputs`` maps each parent step's name to its result,
    ``attempt`` counts from 1. The object is read-only; return the step's result (anything
    JSON-serialisable) from the handler, or raise :class:`RetryableError` /
    :class:`PermanentError`.
    """

    task_id: str
    step_id: str
    name: str
    handler: str
    context: Any = None
    inputs: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    max_attempts: int = 1
    namespace: str = ""
    task_name: str = ""
    #: When the lease of this attempt runs out (RFC 3339), unless extended by a heartbeat.
    lease_expires_at: str | None = None
    #: The step's ``timeout_ms``: the longest this attempt may run.
    timeout_ms: int | None = None
    #: The step's ``lease_ms``: the worker renews the lease this often (by a third) by itself.
    lease_ms: int | None = None
    #: The step's ``config`` from its template (Rails Tasker's ``handler_config``, tasker-core's
    #: ``handler.initialization``), after the engine's environment overrides; ``{}`` when none.
    config: Mapping[str, Any] = field(default_factory=dict)
    #: For an instance of a ``batch_worker`` step, its slice: ``{"index", "start", "end"}`` and,
    #: for a batch of items, ``"items"``; None for any other step.
    batch: Mapping[str, Any] | None = None
    #: This attempt's W3C trace context: spans a handler starts under it are children of the
    #: attempt's span (see docs/signals.md). None for a task stored without a trace.
    traceparent: str | None = None
    _session: Any = field(default=None, repr=False, compare=False)

    def heartbeat(self) -> str:
        """Renews this attempt's lease now and returns the new expiry (RFC 3339). Optional:
        the worker renews leases by itself while a handler runs. Raises ClaimLostError when
        the attempt is no longer held (timed out, task cancelled, …)."""
        if self._session is None:
            raise RuntimeError("this step was not handed out by a Worker")
        return self._session.heartbeat(self.step_id, self.attempt)

    def publish(self, name: str, payload: Any = None) -> None:
        """Publishes the custom event ``name`` with ``payload`` (JSON-serialisable) to the
        engine's subscribers, who see it under its own name with this step's task, step and
        attempt and the payload as its ``detail``. The template must declare the event
        (``events``; Rails Tasker's ``custom_events``; tasker-core's ``domain_events`` /
        ``publishes_events``): else, or when the payload breaks the event's ``schema``,
        :class:`InvalidArgumentError` says why and nothing is published."""
        if self._session is None:
            raise RuntimeError("this step was not handed out by a Worker")
        self._session.publish(self.step_id, self.attempt, name, payload)

    def log(self, message: str, level: str = "info") -> bool:
        """Keeps ``message`` in this attempt's log at ``level`` (``debug``, ``info``,
        ``warn`` or ``error``; ``warning`` and ``critical`` too), written with the attempt's
        outcome and read with :meth:`Engine.logs`. An attempt keeps its latest 100 lines of at
        most 1 KiB each. ``logging`` records emitted inside a handler are kept the same way.
        Returns whether the line was kept (not once the attempt was handed back); raises
        :class:`InvalidArgumentError` for an unknown level."""
        if self._session is None:
            raise RuntimeError("this step was not handed out by a Worker")
        return self._session.log(self.step_id, self.attempt, message, level)

    @property
    def is_last_attempt(self) -> bool:
        """Whether a retryable failure of this attempt ends the step (no attempts left)."""
        return self.attempt >= self.max_attempts

    @classmethod
    def from_claim(cls, claimed: Mapping[str, Any], session: Any = None) -> Step:
        """The step of one dict returned by :meth:`Engine.claim` (or a worker session), whose
        keys are this class's fields."""
        step = object.__new__(cls)
        # Frozen: filled through its __dict__, as dataclasses.replace would, without a setattr
        # call per field (a step per attempt, on the hot path).
        vars(step).update(_STEP_DEFAULTS, **claimed, _session=session)
        return step



class Template(dict):
    """A template built in code — a ``dict``, so :meth:`Engine.register_template` takes it and
    checks it as it checks any template::

        engine.register_template(
            tasker_core.Template("shop", "fulfil_order", "1.0.0")
            .step("validate", timeout_ms=30_000)
            .step("charge", depends_on=["validate"], retry={"max_attempts": 5})
            .step("notify", depends_on=[{"step": "charge", "requires_success": False}])
        )
    """

    def __init__(self, namespace: str, name: str, version: str, *, description: str | None = None,
                 input_schema: Mapping[str, Any] | None = None,
                 defaults: Mapping[str, Any] | None = None,
                 events: list[Any] | None = None) -> None:
        super().__init__(namespace=namespace, name=name, version=version)
        for key, value in (("description", description), ("input_schema", input_schema),
                           ("defaults", defaults), ("events", events)):
            if value is not None:
                self[key] = value
        self["steps"] = []

    def step(self, name: str, *, handler: str | None = None,
             depends_on: list[Any] | None = None, retry: Mapping[str, Any] | None = None,
             timeout_ms: int | None = None, lease_ms: int | None = None,
             config: Mapping[str, Any] | None = None, description: str | None = None,
             events: list[Any] | None = None, type: str | None = None,
             batch: Mapping[str, Any] | None = None) -> Template:
        """Adds the step ``name`` (the fields of a template's step) and returns the template.
        ``events`` are the custom events the step may publish besides the template's; ``type``
        is ``"decision"``, ``"deferred_convergence"`` (see :class:`Decision`), ``"batchable"``
        (with ``batch={"worker": ..., "size": ...}``) or ``"batch_worker"`` (see
        :class:`Batch`)."""
        step: dict[str, Any] = {"name": name}
        for key, value in (("handler", handler), ("description", description),
                           ("depends_on", depends_on), ("retry", retry), ("timeout_ms", timeout_ms),
                           ("lease_ms", lease_ms), ("config", config), ("events", events),
                           ("type", type), ("batch", batch)):
            if value is not None:
                step[key] = value
        self["steps"].append(step)
        return self

_STEP_DEFAULTS = {
    "context": None, "inputs": {}, "attempt": 1, "max_attempts": 1, "namespace": "",
    "task_name": "", "lease_expires_at": None, "timeout_ms": None, "lease_ms": None,
    "config": {}, "batch": None, "traceparent": None,
}


from ._worker import Worker
