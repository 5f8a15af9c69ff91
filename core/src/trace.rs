//! Traces: every task carries a W3C trace context, stored with it, and an engine opened with
//! an OTLP endpoint exports a span per task (`task <namespace>/<name>`, from its creation to its
//! end) and per attempt (`step <name>`, from its claim to its report), whichever process
//! recorded them.
//!
//! The ids are what make the spans of several processes one trace: a task's span id is drawn
//! when it is created (its trace id is the caller's, from `traceparent`, or drawn too), and an
//! attempt's span id is derived from the task's trace, the step and the attempt number
//! ([`TaskTrace::attempt_span`]), so that the process that claimed a step hands its handler
//! the same id (`step.traceparent`) as the process that ends the attempt exports.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::KeyValue;

use crate::clock::Timestamp;
use crate::state::{Change, StepEvent, StepState, TaskOf, TaskState, Transition};

/// A task's trace context: its trace, its own span, and the caller's span it continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskTrace {
    /// The trace's id (the caller's, or drawn for the task).
    pub trace_id: [u8; 16],
    /// The task span's id.
    pub span_id: [u8; 8],
    /// The caller's span, the task span's parent (`None`: the task span is the trace's root).
    pub parent_span: Option<[u8; 8]>,
    /// The caller's sampled flag (true for a trace the task starts).
    pub sampled: bool,
}

/// Why a `traceparent` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("traceparent {text:?} is not a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>): {why}")]
pub struct TraceparentError {
    /// The text given.
    pub text: String,
    /// What is wrong with it.
    pub why: &'static str,
}

fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// The trace id, parent span id and flags of a W3C `traceparent` header (version 00; a later
/// version is read as 00 when its first four fields are well formed, as the spec says).
pub fn parse_traceparent(text: &str) -> Result<([u8; 16], [u8; 8], u8), TraceparentError> {
    let fail = |why| TraceparentError {
        text: text.chars().take(80).collect(),
        why,
    };
    let mut parts = text.trim().split('-');
    let (Some(version), Some(trace), Some(span), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(fail("it needs four fields separated by '-'"));
    };
    let version = hex_bytes::<1>(version).ok_or_else(|| fail("the version is not 2 hex digits"))?;
    if version[0] == 0xff {
        return Err(fail("version ff is not allowed"));
    }
    if version[0] == 0 && parts.next().is_some() {
        return Err(fail("version 00 has exactly four fields"));
    }
    let trace = hex_bytes::<16>(trace)
        .ok_or_else(|| fail("the trace id is not 32 lowercase hex digits"))?;
    let span =
        hex_bytes::<8>(span).ok_or_else(|| fail("the span id is not 16 lowercase hex digits"))?;
    let flags = hex_bytes::<1>(flags).ok_or_else(|| fail("the flags are not 2 hex digits"))?;
    if trace == [0; 16] {
        return Err(fail("the trace id is all zeros"));
    }
    if span == [0; 8] {
        return Err(fail("the span id is all zeros"));
    }
    Ok((trace, span, flags[0]))
}

