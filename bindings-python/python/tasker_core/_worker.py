"""The Python worker: the glue between handler functions and the core's ``WorkerSession``,
which decides everything else (slots, batching, leases, timeouts, back-off, drain, idleness):
registration, ``concurrency`` threads that each take the next attempt, call its handler and hand
the outcome back, an asyncio loop for ``async def`` handlers, ``logging`` records emitted inside
a handler handed to its step's log, and Ctrl-C."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import logging
import signal
import threading
from typing import Any, Callable, TypeVar

from . import PermanentError, RetryableError, Step
from ._native import Engine, WorkerRuns, WorkerSession

__all__ = ["Worker"]

logger = logging.getLogger("tasker_core")
F = TypeVar("F", bound=Callable[..., Any])

#: The step whose handler runs in this thread (or asyncio task), for :func:`_capture_logging`.
_current: contextvars.ContextVar[Step | None] = contextvars.ContextVar("tasker_core_step",
                                                                       default=None)
_capturing = threading.Lock()
_captured = False


def _capture_logging() -> None:
    """Hands every ``logging`` record made inside a handler to its step's log as well (once per
    process): a record factory, not a handler, so that the application's logging setup (its
    handlers, ``basicConfig``, the last-resort handler) is as it was."""
    global _captured
    with _capturing:
        if _captured:
            return
        _captured = True
        make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        step = _current.get()
        if step is None:
            return record
        try:
            # Records of the worker itself are not the step's; nor are the blank copies
            # logging.makeLogRecord (used by some formatters) makes before filling them in.
            name = record.name
            if not isinstance(name, str) or name.startswith("tasker_core"):
                return record
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            no = record.levelno  # Python's scale, to the log's four levels
            level = "error" if no >= 40 else "warn" if no >= 30 else "info" if no >= 20 else "debug"
            step.log(message, level)
        except Exception:  # noqa: BLE001 - a line lost must not break the caller's logging
            pass
        return record

    logging.setLogRecordFactory(factory)


class Worker:
    """Runs registered handlers for the steps an :class:`~tasker_core.Engine` hands out::

        worker = Worker(engine, concurrency=4)
        @worker.handler("charge")
        def charge(step):
            return {"charged": step.context["order"]}
        worker.run_until_idle(timeout=30)   # {'completed': 1, 'failed': 0, 'lost': 0, ...}

    A handler takes a :class:`~tasker_core.Step` and returns its JSON result, or raises
    :class:`~tasker_core.RetryableError` / :class:`~tasker_core.PermanentError` (any other
    exception is retryable). ``async def`` handlers are cancelled at the step's ``timeout_ms``; a
    plain function cannot be killed: its attempt fails at the timeout, its late return is refused.
    ``worker_id`` defaults to ``py-<host>-<pid>-<random>``; ``poll_interval`` and
    ``drain_timeout`` are seconds (how often to look for work made ready elsewhere; how long
    running handlers may finish after :meth:`stop` before their steps are released). With
    ``autoload=True`` each run first registers the handlers the engine's templates name as
    ``package.module.attribute`` (see :meth:`autoload_handlers`).
    """

    def __init__(self, engine: Engine, concurrency: int = 4, *, worker_id: str | None = None,
                 poll_interval: float = 0.1, drain_timeout: float = 30.0,
                 autoload: bool = False) -> None:
        if isinstance(concurrency, bool):
            raise TypeError("concurrency must be a positive int, not bool")
        self._runs = WorkerRuns(engine, concurrency, worker_id, poll_interval, drain_timeout)
        self._engine, self._concurrency = engine, concurrency
        self._handlers: dict[str, Callable[..., Any]] = {}
        self._lock = threading.Lock()
        self._stopped = False
        self._autoload = bool(autoload)

    def handler(self, name: str | Callable[..., Any] | None = None) -> Any:
        """Registers the decorated function as the handler ``name`` (default: its ``__name__``);
        ``@worker.handler`` and ``@worker.handler()`` work too. Returns the function unchanged."""
        if callable(name) and not isinstance(name, str):
            return self.register(getattr(name, "__name__", ""), name)
        if name is not None:
            _check_name(name)
        return lambda fn: self.register(name if name is not None else getattr(fn, "__name__", ""), fn)

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

    def autoload_handlers(self, *templates: Any) -> list[str]:
        """Registers the handlers templates name as ``package.module.attribute`` (tasker-core's
        ``handler.callable``): ``templates`` are what :meth:`Engine.register_template` returned
        (their ``"handlers"``) or handler names; none: every handler of the engine's templates.
        A function is registered as it is; a class runs each step on a new instance, built with
        ``cls(config=step.config)`` when it takes ``config``, else ``cls()``, through its
        ``call(step)`` method (or the instance itself when callable). Names registered already,
        names without a dot and names that import nothing are left alone. Returns the names it
        registered."""
        if not templates:
            templates = (self._engine.registered_handlers(),)
        names: list[str] = []
        for t in templates:
            items = t.get("handlers", []) if isinstance(t, dict) else [t] if isinstance(t, str) else t
            names.extend(n for n in items if isinstance(n, str) and n not in names)
        registered = []
        for name in names:
            if name in self.handlers:
                continue
            target = _import(name)
            if target is None:
                continue
            self.register(name, _class_handler(target) if inspect.isclass(target) else target)
            registered.append(name)
        return registered

    @property
    def handlers(self) -> tuple:
        """The names of the registered handlers."""
        with self._lock:
            return tuple(self._handlers)

    engine = property(lambda self: self._engine, doc="The engine this worker claims from.")
    worker_id = property(lambda self: self._runs.worker_id, doc="The owner recorded on its leases.")
    concurrency = property(lambda self: self._concurrency, doc="How many steps run at once.")
    running = property(lambda self: self._runs.running, doc="Whether a run is under way.")

    def __repr__(self) -> str:
        return (f"<tasker_core.Worker {self.worker_id!r} concurrency={self._concurrency} "
                f"handlers={list(self.handlers)!r}>")

    def run_until_idle(self, timeout: float | None = None) -> dict[str, Any]:
        """Works until nothing is ready, running or waiting for a retry (for this worker's
        handlers), or ``timeout`` seconds; running handlers then finish and report. Returns the
        counts ``{"completed", "failed", "lost", "released", "idle"}``."""
        return self._run(True, timeout)

    def run(self) -> dict[str, Any]:
        """Works until :meth:`stop` or Ctrl-C, then drains: no new claims, running handlers
        finish (up to ``drain_timeout``), the rest is released. A second Ctrl-C releases at once."""
        return self._run(False, None)

    def stop(self) -> None:
        """Asks the run to drain and return. A stop asked for before a run starts makes that
        run return at once; the request is used up by the run it ends."""
        self._runs.stop()

    def _run(self, until_idle: bool, timeout: float | None) -> dict[str, Any]:
        if self._autoload:
            self.autoload_handlers()
        _capture_logging()
        names = list(self.handlers)
        session = self._runs.start(names, until_idle, timeout, Step)
        self._stopped = False
        loop = _AsyncLoop(f"tasker_core-{self.worker_id}-asyncio")
        threads = [threading.Thread(target=self._serve, args=(session, loop), daemon=True,
                                    name=f"tasker_core-{self.worker_id}-{i}")
                   for i in range(self._concurrency)]
        logger.info("worker %s started: handlers %s, concurrency %d",
                    self.worker_id, ", ".join(names), self._concurrency)
        interrupt = lambda *_: self._on_interrupt(session)  # noqa: E731
        previous = _trap_sigint(interrupt)
        try:
            for t in threads:
                _uninterrupted(t.start, interrupt)
            counts = None
            while counts is None:  # in slices, so that Ctrl-C is seen
                counts = _uninterrupted(lambda: session.result(0.2), interrupt)
            for t in threads:
                _uninterrupted(lambda t=t: t.join(timeout=1.0), interrupt)
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if not session.finished:
                # An exception escaped the run (an application's SystemExit, say): no more
                # claims, and what still runs is let go rather than left to its lease.
                session.abort()
            loop.close()
            self._runs.end()
        if self._stopped or not until_idle and not counts["idle"]:
            logger.info("worker %s stopped", self.worker_id)
        logger.info("worker %s finished: %d completed, %d failed, %d lost, %d released%s",
                    self.worker_id, counts["completed"], counts["failed"], counts["lost"],
                    counts["released"], " (idle)" if counts["idle"] else "")
        return counts

    def _on_interrupt(self, session: WorkerSession) -> None:
        """Ctrl-C: the first drains, the second releases what still runs."""
        if self._stopped:
            logger.warning("interrupted again: releasing the running steps")
            session.abort()
        else:
            logger.info("interrupted: no new claims; waiting for the running steps")
            session.stop()
        self._stopped = True

    def _serve(self, session: WorkerSession, loop: _AsyncLoop) -> None:
        """One handler thread: next attempt, handler, outcome, until the session ends."""
        while True:
            step = session.next(0.5)
            if step is None and session.finished:
                return
            try:
                refused = step is not None and self._execute(session, step, loop)
            except Exception as e:  # noqa: BLE001 - the thread lives on, and the step is let go
                logger.error("%s: its outcome could not be handed back: %r", _where(step), e)
                refused = _quietly(lambda: session.fail(
                    step.step_id, step.attempt, f"its outcome could not be handed back: {e!r}", True, None))
            if refused:
                logger.warning("%s: %s", _where(step), refused)

    def _call(self, step: Step, loop: _AsyncLoop) -> Any:
        """The handler's result, its ``logging`` records kept in the step's log."""
        token = _current.set(step)
        try:
            result = self._handlers[step.handler](step)
            if result is not None and inspect.isawaitable(result):
                result = loop.run(result, step)
            return result
        finally:
            _current.reset(token)

    def _execute(self, session: WorkerSession, step: Step, loop: _AsyncLoop) -> str | None:
        try:
            result = self._call(step, loop)
        except _TimedOut:
            return session.timed_out(step.step_id, step.attempt)
        except RetryableError as e:
            logger.info("%s failed, retryable: %s", _where(step), e.message)
            return session.fail(step.step_id, step.attempt, e.message, True, e.retry_after)
        except PermanentError as e:
            logger.warning("%s failed permanently: %s", _where(step), e.message)
            return session.fail(step.step_id, step.attempt, e.message, False, None)
        except BaseException as e:  # noqa: BLE001 - any other error is a retryable failure
            logger.error("%s raised %r", _where(step), e, exc_info=e)
            message = e.args[0] if isinstance(e, _Escaped) else repr(e)
            return session.fail(step.step_id, step.attempt, message, True, None)
        return session.complete(step.step_id, step.attempt, result)


def _import(name: str) -> Any:
    """The attribute ``name`` (``package.module.attribute``) names, or None."""
    module, _, attribute = name.rpartition(".")
    if not module or not attribute:
        return None
    try:
        target = getattr(importlib.import_module(module), attribute, None)
    except ImportError:
        logger.debug("handler %r: no module %r", name, module)
        return None
    return target if callable(target) else None


def _class_handler(cls: type) -> Callable[[Step], Any]:
    """A handler running each step on a new instance of ``cls``."""
    try:
        takes_config = "config" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        takes_config = False

    def run(step: Step) -> Any:
        instance = cls(config=dict(step.config)) if takes_config else cls()
        call = getattr(instance, "call", None)
        return call(step) if callable(call) else instance(step)

    run.__name__ = cls.__name__
    return run


def _where(step: Step) -> str:
    return f"step {step.name!r} ({step.step_id}) attempt {step.attempt}/{step.max_attempts}"


def _uninterrupted(call: Callable[[], Any], on_interrupt: Callable[[], None]) -> Any:
    """``call()``; a KeyboardInterrupt meanwhile (an application's SIGINT handler) goes to
    ``on_interrupt`` and the call is made again (a thread started already is left alone)."""
    while True:
        try:
            return call()
        except KeyboardInterrupt:
            on_interrupt()
        except RuntimeError:  # "threads can only be started once": it did start
            return None


def _trap_sigint(handler: Callable[..., Any]) -> Any:
    """In the main thread, under Python's own SIGINT handler, Ctrl-C calls ``handler`` instead
    of raising wherever the main thread is; returns the handler to put back."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            return signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):  # pragma: no cover - no signals here
        pass
    return None


class _TimedOut(Exception):  # noqa: N818 - an async handler was cancelled at its timeout
    pass


class _AsyncLoop:
    """One asyncio event loop on its own thread, started by the first coroutine."""

    def __init__(self, name: str) -> None:
        self._name, self._lock, self._thread = name, threading.Lock(), None
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, awaitable: Any, step: Step) -> Any:
        """Runs ``awaitable`` (``step``'s handler) on the loop, from a handler thread; cancels it
        at the step's timeout."""
        with self._lock:
            if self._loop is None:
                self._loop = loop = asyncio.new_event_loop()
                serve = lambda: (loop.run_forever(), loop.close())  # noqa: E731
                self._thread = threading.Thread(target=serve, name=self._name, daemon=True)
                self._thread.start()
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(_bounded(awaitable, step), loop).result()

    def close(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5.0)


