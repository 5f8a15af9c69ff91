"""Type stubs of ``tasker_core._native``, the Rust half of the ``tasker_core`` package.

Every call that waits (for the store, or for work in ``claim`` and ``Subscription.next``)
releases the GIL. JSON payloads (contexts, results, inputs, event details) cross as plain
Python values: dict, list, str, int, float, bool and None.
"""

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, TypedDict

from typing_extensions import NotRequired, Self, TypeAlias

JSON: TypeAlias = Any
"""A JSON-serialisable value: dict (str keys), list, str, int, float, bool or None."""

TaskStatus: TypeAlias = Literal[
    "pending",
    "in_progress",
    "complete",
    "error",
    "cancelled",
    "paused",
    "resolved_manually",
]
StepStatus: TypeAlias = Literal[
    "pending",
    "in_progress",
    "complete",
    "error",
    "waiting_for_retry",
    "cancelled",
    "skipped",
    "resolved_manually",
    "waiting_for_children",
]

DEFAULT_URL: str
"""The store an ``Engine()`` opens without a URL: ``"sqlite://tasker.db"``."""

class TaskerError(Exception):
    """Base class of every error the engine raises."""

class TemplateError(TaskerError):
    """A template is malformed or invalid (a cycle, an unknown or duplicate step, bad YAML),
    or its version is registered already with other content."""

class NotFoundError(TaskerError):
    """No template, task or step has that name or id."""

class InvalidTransitionError(TaskerError):
    """The state machine refused the operation (e.g. cancelling a completed task)."""

class ClaimLostError(InvalidTransitionError):
    """A report on a claim that is no longer held: the lease expired and the step was handed
    out again, the task was cancelled, or the step was resolved by an operator."""

class StoreError(TaskerError):
    """The database failed, or the engine is closed ("the engine is closed")."""

    kind: str
    """How: ``"unavailable"`` (the database cannot be reached or the connection was lost; a
    retry may succeed), ``"timeout"`` (a statement, a lock wait or the wait for a connection ran
    out of time), ``"conflict"`` (a concurrent writer took a unique key; a serialization failure
    or a deadlock), ``"corrupt"`` (stored rows cannot be read), ``"other"``, or ``"closed"``
    (the engine was closed)."""

class InvalidArgumentError(TaskerError):
    """An argument is malformed: a store URL, an id string, a version string, an event
    pattern, or a value that is not JSON-serialisable or is past a limit (nested deeper than 64
    levels, larger than 1 MiB, an idempotency key longer than 255 bytes, a claim limit outside
    1…1000)."""

class IdempotencyConflictError(InvalidArgumentError):
    """``create_task`` with an idempotency key seen before, for another context or version."""

class InvalidContextError(InvalidArgumentError):
    """``create_task`` with a context that breaks its template's ``input_schema``; the
    message names each failing path (a JSON pointer such as ``/cart_items/0/quantity``)."""

class TemplateSummary(TypedDict):
    namespace: str
    name: str
    version: str
    steps: list[str]
    #: The steps' handler names, each once, in step order.
    handlers: list[str]
    #: ``"native"``, ``"rails"`` (Rails Tasker) or ``"tasker_core"``.
    format: str
    #: Each key of a foreign format that means nothing here, naming it (and its step).
    warnings: list[str]

class ClaimedStep(TypedDict):
    step_id: str
    task_id: str
    name: str
    handler: str
    namespace: str
    task_name: str
    attempt: int
    max_attempts: int
    context: JSON
    inputs: dict[str, JSON]
    lease_expires_at: str
    timeout_ms: int
    lease_ms: int
    config: dict[str, JSON]
    batch: NotRequired[dict[str, JSON]]
    traceparent: str | None

class Dependency(TypedDict):
    step: str
    requires_success: bool

class Progress(TypedDict):
    total: int
    pending: int
    in_progress: int
    complete: int
    waiting_for_retry: int
    error: int
    skipped: int
    cancelled: int
    resolved_manually: int
    waiting_for_children: int
    percent: float

