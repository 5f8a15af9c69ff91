//! `tasker watch`: a progress bar per task (indicatif), redrawn as the store changes; on a
//! stream that is not a terminal, a line per change instead (JSON lines with `--json`).

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use tasker_core::view::Progress;
use tasker_core::{Engine, TaskFilter, TaskId, TaskState, TaskView};

use crate::{printable, Failure, Outcome};

/// A task's steps that will not run again: its total less those pending, in progress, or
/// waiting for a retry or for children.
pub fn finished(p: &Progress) -> u32 {
    let open = p.pending + p.in_progress + p.waiting_for_retry + p.waiting_for_children;
    p.total.saturating_sub(open)
}

/// What a task's line or bar shows.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    status: TaskState,
    finished: u32,
    total: u32,
    running: Vec<String>,
}

impl Seen {
    fn of(task: &TaskView) -> Seen {
        Seen {
            status: task.status,
            finished: finished(&task.progress),
            total: task.progress.total,
            running: task
                .steps
                .iter()
                .filter(|s| s.status == tasker_core::StepState::InProgress)
                .map(|s| s.name.clone())
                .collect(),
        }
    }

    fn message(&self) -> String {
        if self.running.is_empty() {
            self.status.to_string()
        } else {
            format!("{} ({})", self.status, self.running.join(", "))
        }
    }
}

/// The bars, or the lines that stand for them.
struct Board {
    json: bool,
    bars: MultiProgress,
    shown: HashMap<TaskId, (ProgressBar, Seen)>,
}

impl Board {
    fn new(json: bool) -> Board {
        let bars = MultiProgress::with_draw_target(if json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        Board {
            json,
            bars,
            shown: HashMap::new(),
        }
    }

    /// Shows `task` as it is now: a new bar, a bar moved, or a line when it changed; `false`
    /// once stdout is closed (`tasker watch | head -1`).
    fn show(&mut self, task: &TaskView) -> bool {
        let seen = Seen::of(task);
        let bar = match self.shown.get(&task.id) {
            Some((_, before)) if *before == seen => return true,
            Some((bar, _)) => bar.clone(),
            None => {
                let bar = self.bars.add(ProgressBar::new(u64::from(seen.total)));
                // The template is a constant: it parses.
                if let Ok(style) =
                    ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg}")
                {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_prefix(printable(&format!(
                    "{} {}/{}",
                    task.id, task.namespace, task.name
                )));
                bar
            }
        };
        bar.set_length(u64::from(seen.total));
        bar.set_position(u64::from(seen.finished));
        bar.set_message(printable(&seen.message()));
        let open = !bar.is_hidden() || self.line(task, &seen);
        if seen.status.is_finished() {
            bar.finish();
        }
        self.shown.insert(task.id, (bar, seen));
        open
    }

    /// A change as a line on stdout (the bars are not drawn: stderr is not a terminal);
    /// `false` when stdout is closed.
    fn line(&self, task: &TaskView, seen: &Seen) -> bool {
        use std::io::Write as _;
        let text = if self.json {
            let line = json!({
                "task_id": task.id,
                "status": seen.status,
                "finished": seen.finished,
                "total": seen.total,
                "running": seen.running,
            });
            format!("{line}\n")
        } else {
            printable(&format!(
                "{} {}/{} {}/{} {}\n",
                task.id,
                task.namespace,
                task.name,
                seen.finished,
                seen.total,
                seen.message()
            ))
        };
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_ok()
    }
}

/// Watches task `id` until it finishes, or (without one) every unfinished task: until none is
/// left when `until_idle`, else until interrupted.
pub async fn run(
    engine: &Engine,
    json: bool,
    id: Option<TaskId>,
    every: Duration,
    until_idle: bool,
) -> Outcome {
    let mut board = Board::new(json);
    // One wait for Ctrl-C for the whole run: a press while the store is read is not lost.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let watched: Vec<TaskView> = match id {
            Some(id) => vec![engine.task(id).await?],
            None => unfinished(engine, &board).await?,
        };
        for task in &watched {
            if !board.show(task) {
                return Ok(());
            }
        }
        let open = watched.iter().any(|t| !t.status.is_finished());
        if !open && (id.is_some() || until_idle) {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = &mut interrupted => return Ok(()),
        }
    }
}

/// The unfinished tasks (at most 50 per state, newest first), and those shown before that
/// have finished since (once more, to show how they ended).
async fn unfinished(engine: &Engine, board: &Board) -> Result<Vec<TaskView>, Failure> {
    let mut out = Vec::new();
    for status in [TaskState::InProgress, TaskState::Pending, TaskState::Paused] {
        let filter = TaskFilter {
            status: Some(status),
            limit: 50,
            ..TaskFilter::default()
        };
        out.extend(engine.list_tasks(&filter).await?);
    }
    let listed: Vec<TaskId> = out.iter().map(|t| t.id).collect();
    for (id, (_, seen)) in &board.shown {
        if !seen.status.is_finished() && !listed.contains(id) {
            match engine.task(*id).await {
                Ok(task) => out.push(task),
                // Purged meanwhile: nothing more to show.
                Err(e) if e.kind() == tasker_core::error::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(out)
}
