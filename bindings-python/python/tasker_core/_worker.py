"""The Python worker: handler functions run on the core's worker session.

Every decision a worker makes (slots, claim and report batching, lease renewal, timeouts, store
back-off, drain, idleness) is the core's ``WorkerSession``. This module is the Python glue:
registering handlers, ``concurrency`` threads that each ask the session for the next attempt
(the GIL released while they wait), call the handler and hand the outcome back, an asyncio loop
for ``async def`` handlers, and Ctrl-C.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import socket
import threading
import uuid
from typing import Any, Callable, TypeVar

from . import PermanentError, RetryableError, Step, _seconds
from ._native import Engine, WorkerSession

__all__ = ["Worker"]

logger = logging.getLogger("tasker_core")
F = TypeVar("F", bound=Callable[..., Any])


class Worker:
    """Runs registered handlers for the steps an :class:`~tasker_core.Engine` hands out.

    ::

        worker = Worker(engine, concurrency=4)

        @worker.handler("charge")
        def charge(step):
            if step.attempt == 1:
                raise RetryableError("gateway busy", retry_after=2)
            return {"charged": step.context["order"]}

        worker.run_until_idle(timeout=30)   # {'completed': 1, 'failed': 1, 'lost': 0, ...}

    A handler takes a :class:`~tasker_core.Step` and returns its JSON-serialisable result, or
    raises :class:`~tasker_core.RetryableError` / :class:`~tasker_core.PermanentError` (any
    other exception is retryable). ``async def`` handlers run on an event loop of the worker's
    and are cancelled at the step's ``timeout_ms``; a plain function cannot be killed, so its
    attempt is failed at the timeout and its late return is refused and logged.

    ``concurrency`` is the number of handler threads; ``worker_id`` the owner recorded on its
    leases (default ``py-<host>-<pid>-<random>``); ``poll_interval`` (seconds) how often an idle
    worker looks for work made ready elsewhere; ``drain_timeout`` (seconds) how long running
    handlers may finish after :meth:`stop` before their steps are released.
    """

    def __init__(self, engine: Engine, concurrency: int = 4, *, worker_id: str | None = None,
                 poll_interval: float = 0.1, drain_timeout: float = 30.0) -> None:
        if not isinstance(engine, Engine):
            raise TypeError(f"engine must be a tasker_core.Engine, not {type(engine).__name__}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError(f"concurrency must be a positive int, not {type(concurrency).__name__}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be a positive int, not {concurrency}")
        if worker_id is None:
            worker_id = f"py-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        elif not isinstance(worker_id, str):
            raise TypeError(f"worker_id must be a str or None, not {type(worker_id).__name__}")
        elif not worker_id:
            raise ValueError("worker_id must not be empty")
        poll = _seconds(poll_interval, "poll_interval")
        if not poll:
            raise ValueError(f"poll_interval must be a positive number of seconds, not {poll_interval!r}")
        self._engine, self._concurrency, self._worker_id = engine, concurrency, worker_id
        self._poll_interval = poll
        self._drain_timeout = _seconds(drain_timeout, "drain_timeout")
        self._handlers: dict[str, Callable[..., Any]] = {}
        self._lock = threading.Lock()
        self._session: WorkerSession | None = None
        self._stop_requested = self._stopped = False

    # -- registration --------------------------------------------------------------------

    def handler(self, name: str | Callable[..., Any] | None = None) -> Any:
        """Registers the decorated function as the handler ``name`` (default: its ``__name__``);
        ``@worker.handler`` and ``@worker.handler()`` work too. Returns the function unchanged."""
        if callable(name) and not isinstance(name, str):
            return self.register(getattr(name, "__name__", ""), name)
        if name is not None:
            _check_name(name)
        return lambda fn: self.register(name if name is not None else _name_of(fn), fn)

    def register(self, name: str, fn: F) -> F:
        """Registers ``fn`` (a function or ``async def``) as the handler ``name``; returns ``fn``.
        Raises ``ValueError`` when a handler of that name is registered already."""
        _check_name(name)
        if not callable(fn):
            raise TypeError(f"handler must be callable, not {type(fn).__name__}")
        with self._lock:
            if name in self._handlers:
                raise ValueError(f"a handler named {name!r} is registered already")
            self._handlers[name] = fn
        return fn

    @property
    def handlers(self) -> tuple:
        """The names of the registered handlers."""
        with self._lock:
            return tuple(self._handlers)

    engine = property(lambda self: self._engine, doc="The engine this worker claims from.")
    worker_id = property(lambda self: self._worker_id, doc="The owner recorded on its leases.")
    concurrency = property(lambda self: self._concurrency, doc="How many steps run at once.")
    running = property(lambda self: self._session is not None, doc="Whether a run is under way.")

    def __repr__(self) -> str:
        return (f"<tasker_core.Worker {self._worker_id!r} concurrency={self._concurrency} "
                f"handlers={list(self.handlers)!r}>")

    # -- running -------------------------------------------------------------------------

    def run_until_idle(self, timeout: float | None = None) -> dict[str, Any]:
        """Works until nothing is ready, running or waiting for a retry (for this worker's
        handlers), or ``timeout`` seconds; running handlers then finish and report. Returns the
        counts ``{"completed", "failed", "lost", "released", "idle"}``."""
        if timeout is not None:
            timeout = _seconds(timeout, "timeout")
        return self._run(until_idle=True, timeout=timeout)

    def run(self) -> dict[str, Any]:
        """Works until :meth:`stop` (from another thread or a handler) or Ctrl-C, then drains:
        no new claims, running handlers finish and report (up to ``drain_timeout``), the rest is
        released. A second Ctrl-C releases what still runs at once."""
        return self._run(until_idle=False, timeout=None)

    def stop(self) -> None:
        """Asks the run to drain and return. A stop asked for before a run starts makes that
        run return at once; the request is used up by the run it ends."""
        with self._lock:
            if self._session is not None:
                self._session.stop()
            else:
                self._stop_requested = True

    def _run(self, until_idle: bool, timeout: float | None) -> dict[str, Any]:
        names = list(self.handlers)
        if not names:
            raise RuntimeError("the worker has no handlers: register some with @worker.handler(name)")
        with self._lock:
            if self._session is not None:
                raise RuntimeError("this worker is running already; a worker runs one loop at a time")
            session = WorkerSession(self._engine, names, self._concurrency, self._worker_id,
                                    self._poll_interval, self._drain_timeout, until_idle, timeout)
            self._session = session
            if self._stop_requested:
                self._stop_requested = False
                session.stop()
        loop = _AsyncLoop(self._worker_id)
        threads = [threading.Thread(target=self._serve, args=(session, loop), daemon=True,
                                    name=f"tasker_core-{self._worker_id}-{i}")
                   for i in range(self._concurrency)]
        logger.info("worker %s started: handlers %s, concurrency %d",
                    self._worker_id, ", ".join(names), self._concurrency)
        self._stopped = False
        previous = _trap_sigint(self._on_interrupt)
        try:
            for t in threads:
                _uninterrupted(t.start, self._on_interrupt)
            counts = self._wait(session)
            for t in threads:
                _uninterrupted(lambda t=t: t.join(timeout=1.0), self._on_interrupt)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            loop.close()
            with self._lock:
                self._session = None
        if self._stopped or not until_idle and not counts["idle"]:
            logger.info("worker %s stopped", self._worker_id)
        logger.info("worker %s finished: %d completed, %d failed, %d lost, %d released%s",
                    self._worker_id, counts["completed"], counts["failed"], counts["lost"],
                    counts["released"], " (idle)" if counts["idle"] else "")
        return counts

    def _wait(self, session: WorkerSession) -> dict[str, Any]:
        """Waits for the session's end in slices, so that Ctrl-C is seen (under an application's
        own SIGINT handler that raises, too): the first drains, the second releases."""
        while True:
            try:
                counts = session.result(0.2)
                if counts is not None:
                    return counts
            except KeyboardInterrupt:
                self._on_interrupt()

    def _on_interrupt(self, *_: Any) -> None:
        session = self._session
        if session is None:
            return
        if self._stopped:
            logger.warning("interrupted again: releasing the running steps")
            session.abort()
        else:
            logger.info("interrupted: no new claims; waiting for the running steps")
            session.stop()
        self._stopped = True

    def _serve(self, session: WorkerSession, loop: _AsyncLoop) -> None:
        """One handler thread: next attempt, handler, outcome — until the session ends."""
        while True:
            claimed = session.next(0.5)
            if claimed is None:
                if session.finished:
                    return
                continue
            step = Step.from_claim(claimed, session)
            refused = self._execute(session, step, loop)
            if refused:
                logger.warning("step %r (%s) attempt %d: %s", step.name, step.step_id,
                               step.attempt, refused)

    def _execute(self, session: WorkerSession, step: Step, loop: _AsyncLoop) -> str | None:
        where = f"step {step.name!r} ({step.step_id}) attempt {step.attempt}/{step.max_attempts}"
        fn = self._handlers.get(step.handler)
        try:
            if fn is None:
                raise RetryableError(f"no handler named {step.handler!r} is registered")
            result = fn(step)
            if inspect.isawaitable(result):
                result = loop.run(result, step.timeout_ms)
        except _TimedOut:
            return session.timed_out(step.step_id, step.attempt)
        except RetryableError as e:
            logger.info("%s failed, retryable: %s", where, e.message)
            return session.fail(step.step_id, step.attempt, e.message, True, e.retry_after)
        except PermanentError as e:
            logger.warning("%s failed permanently: %s", where, e.message)
            return session.fail(step.step_id, step.attempt, e.message, False, None)
        except BaseException as e:  # noqa: BLE001 - any other error is a retryable failure
            logger.error("%s raised %r", where, e, exc_info=e)
            return session.fail(step.step_id, step.attempt, repr(e), True, None)
        return session.complete(step.step_id, step.attempt, result)


def _uninterrupted(call: Callable[[], Any], on_interrupt: Callable[[], None]) -> None:
    """Calls ``call``; a KeyboardInterrupt meanwhile (an application's SIGINT handler) goes to
    ``on_interrupt`` and the call is finished."""
    while True:
        try:
            call()
            return
        except KeyboardInterrupt:
            on_interrupt()
        except RuntimeError:  # a thread started already when the interrupt came
            return


def _trap_sigint(handler: Callable[..., Any]) -> Any:
    """In the main thread, with Python's own SIGINT handler in place, Ctrl-C calls ``handler``
    instead of raising wherever the main thread is; returns the handler to put back."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            return signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):  # pragma: no cover - no signals here
        pass
    return None


class _TimedOut(Exception):
    """An async handler was cancelled at its step's timeout."""


class _AsyncLoop:
    """One asyncio event loop on its own thread, started when the first coroutine comes."""

    def __init__(self, worker_id: str) -> None:
        self._name = f"tasker_core-{worker_id}-asyncio"
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, awaitable: Any, timeout_ms: int | None) -> Any:
        """Runs ``awaitable`` on the loop (from a handler thread); cancels it at the timeout."""
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name=self._name,
                                                daemon=True)
                self._thread.start()
            loop = self._loop
        timeout = timeout_ms / 1000.0 if timeout_ms else None
        return asyncio.run_coroutine_threadsafe(_bounded(awaitable, timeout), loop).result()

    def close(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5.0)
        if not loop.is_running():
            loop.close()


async def _bounded(awaitable: Any, timeout: float | None) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise _TimedOut from None


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"a handler name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("a handler name must not be empty")


def _name_of(fn: Any) -> str:
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name or name == "<lambda>":
        raise ValueError('name the handler: @worker.handler("name") (this callable has no usable __name__)')
    return name