class StepView(TypedDict):
    step_id: str
    name: str
    handler: str
    status: StepStatus
    attempts: int
    max_attempts: int
    result: JSON
    error: str | None
    depends_on: list[Dependency]
    started_at: str | None
    completed_at: str | None
    duration_ms: int | None
    next_attempt_at: str | None
    lease_owner: str | None
    lease_expires_at: str | None
    type: Literal["standard", "decision", "deferred_convergence", "batchable", "batch_worker"]
    chosen: list[str] | None
    skip_reason: Literal["not chosen", "a required parent failed", "another slice failed"] | None
    instance_of: str | None
    batch: JSON
    children: list[str] | None

class ParentView(TypedDict):
    task_id: str
    step: str

class TaskView(TypedDict):
    id: str
    namespace: str
    name: str
    version: str
    status: TaskStatus
    context: JSON
    priority: int
    idempotency_key: str | None
    parent: ParentView | None
    deadline_at: str | None
    traceparent: str | None
    progress: Progress
    steps: list[StepView]
    created_at: str
    updated_at: str
    completed_at: str | None

_Transition = TypedDict(
    "_Transition",
    {
        "step_id": str | None,
        "step": str | None,
        "from": str | None,
        "to": str,
        "event": str,
        "reason": str | None,
        "attempt": int,
        "at": str,
    },
)
TransitionView = _Transition

class WebhookDelivery(TypedDict):
    """One event sent to one webhook (see :meth:`Engine.webhook_deliveries`)."""

    id: str
    task_id: str
    event: str
    url: str
    status: Literal["pending", "delivering", "delivered", "failed"]
    attempts: int
    last_error: str | None
    created_at: str
    delivered_at: str | None

class LogLine(TypedDict):
    """One line an attempt logged (see :meth:`Engine.logs`)."""

    step: str
    step_index: int
    attempt: int
    at: str
    level: Literal["debug", "info", "warn", "error"]
    message: str

class GraphNode(TypedDict):
    name: str
    handler: str
    status: StepStatus
    instance_of: NotRequired[str]
    children: NotRequired[list[str]]

_GraphEdge = TypedDict("_GraphEdge", {"from": str, "to": str, "requires_success": bool})
GraphEdge = _GraphEdge

class GraphView(TypedDict):
    task_id: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]

class WorkStatus(TypedDict):
    ready: int
    running: int
    waiting: int
    next_due: str | None

class Event(TypedDict, total=False):
    name: str
    task_id: str
    step_id: str
    step_name: str
    attempt: int
    at: str
    detail: JSON

class Decision:
    """What the handler of a ``type: decision`` step returns::

        return tasker_core.Decision(["manager_approval"], result={"route": "medium"})

    Of the steps that depend on the decision step, the ones named in ``steps`` run; the others
    are skipped with the reason ``"not chosen"``, and so are the steps that require one of
    them. ``result`` (any JSON value, default None) is the step's own result, handed to its
    children. Naming a step that does not depend on it fails the step for good; so does a
    plain result from a decision step. ``steps`` must be a list of names (TypeError else).
    """

    def __init__(self, steps: list[str], result: JSON = None) -> None: ...
    @property
    def steps(self) -> list[str]:
        """The names of the dependents that run."""
    @property
    def result(self) -> JSON:
        """The decision step's own result."""

class Batch:
    """What the handler of a ``type: batchable`` step returns::

        return tasker_core.Batch(items=rows)            # each slice takes batch.size of them
        return tasker_core.Batch(total=10_000)          # each slice a range of 0..10000

    The engine runs the step's ``batch.worker`` step once per slice (``step.batch`` is
    ``{"index", "start", "end"}``, with ``"items"`` for a batch of items), at most
    ``batch.parallelism`` at once; the step after the worker gets the list of the slices'
    results in slice order. Exactly one of ``items`` and ``total`` (TypeError else); ``result``
    is the batchable step's own result.
    """

    def __init__(self, items: list[JSON] | None = None, *, total: int | None = None,
                 result: JSON = None) -> None: ...
    @property
    def items(self) -> list[JSON] | None: ...
    @property
    def total(self) -> int | None: ...
    @property
    def result(self) -> JSON: ...