/// A random non-zero id, from the operating system (a generator seeded in a process is copied
/// into the children it forks, which would repeat its ids).
fn random_bytes<const N: usize>() -> [u8; N] {
    loop {
        let mut out = [0u8; N];
        if getrandom::fill(&mut out).is_err() {
            for b in out.iter_mut() {
                *b = fastrand::u8(..);
            }
        }
        if out != [0; N] {
            return out;
        }
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit value of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Which tasks' spans are exported, decided when a task is created (the standard
/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`): a task not sampled exports no span,
/// in any process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Every task (`always_on`).
    Always,
    /// None (`always_off`).
    Never,
    /// A task whose trace id falls in the first `ratio` of the ids (`traceidratio`).
    Ratio(f64),
    /// As the caller's `traceparent` says, else by the sampler inside (`parentbased_*`; the
    /// default is `parentbased_always_on`).
    ParentBased(&'static Sampler),
}

impl Sampler {
    /// The sampler the variables name (`parentbased_always_on` when unset or unknown).
    pub fn from_env() -> Sampler {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_ascii_lowercase())
        };
        let ratio = || {
            var("OTEL_TRACES_SAMPLER_ARG")
                .and_then(|a| a.parse::<f64>().ok())
                .filter(|r| (0.0..=1.0).contains(r))
                .unwrap_or(1.0)
        };
        match var("OTEL_TRACES_SAMPLER").as_deref() {
            Some("always_on") => Sampler::Always,
            Some("always_off") => Sampler::Never,
            Some("traceidratio") => Sampler::Ratio(ratio()),
            Some("parentbased_always_off") => Sampler::ParentBased(&Sampler::Never),
            Some("parentbased_traceidratio") => {
                Sampler::ParentBased(Box::leak(Box::new(Sampler::Ratio(ratio()))))
            }
            _ => Sampler::ParentBased(&Sampler::Always),
        }
    }

    /// Whether a task of trace `trace_id` is sampled, its caller's flag `parent` (`None`
    /// without a caller).
    pub fn sampled(&self, trace_id: &[u8; 16], parent: Option<bool>) -> bool {
        match self {
            Sampler::Always => true,
            Sampler::Never => false,
            Sampler::Ratio(ratio) => {
                // As the SDKs do: the trace id's low 63 bits against the ratio of 2^63.
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                let bound = (ratio * (1u64 << 63) as f64) as u64;
                (u64::from_be_bytes(low) >> 1) < bound
            }
            Sampler::ParentBased(root) => parent.unwrap_or_else(|| root.sampled(trace_id, None)),
        }
    }
}

/// The sampler of this process (read from the variables once).
fn sampler() -> &'static Sampler {
    static SAMPLER: std::sync::OnceLock<Sampler> = std::sync::OnceLock::new();
    SAMPLER.get_or_init(Sampler::from_env)
}

impl TaskTrace {
    /// A new task's trace: continuing the caller's `traceparent`, or starting a trace; sampled
    /// as this process's `OTEL_TRACES_SAMPLER` says.
    pub fn new(traceparent: Option<&str>) -> Result<TaskTrace, TraceparentError> {
        let span_id = random_bytes();
        let (trace_id, parent_span, parent_sampled) = match traceparent {
            Some(text) => {
                let (trace_id, parent, flags) = parse_traceparent(text)?;
                (trace_id, Some(parent), Some(flags & 1 == 1))
            }
            None => (random_bytes(), None, None),
        };
        Ok(TaskTrace {
            trace_id,
            span_id,
            parent_span,
            sampled: sampler().sampled(&trace_id, parent_sampled),
        })
    }

    /// The task span's own context, as a `traceparent` (how the stores keep it).
    pub fn traceparent(&self) -> String {
        traceparent(&self.trace_id, &self.span_id, self.sampled)
    }

    /// The caller's span id in hex (how the stores keep it).
    pub fn parent_hex(&self) -> Option<String> {
        self.parent_span.map(|p| hex(&p))
    }

    /// The trace as stored: the task span's `traceparent` and the caller's span id (`None`
    /// when what is stored cannot be read: the task then has no trace).
    pub fn stored(traceparent: &str, parent: Option<&str>) -> Option<TaskTrace> {
        let (trace_id, span_id, flags) = parse_traceparent(traceparent).ok()?;
        Some(TaskTrace {
            trace_id,
            span_id,
            parent_span: parent.and_then(hex_bytes::<8>),
            sampled: flags & 1 == 1,
        })
    }

    /// The span id of attempt `attempt` of step `index`: the same in every process.
    pub fn attempt_span(&self, index: u32, attempt: u32) -> [u8; 8] {
        let task = u64::from_be_bytes(self.span_id);
        let id = mix(task ^ mix((u64::from(index) << 32) | u64::from(attempt)));
        if id == 0 {
            1u64.to_be_bytes()
        } else {
            id.to_be_bytes()
        }
    }

    /// The `traceparent` a handler of that attempt sees (`step.traceparent`): its spans are
    /// children of the attempt's.
    pub fn attempt_traceparent(&self, index: u32, attempt: u32) -> String {
        traceparent(
            &self.trace_id,
            &self.attempt_span(index, attempt),
            self.sampled,
        )
    }
}

fn traceparent(trace: &[u8; 16], span: &[u8; 8], sampled: bool) -> String {
    format!(
        "00-{}-{}-{}",
        hex(trace),
        hex(span),
        if sampled { "01" } else { "00" }
    )
}

/// Where an engine exports its spans: the OTLP endpoint it was opened with, else the standard
/// variables (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`); none when
/// `OTEL_SDK_DISABLED` is `true` or `OTEL_TRACES_EXPORTER` is `none`.
pub(crate) fn wanted(endpoint: Option<&str>) -> bool {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return false;
    }
    endpoint.is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
}

