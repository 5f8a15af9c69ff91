"""The Python worker: runs handler functions over the engine's claim / complete / fail protocol.

The engine never calls into Python. This loop asks it for work (``Engine.claim``, which waits
with the GIL released), runs each claimed step's handler on a thread pool (``async def``
handlers on one asyncio event loop that the worker owns), and reports each outcome
(``Engine.complete`` / ``Engine.fail``) from the thread that ran the handler.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from typing import Any, Callable, TypeVar

from . import PermanentError, RetryableError, Step
from ._native import (
    ClaimLostError,
    Engine,
    InvalidArgumentError,
    StoreError,
    TaskerError,
)

__all__ = ["Worker"]

logger = logging.getLogger("tasker_core")

Handler = Callable[[Step], Any]
F = TypeVar("F", bound=Callable[..., Any])

# What one step's run ended in; the keys of the counts that run_until_idle / run return.
_COMPLETED = "completed"
_FAILED = "failed"
_LOST = "lost"


#: How often a report is tried through store errors (about 15 s of backoff in all).
_REPORT_TRIES = 12


class Worker:
    """Runs registered handlers for the steps an :class:`~tasker_core.Engine` hands out.

    ::

        worker = Worker(engine, concurrency=4)

        @worker.handler("charge")
        def charge(step):
            if step.attempt == 1:
                raise RetryableError("gateway busy", retry_after=2)
            return {"charged": step.context["order"]}

        worker.run_until_idle(timeout=30)   # {'completed': 1, 'failed': 1, 'lost': 0, 'idle': True}

    A handler takes one :class:`~tasker_core.Step` and returns the step's JSON-serialisable
    result. It fails the attempt by raising :class:`~tasker_core.RetryableError` (optionally
    with ``retry_after`` seconds) or :class:`~tasker_core.PermanentError`; any other exception
    is retryable too. ``async def`` handlers run on an asyncio event loop owned by the worker.

    ``concurrency`` is how many steps run at once (the size of the worker's thread pool);
    ``worker_id`` is recorded as the owner of the leases it takes (default:
    ``py-<host>-<pid>-<random>``); ``poll_interval`` (seconds) is how long a claim waits for
    work before the loop looks around again (stop requests, timeouts, work made ready by other
    processes).
    """

    def __init__(
        self,
        engine: Engine,
        concurrency: int = 4,
        *,
        worker_id: str | None = None,
        poll_interval: float = 0.1,
    ) -> None:
        if not isinstance(engine, Engine):
            raise TypeError(
                f"engine must be a tasker_core.Engine, not {type(engine).__name__}"
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise TypeError(
                f"concurrency must be a positive int, not {type(concurrency).__name__}"
            )
        if concurrency < 1:
            raise ValueError(f"concurrency must be a positive int, not {concurrency}")
        if worker_id is None:
            worker_id = (
                f"py-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
            )
        elif not isinstance(worker_id, str):
            raise TypeError(
                f"worker_id must be a str or None, not {type(worker_id).__name__}"
            )
        elif not worker_id:
            raise ValueError("worker_id must not be empty")
        if isinstance(poll_interval, bool) or not isinstance(
            poll_interval, (int, float)
        ):
            raise TypeError(
                f"poll_interval must be a number of seconds, not {type(poll_interval).__name__}"
            )
        if not 0 < poll_interval < float("inf"):
            raise ValueError(
                f"poll_interval must be a positive number of seconds, not {poll_interval!r}"
            )

        self._engine = engine
        self._concurrency = concurrency
        self._claim_batch = max(1, concurrency // 4)
        self._worker_id = worker_id
        self._poll_interval = float(poll_interval)
        self._handlers: dict[str, Handler] = {}
        self._registry_lock = threading.Lock()
        self._stop = threading.Event()
        self._run_lock = threading.Lock()
        self._async = _AsyncRunner(worker_id)

    # -- registration --------------------------------------------------------------------

    def handler(self, name: str | Callable[..., Any] | None = None) -> Any:
        """Registers the decorated function as the handler named ``name``.

        ``@worker.handler("charge")`` registers ``charge`` for the steps whose template says
        ``handler: charge`` (a step's handler defaults to its name). ``@worker.handler()`` and
        a bare ``@worker.handler`` use the function's ``__name__``. The function is returned
        unchanged, so it can still be called (and tested) directly.
        """
        if callable(name) and not isinstance(name, str):
            fn = name
            return self.register(getattr(fn, "__name__", ""), fn)
        if name is not None:
            _check_name(name)

        def decorate(fn: F) -> F:
            return self.register(name if name is not None else _name_of(fn), fn)

        return decorate

    def register(self, name: str, fn: F) -> F:
        """Registers ``fn`` (a function or an ``async def`` function) as the handler ``name``.

        Returns ``fn``. Raises ``ValueError`` when a handler of that name is registered already.
        """
        _check_name(name)
        if not callable(fn):
            raise TypeError(f"handler must be callable, not {type(fn).__name__}")
        with self._registry_lock:
            if name in self._handlers:
                raise ValueError(f"a handler named {name!r} is registered already")
            self._handlers[name] = fn
        return fn

    @property
    def handlers(self) -> tuple:
        """The names of the registered handlers."""
        with self._registry_lock:
            return tuple(self._handlers)

    @property
    def engine(self) -> Engine:
        """The engine this worker claims from."""
        return self._engine

    @property
    def worker_id(self) -> str:
        """The id recorded as the owner of this worker's leases."""
        return self._worker_id

    @property
    def concurrency(self) -> int:
        """How many steps run at once."""
        return self._concurrency

    @property
    def running(self) -> bool:
        """Whether ``run`` or ``run_until_idle`` is under way."""
        return self._run_lock.locked()

    def __repr__(self) -> str:
        return (
            f"<tasker_core.Worker {self._worker_id!r} concurrency={self._concurrency} "
            f"handlers={list(self.handlers)!r}>"
        )

    # -- running -------------------------------------------------------------------------

    def run_until_idle(self, timeout: float | None = None) -> dict[str, Any]:
        """Works until nothing is ready, running or waiting for a retry, or ``timeout`` seconds.

        "Nothing" is what ``engine.work_status(handlers)`` reports (steps of other handlers
        that are ready do not count; steps running on other workers and retries not due yet
        do) with none of this worker's handlers still running. At the timeout, steps already
        running finish and report before this returns. Returns the counts
        ``{"completed", "failed", "lost", "idle"}``: attempts completed, attempts failed
        (retryable or not), outcomes the engine did not record (the claim was lost, or the
        report could not be stored), and whether the run ended because there was nothing left
        to do.
        """
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(
                    f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
                )
            if not timeout >= 0:
                raise ValueError(f"timeout must be >= 0 seconds, not {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._run(until_idle=True, deadline=deadline)

    def run(self) -> dict[str, Any]:
        """Works until :meth:`stop` is called (from another thread or a handler) or Ctrl-C.

        Either way the worker stops claiming, lets the steps already running finish and
        report, logs "stopped" and returns the counts (see :meth:`run_until_idle`). A second
        Ctrl-C while waiting for them returns at once: plain handlers still finish and report
        in the background, async ones are cancelled, and a step whose handler never reports
        is handed out again once its lease expires.
        """
        return self._run(until_idle=False, deadline=None)

    def stop(self) -> None:
        """Asks ``run`` (or ``run_until_idle``) to stop claiming and return once the running
        steps have reported. A stop requested before a run starts makes that run return at
        once; the request is used up by the run it ends."""
        self._stop.set()

    def _run(self, until_idle: bool, deadline: float | None) -> dict[str, Any]:
        if not self._run_lock.acquire(blocking=False):
            raise RuntimeError(
                "this worker is running already; a worker runs one loop at a time"
            )
        try:
            if not self._handlers:
                raise RuntimeError(
                    "the worker has no handlers: register some with @worker.handler(name)"
                )
            with _SigintStops(self._stop) as sigint:
                return self._loop(until_idle, deadline, sigint)
        finally:
            try:
                self._async.stop()
            finally:
                self._run_lock.release()

    def _loop(
        self, until_idle: bool, deadline: float | None, sigint: _SigintStops
    ) -> dict[str, Any]:
        engine = self._engine
        counts: dict[str, Any] = {_COMPLETED: 0, _FAILED: 0, _LOST: 0, "idle": False}
        pool = _Pool(self._concurrency, self._execute, f"tasker_core-{self._worker_id}")
        stopped = False
        store_errors = 0
        failure: BaseException | None = None
        logger.info(
            "worker %s started: handlers %s, concurrency %d",
            self._worker_id,
            ", ".join(self.handlers),
            self._concurrency,
        )
        try:
            while True:
                if self._stop.is_set():
                    stopped = True
                    if sigint.interrupted:
                        logger.info(
                            "interrupted: no new claims; waiting for %d running step(s) to report",
                            pool.running,
                        )
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                wait = self._poll_interval
                if deadline is not None:
                    wait = min(wait, deadline - now)
                pool.collect(counts)
                names = list(self.handlers)
                free = self._concurrency - pool.running
                # Claim in batches, as the Rust worker does: with steps running, wait until a
                # quarter of the slots are free, so that one claim hands out many steps.
                if free < self._claim_batch and pool.running:
                    pool.collect(counts, timeout=wait)
                    continue
                try:
                    # Wait for work only when nothing runs; otherwise look and come back to
                    # collect the running steps.
                    claimed = engine.claim(
                        self._worker_id, names, free, wait=0.0 if pool.running else wait
                    )
                    if not claimed and not pool.running:
                        status = engine.work_status(names)
                    store_errors = 0
                except StoreError as e:
                    if engine.closed:
                        raise
                    store_errors += 1
                    self._back_off(e, store_errors)
                    continue
                for c in claimed:
                    pool.submit(c)
                if claimed:
                    logger.debug("claimed %d step(s)", len(claimed))
                    continue
                if pool.running:
                    pool.collect(counts, timeout=wait)
                    continue
                if until_idle and _is_idle(status):
                    counts["idle"] = True
                    break
        except KeyboardInterrupt:
            logger.info(
                "interrupted: no new claims; waiting for %d running step(s) to report",
                pool.running,
            )
            stopped = True
        except BaseException as e:  # noqa: BLE001 - re-raised once the running steps have reported
            failure = e
        finally:
            try:
                # In slices, so that a second Ctrl-C is seen while waiting.
                while pool.running > 0:
                    pool.collect(counts, timeout=0.1)
                pool.shutdown(wait=True)
                pool.collect(counts)
            except KeyboardInterrupt:
                logger.warning(
                    "interrupted again: returning without the reports of %d running step(s) "
                    "(a step whose handler never reports is handed out again once its lease "
                    "expires)",
                    pool.running,
                )
                never_started = pool.abandon()
                if never_started:
                    logger.warning(
                        "%d claimed step(s) never started; their leases will expire and the "
                        "engine will hand them out again",
                        never_started,
                    )
                pool.shutdown(wait=False)
            if stopped:
                # This run has honoured the stop request; the next run starts afresh.
                self._stop.clear()
                logger.info("worker %s stopped", self._worker_id)
        if failure is not None:
            raise failure
        logger.info(
            "worker %s finished: %d completed, %d failed, %d lost%s",
            self._worker_id,
            counts[_COMPLETED],
            counts[_FAILED],
            counts[_LOST],
            " (idle)" if counts["idle"] else "",
        )
        return counts

    def _back_off(self, error: BaseException, n: int) -> None:
        """Waits after the ``n``th store error in a row (or until a stop request)."""
        delay = min(0.1 * (2 ** min(n, 5)), 3.0)
        logger.warning(
            "store unavailable (%s); the worker retries in %.1f s (attempt %d)",
            error,
            delay,
            n,
        )
        self._stop.wait(delay)

    # -- one step ------------------------------------------------------------------------

    def _execute(self, claimed: dict[str, Any]) -> str:
        """Runs one claimed step's handler and reports its outcome (on a pool thread)."""
        step = Step.from_claim(claimed)
        where = f"step {step.name!r} ({step.step_id}) attempt {step.attempt}/{step.max_attempts}"
        fn = self._handlers.get(step.handler)
        try:
            if fn is None:
                raise RetryableError(f"no handler named {step.handler!r} is registered")
            result = self._call(fn, step)
        except RetryableError as e:
            logger.info("%s failed, retryable: %s", where, e.message)
            return self._fail(step, e.message, True, e.retry_after)
        except PermanentError as e:
            logger.warning("%s failed permanently: %s", where, e.message)
            return self._fail(step, e.message, False, None)
        except Exception as e:
            logger.error("%s raised %r", where, e, exc_info=e)
            return self._fail(step, repr(e), True, None)
        except BaseException as e:  # SystemExit, KeyboardInterrupt raised by a handler
            logger.error("%s raised %r", where, e, exc_info=e)
            return self._fail(step, repr(e), True, None)

        try:
            self._report(self._engine.complete, step.step_id, step.attempt, result)
        except ClaimLostError as e:
            logger.warning(
                "%s completed too late, its result was refused: %s", where, e
            )
            return _LOST
        except (InvalidArgumentError, TypeError) as e:
            detail = _detail(e)
            logger.error(
                "%s returned a result that is not JSON-serialisable: %s", where, detail
            )
            return self._fail(
                step, f"result is not JSON-serialisable: {detail}", False, None
            )
        except TaskerError as e:
            logger.error(
                "%s completed but the result could not be recorded: %s", where, e
            )
            return _LOST
        logger.debug("%s completed", where)
        return _COMPLETED

    def _report(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Reports through ``call``, again with backoff while the store is unavailable (a
        database restart, a dropped connection) and the engine is open: a result is not given
        up for a blip. Other errors, and a store error after the last try, propagate."""
        delay = 0.05
        for attempt in range(_REPORT_TRIES):
            try:
                call(*args, **kwargs)
                return
            except StoreError as e:
                if self._engine.closed or attempt == _REPORT_TRIES - 1:
                    raise
                logger.warning("could not report a step (%s); retrying in %.2f s", e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _call(self, fn: Handler, step: Step) -> Any:
        """Calls a handler; coroutine functions (and awaitables returned) run on the loop."""
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            type(fn).__call__  # an object whose __call__ is an async def
        ):
            return self._async.run(fn(step), step.timeout_ms)
        result = fn(step)
        if inspect.isawaitable(result):
            return self._async.run(result, step.timeout_ms)
        return result

    def _fail(
        self, step: Step, message: str, retryable: bool, retry_after: float | None
    ) -> str:
        try:
            self._report(
                self._engine.fail,
                step.step_id,
                step.attempt,
                message,
                retryable=retryable,
                retry_after=retry_after,
            )
        except ClaimLostError as e:
            logger.warning(
                "step %r failed too late, the report was refused: %s", step.name, e
            )
            return _LOST
        except TaskerError as e:
            logger.error(
                "step %r failed but the failure could not be recorded: %s", step.name, e
            )
            return _LOST
        return _FAILED


class _SigintStops:
    """While a run goes on in the main thread, Ctrl-C (SIGINT) asks it to stop instead of
    raising KeyboardInterrupt wherever the main thread happens to be (possibly between a claim
    and the hand-over of the claimed steps). A second Ctrl-C raises KeyboardInterrupt, which
    the run takes as "stop waiting for the running steps".

    Only Python's own SIGINT handler is replaced, and only in the main thread; elsewhere (or
    with an application's own handler) the run catches KeyboardInterrupt instead.
    """

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._previous: Any = None
        self.interrupted = False

    def __enter__(self) -> _SigintStops:  # noqa: PYI034 - a private helper
        if threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                    self._previous = signal.signal(signal.SIGINT, self._on_sigint)
            except (ValueError, OSError):  # pragma: no cover - no signals here
                self._previous = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        self._stop.set()


class _AsyncRunner:
    """One asyncio event loop on its own thread, started when the first coroutine comes."""

    def __init__(self, worker_id: str) -> None:
        self._name = f"tasker_core-{worker_id}-asyncio"
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, awaitable: Any, timeout_ms: int | None) -> Any:
        """Runs ``awaitable`` on the loop and waits for its result (from a pool thread).

        The handler is cancelled a little before its lease runs out, so that its (retryable)
        failure is still accepted.
        """
        loop = self._start()
        timeout = None
        if timeout_ms:
            margin = min(max(timeout_ms // 10, 1 if timeout_ms > 1 else 0), 250)
            timeout = (timeout_ms - margin) / 1000.0
        future = asyncio.run_coroutine_threadsafe(
            _with_timeout(awaitable, timeout), loop
        )
        return future.result()

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=serve, name=self._name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def stop(self) -> None:
        """Stops the loop. Normally nothing runs on it any more (the worker waited for its
        steps); coroutines abandoned by a second Ctrl-C are cancelled, so that the pool
        threads waiting for them are released."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(_cancel_all(), loop).result(timeout=10)
        except Exception as e:  # noqa: BLE001 - a coroutine that refuses to be cancelled
            logger.warning("could not cancel the worker's coroutines: %r", e)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


async def _cancel_all() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=5.0)


async def _with_timeout(awaitable: Any, timeout: float | None) -> Any:
    if timeout is None:
        return await awaitable
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
        raise RetryableError(
            f"the handler did not finish within the step's timeout ({timeout:.3f} s)"
        )
    return task.result()


def _check_name(name: Any) -> None:
    if not isinstance(name, str):
        raise TypeError(f"a handler name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("a handler name must not be empty")


def _name_of(fn: Any) -> str:
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name or name == "<lambda>":
        raise ValueError(
            'name the handler: @worker.handler("name") (this callable has no usable __name__)'
        )
    return name


def _detail(e: BaseException) -> str:
    """The message of a conversion error, without the native prefix."""
    text = str(e)
    for prefix in ("invalid argument: ", "the result is not JSON-serialisable: "):
        text = text.removeprefix(prefix)
    return text


class _Pool:
    """``size`` threads that run claimed steps handed over through a queue and hand back what
    each step's run ended in. A plain hand-off through two ``SimpleQueue``s: per step, no
    ``Future``, lock or condition as a ``ThreadPoolExecutor`` needs (the worker ran 1.8x fewer
    steps/s with one). Threads start as steps arrive, up to ``size``. Used by the run's loop thread only;
    the threads only take work and put outcomes.
    """

    def __init__(self, size: int, run: Callable[[dict[str, Any]], str], name: str) -> None:
        self._size = size
        self._run = run
        self._name = name
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        #: Steps handed over whose outcome has not been collected.
        self.running = 0

    def submit(self, claimed: dict[str, Any]) -> None:
        """Hands a claimed step to a thread (starting one when all are busy)."""
        self._work.put(claimed)
        self.running += 1
        if self.running > len(self._threads) and len(self._threads) < self._size:
            thread = threading.Thread(
                target=self._serve,
                name=f"{self._name}-{len(self._threads)}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _serve(self) -> None:
        while True:
            claimed = self._work.get()
            if claimed is None:
                return
            try:
                outcome: Any = self._run(claimed)
            except BaseException as e:  # noqa: BLE001 - handed to the loop, which logs it
                outcome = e
            self._done.put(outcome)

    def collect(self, counts: dict[str, Any], timeout: float | None = None) -> None:
        """Counts the steps that have finished; with ``timeout``, first waits that long for
        one when none has."""
        try:
            outcome = (
                self._done.get(timeout=timeout) if timeout else self._done.get_nowait()
            )
        except queue.Empty:
            return
        while True:
            self.running -= 1
            if isinstance(outcome, BaseException):  # a bug in the reporting code
                logger.error(
                    "a step's run ended in an unexpected error: %r", outcome, exc_info=outcome
                )
                counts[_FAILED] += 1
            else:
                counts[outcome] += 1
            try:
                outcome = self._done.get_nowait()
            except queue.Empty:
                return

    def abandon(self) -> int:
        """Takes back the steps no thread has started; returns how many."""
        n = 0
        while True:
            try:
                claimed = self._work.get_nowait()
            except queue.Empty:
                return n
            if claimed is not None:
                n += 1
                self.running -= 1

    def shutdown(self, wait: bool) -> None:
        """Lets every thread finish its step and end (and waits for them when ``wait``)."""
        for _ in self._threads:
            self._work.put(None)
        if wait:
            for thread in self._threads:
                thread.join()


def _is_idle(status: dict[str, Any]) -> bool:
    return not (status.get("ready") or status.get("running") or status.get("waiting"))