class ChildTask:
    """A task a handler starts as a child of its step (see :class:`Children`): a task of
    ``namespace/name`` (its newest version unless ``version`` is given) with ``context``
    (default ``{}``). Children have their parent's priority."""

    def __init__(self, namespace: str, name: str, context: JSON = None,
                 version: str | None = None) -> None: ...
    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def context(self) -> JSON: ...
    @property
    def version(self) -> str | None: ...

class Children:
    """What a handler returns to start child tasks, of any template::

        return tasker_core.Children([ChildTask("billing", "invoice", {"customer": c})
                                     for c in customers])

    The step is ``waiting_for_children`` until every child has finished, then completes with
    the list of their results in order, each an object of the child's leaf steps' results by
    name; it fails for good as soon as one child fails or is cancelled (the others are
    cancelled). Cancelling the parent task cancels its children. A child's view has
    ``parent: {"task_id", "step"}``; the step's view lists ``children`` (their ids). At most
    1,000 children per step. ``tasks`` must hold ChildTask objects (TypeError else).
    """

    def __init__(self, tasks: list[ChildTask]) -> None: ...
    @property
    def tasks(self) -> list[ChildTask]: ...

class Engine:
    """The engine: templates, tasks, the worker protocol, views, operator verbs and events.

    ``Engine(url=None)`` opens ``"memory:"``, ``"sqlite:///path.db"`` or ``"postgres://…"``;
    without a URL, the SQLite file ``./tasker.db``. Usable as a context manager (closes on
    exit). After :meth:`close`, every call raises :class:`StoreError`.
    """

    def __init__(self, url: str | None = None, environment: str | None = None, *,
                 otlp_endpoint: str | None = None, metrics: bool = True,
                 allow_private_webhooks: bool = False) -> None:
        """``otlp_endpoint`` (a base URL such as ``http://127.0.0.1:4318``) exports spans
        there, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` would; ``metrics=False`` keeps no counters;
        ``allow_private_webhooks=True`` lets webhooks go to loopback and private addresses
        (see docs/signals.md)."""
    @property
    def environment(self) -> str | None:
        """The environment whose template overrides apply (``environment=``, else ``TASKER_ENV``,
        else ``RAILS_ENV``), or None."""
    def registered_handlers(self) -> list[str]:
        """The handler names of every template this engine has registered or read, each once,
        sorted (what ``Worker(engine, autoload=True)`` looks up)."""
    def register_template(self, template: str | dict[str, Any]) -> TemplateSummary:
        """Validates and stores a template given as YAML or JSON text or as a dict, in this
        engine's format, Rails Tasker's or tasker-core's (detected by its keys), with the
        overrides of the engine's ``environment`` applied.

        Returns ``{"namespace", "name", "version", "steps": [step names], "handlers": [handler
        names], "format", "warnings"}``: ``format`` is ``"native"``, ``"rails"`` or ``"tasker_core"``, and each
        warning names a key of a foreign format that means nothing here. Raises
        :class:`TemplateError` for a malformed or invalid template (the message names the
        offending steps) or a version registered already with other content.
        """
    def create_task(
        self,
        namespace: str,
        name: str,
        context: JSON = None,
        version: str | None = None,
        idempotency_key: str | None = None,
        priority: int = 0,
        run_at: datetime | str | None = None,
        delay: timedelta | float | None = None,
        traceparent: str | None = None,
    ) -> str:
        """Nothing of the task runs before ``run_at`` (naive datetimes are UTC) or until
        ``delay`` has passed (at most one of the two: InvalidArgumentError else). With
        ``traceparent`` (a W3C trace context) the task's span continues the caller's trace.
Starts a task of template ``namespace/name`` and returns its id.

        The newest version is used unless ``version`` is given. A second call with the same
        ``idempotency_key`` and context returns the first task's id; with another context (or
        another ``version``) it raises :class:`IdempotencyConflictError`. Steps of tasks with a
        higher ``priority`` are claimed first. Raises :class:`NotFoundError` for an unknown
        template, :class:`InvalidArgumentError` for a bad version string, a context that is not
        JSON or one past the limits (64 levels, 1 MiB; a key of 255 bytes).
        """
    def create_tasks(self, tasks: Iterable[Mapping[str, Any]]) -> list[str]:
        """Starts many tasks at once and returns their ids, in order. Each item is a mapping of
        :meth:`create_task`'s arguments (``namespace``, ``name``; optionally ``context``,
        ``version``, ``idempotency_key``, ``priority``). All are checked before any is written
        (NotFoundError, InvalidArgumentError, TypeError for an unknown key); those without an
        idempotency key are written in one transaction, several times faster than one by one.
        """
    def claim(
        self,
        worker_id: str,
        handlers: list[str] | None,
        limit: int,
        wait: float = 0.0,
    ) -> list[ClaimedStep]:
        """Claims up to ``limit`` ready steps whose handler is in ``handlers`` (any when None).

        Each step is leased to ``worker_id`` for its ``timeout_ms``. When none is ready, waits
        up to ``wait`` seconds (GIL released) for one. Higher-priority tasks come first.
        """
    def complete(self, step_id: str, attempt: int,
                 result: JSON | Decision | Batch | Children) -> None:
        """Reports a claimed attempt's result, a decision step's :class:`Decision` (its
        chosen dependents run, the others are skipped as not chosen), a batchable step's
        :class:`Batch` or the :class:`Children` it starts.

        Raises :class:`ClaimLostError` when the claim is no longer held and
        :class:`InvalidArgumentError` when ``result`` is not JSON-serialisable.
        """
    def fail(
        self,
        step_id: str,
        attempt: int,
        message: str,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        """Reports a claimed attempt's failure.

        A retryable failure is retried while attempts are left, after ``retry_after`` seconds
        when given, else after the step's backoff; a permanent one ends the step in ``error``.
        Raises :class:`ClaimLostError` when the claim is no longer held.
        """
    def heartbeat(self, step_id: str, attempt: int) -> str:
        """Extends a claimed attempt's lease by its timeout; returns the new expiry (RFC 3339).
        Raises :class:`ClaimLostError` when the claim is no longer held."""
    def task(self, task_id: str) -> TaskView:
        """The task with its steps: status, attempts, result, error, durations, progress."""
    def list_tasks(
        self,
        status: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        limit: int = 100,
    ) -> list[TaskView]:
        """Tasks, newest first, filtered by status, namespace and template name."""
    def transitions(self, task_id: str) -> list[TransitionView]:
        """The task's audit trail, oldest first: ``step_id``, ``step`` (None for the task
        itself), ``from``, ``to``, ``event``, ``reason``, ``attempt``, ``at``."""
    def logs(self, task_id: str, step: str | None = None) -> list[LogLine]:
        """The lines the task's attempts logged (``step.log`` and ``logging`` records emitted
        inside a handler), by step, attempt and line; of the step named ``step`` only, when
        given. Raises :class:`NotFoundError` for an unknown task or step."""
    def webhook_deliveries(self, task_id: str) -> list[WebhookDelivery]:
        """The task's webhook deliveries, oldest first: each event sent to each webhook of its
        template, with its status, attempts and last error. Raises :class:`NotFoundError` for
        an unknown task."""
    def deliver_webhooks(self) -> int:
        """Sends the store's due webhook deliveries now (running workers do every second);
        how many attempts it made."""
    def graph(self, task_id: str) -> GraphView:
        """The task's DAG: nodes (name, handler, status) and edges (from, to,
        requires_success)."""
    def cancel_task(self, task_id: str) -> None:
        """Cancels the task and its unfinished steps; later reports on its claims raise
        :class:`ClaimLostError`. Raises :class:`InvalidTransitionError` for a finished task."""
    def pause_task(self, task_id: str) -> None:
        """Pauses the task: none of its steps is handed out until it is resumed."""
    def resume_task(self, task_id: str) -> None:
        """Resumes a paused task."""
    def retry_task(self, task_id: str) -> None:
        """Runs a failed task again: its failed steps get a fresh attempt budget and the steps
        skipped on their account become pending."""
    def resolve_step(self, task_id: str, step: str, result: JSON) -> None:
        """An operator supplies the result of the step named ``step``; its dependents run as if
        it had completed. The step ends ``resolved_manually``."""
    def subscribe(self, pattern: str = "*") -> Subscription:
        """Subscribes to lifecycle events whose name matches the glob ``pattern``
        (``"step.*"``, ``"*.failed"``). Raises :class:`InvalidArgumentError` for a bad glob."""
    def metrics(self) -> str:
        """This engine's metrics in the Prometheus text format (OpenMetrics):
        ``tasker_tasks_total{namespace,name,status}``,
        ``tasker_steps_total{namespace,task,step,outcome}`` (completed, retried, failed, skipped,
        cancelled, resolved), the histograms ``tasker_step_duration_seconds`` and
        ``tasker_ready_to_claimed_seconds`` (by namespace, task and step),
        ``tasker_leases_expired_total`` — what this engine recorded since it opened — and
        ``tasker_ready_steps{handler}``, the store's claimable steps now."""
    def stats(self) -> dict[str, Any]:
        """What the store holds, counted (the same from every process): ``tasks`` and
        ``steps`` (status -> count), ``retries`` (scheduled), ``recovered`` (steps complete
        after more than one attempt), ``lease_expiries``, and ``handlers``: a list of
        ``{"handler", "finished", "mean_ms", "p95_ms"}`` over each handler's finished steps."""
    def work_status(self, handlers: list[str] | None = None) -> WorkStatus:
        """What work the store holds: ``ready`` (only steps of ``handlers`` when given),
        ``running``, ``waiting`` (for a retry) and ``next_due`` (RFC 3339 or None). Idle when
        the three counts are 0."""
    def schedule(self, name: str, cron: str, namespace: str, template: str,
                 context: JSON = None, timezone: str | None = None,
                 overlap: Literal["skip", "allow"] | None = None,
                 version: str | None = None) -> dict[str, Any]:
        """Registers (or replaces) a durable cron schedule: each tick of ``cron`` (5 fields, or
        6 with seconds first) in ``timezone`` (IANA, default UTC) creates one task of
        ``namespace/template`` with ``context``, however many engines share the store (key
        ``schedule:<name>:<tick>``). ``overlap="skip"`` (default) skips a tick while the last
        one's task runs. Returns the schedule: its fields with ``next_at``, ``last_task``,
        ``created_at``. InvalidArgumentError for a bad cron, zone or overlap."""
    def unschedule(self, name: str) -> bool:
        """Removes a schedule; whether there was one."""
    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule, by name."""
    def fire_schedules(self) -> int:
        """Creates the tasks of the ticks that fell due (workers do it every second); how
        many."""
    def purge(self, finished_before: datetime | str,
              statuses: list[TaskStatus] | None = None) -> int:
        """Deletes the tasks that finished before ``finished_before`` in one of ``statuses``
        (default: every finished state; an unfinished one is InvalidArgumentError), with their
        steps and transitions; returns how many. Their idempotency keys may be used again."""
    def tend_children(self) -> int:
        """Makes good the child tasks' follow-ups a crash left undone (workers do it every few
        seconds): settles each step whose children all finished (or of which one failed) and
        cancels each unfinished child no step waits for any more. Returns how many tasks it
        changed."""
    def reclaim_expired(self) -> int:
        """Gives back every step whose lease has expired; returns how many."""
    def migrate(self) -> None:
        """Applies the store's schema migrations not applied yet (opening does it too)."""
    def close(self) -> None:
        """Closes the engine: every later call raises :class:`StoreError`."""
    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...