/// A span to export, as an operation leaves it: turned into OpenTelemetry's form on the
/// exporter's thread, so that the engine's hot path only queues it.
struct Ended {
    task_id: crate::ids::TaskId,
    of: Arc<TaskOf>,
    trace: TaskTrace,
    start: Timestamp,
    end: Timestamp,
    what: What,
}

enum What {
    /// The task's span, ended in `status`.
    Task(TaskState),
    /// Attempt `attempt` of step `index` (`name`), ended by `event` into `to`, for `reason`.
    Attempt {
        index: u32,
        attempt: u32,
        name: Arc<str>,
        event: StepEvent,
        to: StepState,
        reason: Option<String>,
    },
}

/// What the engine's threads and the exporter's share.
struct Queue {
    state: parking_lot::Mutex<Queued>,
    /// Wakes the exporter: a batch is full, or a flush or stop was asked for.
    wake: parking_lot::Condvar,
    /// Wakes those waiting for a flush or the stop.
    done: parking_lot::Condvar,
}

#[derive(Default)]
struct Queued {
    spans: Vec<Ended>,
    /// Flushes asked for, and done: a flush waits until `flushed` reaches its number.
    flushes: u64,
    flushed: u64,
    stop: bool,
    stopped: bool,
}

/// An engine's span exporter: OTLP over HTTP with protobuf, from a thread of its own, in
/// batches (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512, at least every
/// `OTEL_BSP_SCHEDULE_DELAY` ms, default 5,000) of a queue of `OTEL_BSP_MAX_QUEUE_SIZE` spans
/// (default 2,048; spans past it are dropped and counted).
///
/// The SDK's own tracer and batch processor cost ~2.5 µs a span on the engine's hot path
/// (attributes, names and span data built as each span ends, and a wake-up of the exporter's
/// thread for each); here a span is a few fields pushed on a vector, the exporter's thread is
/// woken once a batch, and it builds the rest.
pub(crate) struct Spans {
    queue: Arc<Queue>,
    capacity: usize,
    batch: usize,
    dropped: std::sync::atomic::AtomicU64,
    thread: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spans")
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

/// The number in variable `name`, else `default`.
fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

impl Spans {
    /// The exporter to `endpoint` (the base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT`: spans go to
    /// `<endpoint>/v1/traces`), else to where the `OTEL_*` variables say.
    pub fn open(endpoint: Option<&str>) -> crate::error::Result<Spans> {
        use opentelemetry_otlp::WithExportConfig;
        use opentelemetry_sdk::trace::SpanExporter as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
        let mut exporter = match endpoint {
            Some(endpoint) => {
                exporter.with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
            }
            None => exporter,
        }
        .build()
        .map_err(|e| crate::Error::InvalidArgument(format!("cannot export traces: {e}")))?;
        exporter.set_resource(&opentelemetry_sdk::Resource::builder().build());
        // Bounded: a queue is memory kept, and a delay is added to an instant.
        let capacity = env_number("OTEL_BSP_MAX_QUEUE_SIZE", 2048).min(1 << 20);
        let batch = env_number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).min(capacity);
        let delay = env_number("OTEL_BSP_SCHEDULE_DELAY", 5000).min(3_600_000);
        let delay = Duration::from_millis(delay as u64);
        let queue = Arc::new(Queue {
            state: parking_lot::Mutex::new(Queued::default()),
            wake: parking_lot::Condvar::new(),
            done: parking_lot::Condvar::new(),
        });
        let shared = queue.clone();
        let thread = std::thread::Builder::new()
            .name("tasker-spans".into())
            .spawn(move || export_loop(exporter, &shared, batch, delay))
            .map_err(|e| crate::Error::InvalidArgument(format!("cannot export traces: {e}")))?;
        Ok(Spans {
            queue,
            capacity,
            batch,
            dropped: std::sync::atomic::AtomicU64::new(0),
            thread: parking_lot::Mutex::new(Some(thread)),
        })
    }

