//! An engine's Prometheus metrics ([`crate::Engine::metrics`]): counters and histograms of what
//! this engine recorded, fed from the transitions of every operation it runs, and the store's
//! ready steps read when the text is made.
//!
//! Counters count what this process did (as Prometheus expects of each process it scrapes: a
//! query sums them over the processes); `tasker_ready_steps` is the store's, the same from
//! every process. The text is the OpenMetrics text format, which Prometheus reads.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::clock::Timestamp;
use crate::events::names;
use crate::state::{Change, StepEvent, TaskOf, Transition};

/// A label value of a template's or a handler's name, escaped as the text format needs it
/// (`\\`, `\"` and `\n`): prometheus-client writes values as they are, and the names are a
/// template author's, who could otherwise break every scrape or write series of their own.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Text<T>(T);

impl<T: AsRef<str>> EncodeLabelValue for Text<T> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        escape_label(self.0.as_ref(), encoder)
    }
}

/// Writes `value` to `out` with `\`, `"` and line feeds escaped (the text format's rule for
/// label values).
fn escape_label(value: &str, out: &mut impl std::fmt::Write) -> std::fmt::Result {
    let mut rest = value;
    while let Some(i) = rest.find(['\\', '"', '\n']) {
        out.write_str(&rest[..i])?;
        out.write_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        })?;
        rest = &rest[i + 1..];
    }
    out.write_str(rest)
}

/// `tasker_tasks_total`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    namespace: Text<Arc<str>>,
    name: Text<Arc<str>>,
    status: &'static str,
}

/// `tasker_steps_total`'s labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    namespace: Text<Arc<str>>,
    task: Text<Arc<str>>,
    step: Text<Arc<str>>,
    outcome: &'static str,
}

/// The histograms' labels: one step of one template.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepOf {
    namespace: Text<Arc<str>>,
    task: Text<Arc<str>>,
    step: Text<Arc<str>>,
}

/// `tasker_ready_steps`'s label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabel {
    handler: Text<String>,
}

type Histograms = Family<StepOf, Histogram, fn() -> Histogram>;

/// The buckets of both histograms, in seconds: 1 ms to ~65 s, doubling.
fn seconds_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
    ))
}

