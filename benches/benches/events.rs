//! The event bus: publish → deliver throughput with 1, 8 and 64 subscribers that keep up, plus
//! one slow subscriber (it takes an event, then sleeps a millisecond) in every configuration.
//! A figure is the time from the first publish of a batch until every subscriber that keeps up
//! has received (or, were its queue full, lost) every event of it. The slow subscriber must not
//! slow the publisher: it loses events instead, and the table after the run counts them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use tasker_core::events::names;
use tasker_core::{Event, EventBus, Subscription, TaskId};
use tasker_core_benches::report::{self, human_rate, Table};

/// Events per measured iteration.
const BATCH: u64 = 10_000;
/// Queue of a subscriber that keeps up (room for a burst while 64 threads share two cores).
const FAST_CAPACITY: usize = 1 << 16;
const GROUP: &str = "event_bus";

struct Subscriber {
    dropped: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Subscriber {
    /// Events received plus events lost.
    fn seen(&self) -> u64 {
        self.received.load(Ordering::Acquire) + self.dropped.load(Ordering::Acquire)
    }
}

fn spawn_subscriber(
    sub: Subscription,
    stop: Arc<AtomicBool>,
    pause: Option<Duration>,
) -> Subscriber {
    let dropped = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let (d, r) = (dropped.clone(), received.clone());
    let thread = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            // One that keeps up takes what is queued in one go; the slow one takes one event,
            // then dawdles.
            let mut got = match pause {
                None => sub.drain().len() as u64,
                Some(_) => 0,
            };
            if got == 0 && sub.next_timeout(Duration::from_millis(20)).is_some() {
                got = 1;
                if let Some(pause) = pause {
                    std::thread::sleep(pause);
                }
            }
            r.fetch_add(got, Ordering::Release);
            d.store(sub.dropped(), Ordering::Release);
        }
    });
    Subscriber {
        dropped,
        received,
        thread,
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut table = Table::new(
        "Event bus: publish → deliver, 10,000-event batches, one slow subscriber in every row",
        &[
            "subscribers keeping up",
            "events/s",
            "deliveries/s",
            "lost by those keeping up",
            "slow one: received",
            "slow one: lost",
        ],
    );
    let task = TaskId::new();
    let at = chrono::Utc::now();
    let mut group = c.benchmark_group(GROUP);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(BATCH));
    for fast in [1usize, 8, 64] {
        let bus = EventBus::new();
        let stop = Arc::new(AtomicBool::new(false));
        let subscribers: Vec<Subscriber> = (0..fast)
            .map(|_| {
                let sub = bus
                    .subscribe_with_capacity("step.*", FAST_CAPACITY)
                    .expect("a valid pattern");
                spawn_subscriber(sub, stop.clone(), None)
            })
            .collect();
        let slow = spawn_subscriber(
            bus.subscribe("*").expect("a valid pattern"),
            stop.clone(),
            Some(Duration::from_millis(1)),
        );
        let mut published = 0u64;
        let id = format!("{fast}");
        group.bench_function(BenchmarkId::new("publish-deliver", &id), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for i in 0..iters * BATCH {
                    bus.publish(
                        Event::new(names::STEP_COMPLETED, task, at)
                            .with_attempt(i as u32)
                            .with_detail(serde_json::Value::Null),
                    );
                }
                published += iters * BATCH;
                for s in &subscribers {
                    while s.seen() < published {
                        std::thread::yield_now();
                    }
                }
                started.elapsed()
            })
        });
        stop.store(true, Ordering::Relaxed);
        let fast_lost: u64 = subscribers
            .iter()
            .map(|s| s.dropped.load(Ordering::Relaxed))
            .sum();
        for s in subscribers {
            let _ = s.thread.join();
        }
        let (slow_received, slow_lost) = (
            slow.received.load(Ordering::Relaxed),
            slow.dropped.load(Ordering::Relaxed),
        );
        let _ = slow.thread.join();
        assert!(
            slow_received + slow_lost <= published,
            "the slow subscriber saw more events than were published"
        );
        if let Some(ns) = report::mean_ns(GROUP, "publish-deliver", &id) {
            let per_second = BATCH as f64 / (ns / 1e9);
            table.row(vec![
                format!("{fast}"),
                human_rate(per_second),
                human_rate(
                    per_second
                        * fast as f64
                        * (1.0 - fast_lost as f64 / (published as f64 * fast as f64)),
                ),
                format!("{fast_lost}"),
                format!("{slow_received}"),
                format!("{slow_lost} of {published}"),
            ]);
        }
    }
    group.finish();
    c.final_summary();
    table.print();
}