    /// Queues the spans that the transitions of one operation end: a task's when it
    /// finished, an attempt's when it ended (of sampled tasks only).
    pub fn export(&self, transitions: &[Transition]) {
        for t in transitions {
            let Some(of) = &t.task else { continue };
            let Some(trace) = of.trace.filter(|t| t.sampled) else {
                continue;
            };
            let (start, what) = match t.change {
                Change::Task { to, .. } if to.is_finished() => (of.created_at, What::Task(to)),
                Change::Step {
                    index, event, to, ..
                } if ends_attempt(event) => match (t.since, &t.step_name) {
                    (Some(since), Some(name)) => (
                        since,
                        What::Attempt {
                            index,
                            attempt: t.attempt,
                            name: name.clone(),
                            event,
                            to,
                            reason: t.reason.clone(),
                        },
                    ),
                    _ => continue,
                },
                _ => continue,
            };
            let ended = Ended {
                task_id: t.task_id,
                of: of.clone(),
                trace,
                start,
                end: t.at,
                what,
            };
            let mut state = self.queue.state.lock();
            if state.spans.len() >= self.capacity || state.stopped {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                continue;
            }
            state.spans.push(ended);
            if state.spans.len() == self.batch {
                self.queue.wake.notify_one();
            }
        }
    }

    /// Sends the spans queued now, waiting up to 5 s.
    pub fn flush(&self) {
        let mut state = self.queue.state.lock();
        if state.stopped {
            return;
        }
        state.flushes += 1;
        let mine = state.flushes;
        self.queue.wake.notify_one();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while state.flushed < mine && !state.stopped {
            if self.queue.done.wait_until(&mut state, deadline).timed_out() {
                return;
            }
        }
    }

    /// Sends the spans still queued and stops the exporter's thread (waiting up to 5 s).
    pub fn shutdown(&self) {
        let dropped = self.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "spans dropped: the export queue was full (raise OTEL_BSP_MAX_QUEUE_SIZE, or \
                 sample with OTEL_TRACES_SAMPLER)"
            );
        }
        {
            let mut state = self.queue.state.lock();
            state.stop = true;
            self.queue.wake.notify_one();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !state.stopped {
                if self.queue.done.wait_until(&mut state, deadline).timed_out() {
                    return;
                }
            }
        }
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Spans {
    /// Sends the spans still queued and stops the exporter's thread.
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The exporter's thread: batches of `batch` spans, sent at least every `delay`, and at once
/// when a flush or the stop is asked for.
fn export_loop(
    mut exporter: opentelemetry_otlp::SpanExporter,
    queue: &Queue,
    batch: usize,
    delay: Duration,
) {
    use opentelemetry_sdk::trace::SpanExporter as _;
    let scope = opentelemetry::InstrumentationScope::builder("tasker-core").build();
    let mut taken = Vec::with_capacity(batch);
    loop {
        let (flushes, stop) = {
            let mut state = queue.state.lock();
            let deadline = std::time::Instant::now() + delay;
            while state.spans.len() < batch && state.flushed == state.flushes && !state.stop {
                if queue.wake.wait_until(&mut state, deadline).timed_out() {
                    break;
                }
            }
            std::mem::swap(&mut taken, &mut state.spans);
            (state.flushes, state.stop)
        };
        for chunk in taken.chunks(batch) {
            let spans = chunk.iter().map(|e| span_data(e, &scope)).collect();
            if let Err(e) = futures::executor::block_on(exporter.export(spans)) {
                tracing::warn!(error = %e, "could not export spans");
            }
        }
        taken.clear();
        let mut state = queue.state.lock();
        state.flushed = flushes;
        if stop {
            let _ = exporter.shutdown();
            state.stopped = true;
            queue.done.notify_all();
            return;
        }
        queue.done.notify_all();
    }
}

/// `ended` in OpenTelemetry's form.
fn span_data(
    ended: &Ended,
    scope: &opentelemetry::InstrumentationScope,
) -> opentelemetry_sdk::trace::SpanData {
    let trace = &ended.trace;
    let of = &ended.of;
    let mut attributes = vec![
        KeyValue::new("tasker.task_id", ended.task_id.to_string()),
        KeyValue::new("tasker.namespace", of.namespace.clone()),
        KeyValue::new("tasker.task", of.name.clone()),
    ];
    let (name, span, parent, kind, status) = match &ended.what {
        What::Task(status) => {
            attributes.push(KeyValue::new("tasker.status", status.as_str()));
            (
                format!("task {}/{}", of.namespace, of.name),
                trace.span_id,
                trace.parent_span,
                SpanKind::Internal,
                if *status == TaskState::Complete {
                    Status::Ok
                } else {
                    Status::error(status.as_str())
                },
            )
        }
        What::Attempt {
            index,
            attempt,
            name,
            event,
            to,
            reason,
        } => {
            attributes.extend([
                KeyValue::new("tasker.step", name.clone()),
                KeyValue::new("tasker.attempt", i64::from(*attempt)),
                KeyValue::new("tasker.outcome", event.as_str()),
                KeyValue::new("tasker.step_status", to.as_str()),
            ]);
            let ok = matches!(event, StepEvent::Complete | StepEvent::AwaitChildren);
            (
                format!("step {name}"),
                trace.attempt_span(*index, *attempt),
                Some(trace.span_id),
                SpanKind::Consumer,
                if ok {
                    Status::Ok
                } else {
                    Status::error(reason.clone().unwrap_or_else(|| event.as_str().to_owned()))
                },
            )
        }
    };
    let flags = if trace.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    opentelemetry_sdk::trace::SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(span),
            flags,
            false,
            TraceState::default(),
        ),
        parent_span_id: parent.map_or(SpanId::INVALID, SpanId::from_bytes),
        // The task span's parent is the caller's, in another process; an attempt's is the
        // task's, recorded by whichever process ended the task.
        parent_span_is_remote: parent.is_some(),
        span_kind: kind,
        name: name.into(),
        start_time: SystemTime::from(ended.start),
        end_time: SystemTime::from(ended.end),
        attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status,
        instrumentation_scope: scope.clone(),
    }
}

