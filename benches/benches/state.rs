//! State transitions per second: the task and step machines ([`StepState::next`],
//! [`TaskState::next`]), each transition checked and recorded as an audit [`Transition`] (from,
//! to, event, attempt, time, reason where there is one), the way the task aggregate records
//! them; and the bare machines without the audit record, to show what recording costs.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Bencher, Criterion, Throughput};
use tasker_core::state::{StepEvent, TaskEvent, Transition};
use tasker_core::{StepState, TaskId, TaskState, Timestamp};

/// A step's life with one retry: claimed, failed, retry scheduled and due, claimed, completed.
const STEP_LIFE: [StepEvent; 6] = [
    StepEvent::Claim,
    StepEvent::Fail,
    StepEvent::ScheduleRetry,
    StepEvent::RetryDue,
    StepEvent::Claim,
    StepEvent::Complete,
];

/// A task's life: started, paused, resumed, completed.
const TASK_LIFE: [TaskEvent; 4] = [
    TaskEvent::Start,
    TaskEvent::Pause,
    TaskEvent::Resume,
    TaskEvent::Complete,
];

fn step_life(task: TaskId, name: &Arc<str>, at: Timestamp, trail: &mut Vec<Transition>) {
    let mut state = StepState::Pending;
    let mut attempt = 0;
    for event in STEP_LIFE {
        let to = state.next(black_box(event)).expect("a valid step life");
        if event == StepEvent::Claim {
            attempt += 1;
        }
        let t = Transition::step(task, 0, name, (state, to), event, attempt, at);
        trail.push(if event == StepEvent::Fail {
            t.because("gateway busy")
        } else {
            t
        });
        state = to;
    }
}

fn task_life(task: TaskId, at: Timestamp, trail: &mut Vec<Transition>) {
    let mut state = TaskState::Pending;
    for event in TASK_LIFE {
        let to = state.next(black_box(event)).expect("a valid task life");
        trail.push(Transition::task(task, Some(state), to, event, at));
        state = to;
    }
}

/// Runs `life` over one audit trail, emptied now and then as a store flushes it.
fn with_trail(b: &mut Bencher<'_>, mut life: impl FnMut(&mut Vec<Transition>)) {
    const ROOM: usize = 1 << 16;
    let mut trail = Vec::with_capacity(ROOM);
    b.iter(|| {
        if trail.len() > ROOM - STEP_LIFE.len().max(TASK_LIFE.len()) {
            trail.clear();
        }
        life(&mut trail)
    })
}

fn transitions(c: &mut Criterion) {
    let task = TaskId::new();
    let name: Arc<str> = Arc::from("charge");
    let at = chrono::Utc::now();
    let mut group = c.benchmark_group("state");

    group.throughput(Throughput::Elements(STEP_LIFE.len() as u64));
    group.bench_function("step-with-audit", |b| {
        with_trail(b, |trail| step_life(task, &name, at, trail))
    });
    group.bench_function("step-machine-only", |b| {
        b.iter(|| {
            let mut state = StepState::Pending;
            for event in STEP_LIFE {
                state = state.next(black_box(event)).expect("a valid step life");
            }
            state
        })
    });

    group.throughput(Throughput::Elements(TASK_LIFE.len() as u64));
    group.bench_function("task-with-audit", |b| {
        with_trail(b, |trail| task_life(task, at, trail))
    });
    group.bench_function("task-machine-only", |b| {
        b.iter(|| {
            let mut state = TaskState::Pending;
            for event in TASK_LIFE {
                state = state.next(black_box(event)).expect("a valid task life");
            }
            state
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = transitions
}
criterion_main!(benches);