/// One engine's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    tasks: Family<TaskLabels, Counter>,
    steps: Family<StepLabels, Counter>,
    step_duration: Histograms,
    ready_to_claimed: Histograms,
    leases_expired: Counter,
    ready: Family<HandlerLabel, Gauge>,
    /// One text made at a time (the ready gauge is set, then read).
    render: parking_lot::Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let tasks = Family::default();
        let steps = Family::default();
        let step_duration: Histograms = Family::new_with_constructor(seconds_histogram);
        let ready_to_claimed: Histograms = Family::new_with_constructor(seconds_histogram);
        let leases_expired = Counter::default();
        let ready = Family::default();
        let mut registry = Registry::default();
        registry.register(
            "tasker_tasks",
            "Tasks that entered each status, by template",
            tasks.clone(),
        );
        registry.register(
            "tasker_steps",
            "Step outcomes: completed, retried (an attempt failed or its lease ran out, to run \
             again), failed (for good), skipped, cancelled, resolved",
            steps.clone(),
        );
        registry.register(
            "tasker_step_duration_seconds",
            "How long an attempt ran, from its claim to its report (or to when its lease was found \
             expired)",
            step_duration.clone(),
        );
        registry.register(
            "tasker_ready_to_claimed_seconds",
            "How long a step waited between becoming claimable and its claim",
            ready_to_claimed.clone(),
        );
        registry.register(
            "tasker_leases_expired",
            "Attempts whose lease ran out before their worker reported",
            leases_expired.clone(),
        );
        registry.register(
            "tasker_ready_steps",
            "Steps claimable now in the store, by handler",
            ready.clone(),
        );
        Metrics {
            registry,
            tasks,
            steps,
            step_duration,
            ready_to_claimed,
            leases_expired,
            ready,
            render: parking_lot::Mutex::new(()),
        }
    }

    /// Counts the transitions of one operation.
    pub fn observe(&self, transitions: &[Transition]) {
        for (i, t) in transitions.iter().enumerate() {
            let Some(template) = &t.task else {
                continue;
            };
            match t.change {
                Change::Task { to, .. } => {
                    self.tasks
                        .get_or_create(&TaskLabels {
                            namespace: Text(template.namespace.clone()),
                            name: Text(template.name.clone()),
                            status: to.as_str(),
                        })
                        .inc();
                }
                Change::Step { event, .. } => self.observe_step(transitions, i, template, event),
            }
        }
    }

    fn observe_step(
        &self,
        transitions: &[Transition],
        i: usize,
        template: &TaskOf,
        event: StepEvent,
    ) {
        let t = &transitions[i];
        let Some(step) = &t.step_name else {
            return;
        };
        // A batch worker's slices (`work[3]`) count as their step (`work`): one series per
        // template step, however many slices.
        let step = &template_step(step);
        let of = || StepOf {
            namespace: Text(template.namespace.clone()),
            task: Text(template.name.clone()),
            step: Text(step.clone()),
        };
        // The outcome, and whether the transition ends an attempt (timed by the histogram).
        let (outcome, ends_attempt) = match event {
            StepEvent::Claim => {
                if let Some(since) = t.since {
                    self.ready_to_claimed
                        .get_or_create(&of())
                        .observe(seconds(since, t.at));
                }
                return;
            }
            StepEvent::Complete => ("completed", true),
            StepEvent::Fail | StepEvent::LeaseExpired => {
                if event == StepEvent::LeaseExpired {
                    self.leases_expired.inc();
                }
                // Failed for good when the engine publishes `step.failed` for it.
                let names = crate::engine::event_names(transitions, i);
                let failed = names
                    .iter()
                    .flatten()
                    .any(|(n, _)| *n == names::STEP_FAILED);
                (if failed { "failed" } else { "retried" }, true)
            }
            StepEvent::Skip => ("skipped", false),
            StepEvent::Cancel => ("cancelled", false),
            StepEvent::ResolveManually => ("resolved", false),
            _ => return,
        };
        if ends_attempt {
            if let Some(since) = t.since {
                self.step_duration
                    .get_or_create(&of())
                    .observe(seconds(since, t.at));
            }
        }
        self.steps
            .get_or_create(&StepLabels {
                namespace: Text(template.namespace.clone()),
                task: Text(template.name.clone()),
                step: Text(step.clone()),
                outcome,
            })
            .inc();
    }

    /// The text, with the store's ready steps per handler.
    pub fn render(&self, ready: &[(String, u64)]) -> String {
        let _one = self.render.lock();
        self.ready.clear();
        for (handler, count) in ready {
            self.ready
                .get_or_create(&HandlerLabel {
                    handler: Text(handler.clone()),
                })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The template step's name of step `name`: an instance of a batch worker (`work[3]`) is its
/// worker step's.
fn template_step(name: &Arc<str>) -> Arc<str> {
    match name.strip_suffix(']').and_then(|n| n.rsplit_once('[')) {
        Some((step, k)) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) => step.into(),
        _ => name.clone(),
    }
}

/// The seconds from `since` to `at` (0 when the clock went back).
fn seconds(since: Timestamp, at: Timestamp) -> f64 {
    ((at - since).num_microseconds().unwrap_or(0).max(0) as f64) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The text format's unescaping of a label value.
    fn unescape(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        }
        out
    }

    proptest! {
        #[test]
        fn an_escaped_label_has_no_line_or_bare_quote_and_reads_back(value in ".*") {
            let mut text = String::new();
            escape_label(&value, &mut text).unwrap();
            prop_assert!(!text.contains('\n'));
            let bare_quote = text
                .char_indices()
                .any(|(i, c)| c == '"' && text[..i].chars().rev().take_while(|&b| b == '\\').count() % 2 == 0);
            prop_assert!(!bare_quote, "{text:?}");
            prop_assert_eq!(unescape(&text), value);
        }
    }

    #[test]
    fn a_name_with_quotes_and_lines_cannot_write_a_series_of_its_own() {
        let metrics = Metrics::new();
        let forged = "x\"} 1\ntasker_leases_expired_total 9999\n#";
        let text = metrics.render(&[(forged.to_owned(), 3)]);
        assert!(
            text.contains(
                r#"tasker_ready_steps{handler="x\"} 1\ntasker_leases_expired_total 9999\n#"} 3"#
            ),
            "{text}"
        );
        assert!(!text.contains("9999\n"), "a forged line: {text}");
    }

    #[test]
    fn a_slice_is_labelled_by_its_template_step() {
        for (name, step) in [
            ("work[3]", "work"),
            ("work[12]", "work"),
            ("work", "work"),
            ("a[b]", "a[b]"),
            ("x[]", "x[]"),
        ] {
            assert_eq!(&*template_step(&Arc::from(name)), step);
        }
    }
}