/// Whether a step transition ends an attempt (its span's end).
fn ends_attempt(event: StepEvent) -> bool {
    matches!(
        event,
        StepEvent::Complete
            | StepEvent::Fail
            | StepEvent::LeaseExpired
            | StepEvent::Release
            | StepEvent::AwaitChildren
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_traceparent_is_read_and_written_back() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace, span, flags) = parse_traceparent(text).unwrap();
        assert_eq!(traceparent(&trace, &span, flags & 1 == 1), text);
        let task = TaskTrace::new(Some(text)).unwrap();
        assert_eq!(task.trace_id, trace);
        assert_eq!(task.parent_span, Some(span));
        assert_ne!(task.span_id, span);
        assert_eq!(
            TaskTrace::stored(&task.traceparent(), task.parent_hex().as_deref()),
            Some(task)
        );
    }

    #[test]
    fn malformed_traceparents_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "four fields"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                "four fields",
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "ff",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "all zeros",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "lowercase",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                "exactly four",
            ),
        ] {
            let e = parse_traceparent(text).unwrap_err();
            assert!(e.to_string().contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_samplers_decide_as_the_standard_says() {
        let low = [0u8; 16];
        let mut high = [0u8; 16];
        high[8] = 0xff;
        assert!(Sampler::Always.sampled(&high, Some(false)));
        assert!(!Sampler::Never.sampled(&low, Some(true)));
        assert!(Sampler::Ratio(0.5).sampled(&low, None));
        assert!(!Sampler::Ratio(0.5).sampled(&high, None));
        assert!(!Sampler::Ratio(0.0).sampled(&low, None));
        let parent_based = Sampler::ParentBased(&Sampler::Never);
        assert!(parent_based.sampled(&high, Some(true)));
        assert!(!parent_based.sampled(&low, Some(false)));
        assert!(!parent_based.sampled(&low, None));
    }

    proptest! {
        #[test]
        fn a_ratio_samples_about_its_share_of_random_traces(ratio in 0.05f64..0.95, seed in any::<u64>()) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let n = 4000;
            let kept = (0..n)
                .filter(|_| {
                    let mut id = [0u8; 16];
                    rng.fill(&mut id);
                    Sampler::Ratio(ratio).sampled(&id, None)
                })
                .count() as f64;
            prop_assert!((kept / n as f64 - ratio).abs() < 0.05, "{kept} of {n} at {ratio}");
        }

        #[test]
        fn attempt_spans_are_the_same_everywhere_and_differ_per_attempt(
            span in any::<[u8; 8]>(), trace in any::<[u8; 16]>(),
            a in (0u32..1000, 1u32..50), b in (0u32..1000, 1u32..50),
        ) {
            let t = TaskTrace { trace_id: trace, span_id: span, parent_span: None, sampled: true };
            prop_assert_eq!(t.attempt_span(a.0, a.1), t.attempt_span(a.0, a.1));
            prop_assert_ne!(t.attempt_span(a.0, a.1), [0u8; 8]);
            if a != b {
                prop_assert_ne!(t.attempt_span(a.0, a.1), t.attempt_span(b.0, b.1));
            }
            let text = t.attempt_traceparent(a.0, a.1);
            let (tr, sp, _) = parse_traceparent(&text).unwrap();
            prop_assert_eq!(tr, trace);
            prop_assert_eq!(sp, t.attempt_span(a.0, a.1));
        }
    }
}