async def _bounded(awaitable: Any, step: Step) -> Any:
    _current.set(step)  # this task's own context: its records go to the step's log
    timeout = step.timeout_ms / 1000.0 if step.timeout_ms else None
    try:
        return await asyncio.wait_for(_contained(awaitable), timeout)
    except asyncio.TimeoutError:
        raise _TimedOut from None


async def _contained(awaitable: Any) -> Any:
    """``awaitable``'s value; its ``SystemExit`` or ``KeyboardInterrupt`` as an ordinary error,
    caught inside the task that runs it (asyncio re-raises these out of the loop's thread, which
    would die with every handler waiting on it)."""
    try:
        return await awaitable
    except (KeyboardInterrupt, SystemExit) as e:
        raise _Escaped(repr(e)) from e


class _Escaped(Exception):
    """A coroutine handler's ``SystemExit`` or ``KeyboardInterrupt``, as an ordinary error."""


def _quietly(call: Callable[[], Any]) -> Any:
    """``call()``, or None (logged) when it raises."""
    try:
        return call()
    except Exception as e:  # noqa: BLE001
        logger.error("could not hand an outcome back: %r", e)
        return None


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a handler name must be a str, not {type(name).__name__}")
    if not name or name == "<lambda>":
        raise ValueError("a handler name must not be empty (name a lambda: @worker.handler(\"name\"))")
    return name