class Subscription:
    """A subscription to lifecycle events, made by :meth:`Engine.subscribe`.

    Events are dicts: ``name``, ``task_id``, ``step_id``, ``step_name`` and ``attempt`` (for a
    step's events), ``at`` and ``detail``. A slow subscriber loses events (counted in
    :attr:`dropped`) instead of slowing the engine.
    """

    def next(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after ``timeout`` seconds (None: wait until one comes).
        Waits with the GIL released."""
    def __iter__(self) -> Iterator[Event]:
        """Yields events as they come, forever (blocking)."""
    def __next__(self) -> Event: ...
    @property
    def dropped(self) -> int:
        """Events lost because this subscriber's queue was full."""
    @property
    def pattern(self) -> str:
        """The glob this subscription matches."""

class WorkerRuns:
    """One worker's configuration and its runs, one at a time (what ``Worker`` keeps)."""

    def __init__(
        self,
        engine: Engine,
        concurrency: int,
        worker_id: str | None = None,
        poll_interval: float = 0.1,
        drain_timeout: float = 30.0,
    ) -> None:
        """Raises ValueError naming the argument that is wrong."""
    def start(
        self,
        handlers: list[str],
        until_idle: bool,
        timeout: float | None = None,
        step_type: type | None = None,
    ) -> WorkerSession:
        """Starts a run; RuntimeError while one is under way or without handlers. With
        ``step_type`` (``tasker_core.Step``) the session's ``next`` returns its instances."""
    def stop(self) -> None:
        """Stops the run under way, or the next one to start."""
    def end(self) -> None:
        """The run has returned."""
    @property
    def running(self) -> bool: ...
    @property
    def worker_id(self) -> str: ...

class WorkerSession:
    """One run of the core's worker session (from ``WorkerRuns.start``): Python threads ask
    for the next attempt, run its handler and hand the outcome back; slots, claim and report
    batching, lease renewal, timeouts, store back-off, drain and idleness are the core's."""

    def next(self, wait: float = 0.1) -> Any:
        """The next attempt (a step dict, or a ``step_type`` instance), or None; waits up to
        ``wait`` s with the GIL released."""
    def complete(self, step_id: str, attempt: int, result: Any) -> str | None:
        """Hands back a result (or a :class:`Decision`, :class:`Batch` or :class:`Children`):
        None when taken, else why it was refused."""
    def fail(
        self,
        step_id: str,
        attempt: int,
        message: str,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> str | None:
        """Hands back a failure: None when taken, else why it was refused."""
    def timed_out(self, step_id: str, attempt: int) -> str | None:
        """The host cancelled the handler at its deadline."""
    def heartbeat(self, step_id: str, attempt: int) -> str:
        """Renews the lease now; the new expiry (RFC 3339)."""
    def publish(self, step_id: str, attempt: int, name: str, payload: Any = None) -> None:
        """Publishes a custom event the step's template declares, from a running attempt.
        Raises :class:`InvalidArgumentError` when it is not declared or the payload breaks its
        schema, :class:`ClaimLostError` when the attempt is no longer held."""
    def log(self, step_id: str, attempt: int, message: str, level: str = "info") -> bool:
        """Keeps a line of the running attempt's log; whether it was kept. Raises
        :class:`InvalidArgumentError` for an unknown level."""
    def stop(self) -> None:
        """Drain: no new claims; running handlers finish (up to drain_timeout)."""
    def abort(self) -> None:
        """End now: what is not reported is released (the attempt not counted)."""
    @property
    def finished(self) -> bool: ...
    def result(self, wait: float = 0.1) -> dict[str, Any] | None:
        """The counts {completed, failed, lost, released, idle} once ended, else None."""
