//! Which steps may run now.
//!
//! Two forms that must agree (a property test checks it):
//!
//! * the **incremental** form keeps, per step, [`Counters`] of parents that have not finished and
//!   of required parents that finished without success; [`propagate`] updates them in
//!   O(out-degree) when a step finishes, and cascades skips;
//! * the **full** form, [`evaluate`], recomputes everything from the steps' states; stores use it
//!   after operator verbs and for recovery, tests use it as the reference.
//!
//! A step is *ready* when it is pending, every parent has finished and every parent it requires
//! to succeed has succeeded. A pending step with a required parent that failed for good is
//! *doomed*: it is skipped, and its own children learn that it failed.

use crate::state::StepState;
use crate::template::TaskGraph;

/// Per-step readiness counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Parents that have not finished yet.
    pub unfinished_parents: u32,
    /// Parents joined by a `requires_success` edge that finished without success.
    pub failed_required_parents: u32,
}

impl Counters {
    /// All parents have finished, and every required one succeeded.
    pub fn is_clear(self) -> bool {
        self.unfinished_parents == 0 && self.failed_required_parents == 0
    }
}

/// How a finished step looks to its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Complete or resolved manually.
    Succeeded,
    /// Failed for good, skipped or cancelled.
    Failed,
}

impl Outcome {
    /// The outcome of a step in `state`, if it has finished.
    pub fn of(state: StepState) -> Option<Outcome> {
        if state.is_success() {
            Some(Outcome::Succeeded)
        } else if state.is_finished() {
            Some(Outcome::Failed)
        } else {
            None
        }
    }
}

/// The readiness of one step, as the full evaluation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pending and clear to run.
    Ready,
    /// Pending, waiting for parents.
    Waiting,
    /// Pending, but a required parent failed for good: it must be skipped.
    Doomed,
    /// Not pending: running, finished or waiting for a retry.
    NotPending,
}

/// Counters of a task in which no step has finished.
pub fn initial_counters(graph: &TaskGraph) -> Vec<Counters> {
    (0..graph.len() as u32)
        .map(|i| Counters {
            unfinished_parents: graph.parents(i).len() as u32,
            failed_required_parents: 0,
        })
        .collect()
}

/// The effect of one parent finishing on one child's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEffect {
    /// The child still waits (or was already doomed).
    Unchanged,
    /// The child's last parent finished well: it is ready if pending.
    Ready,
    /// The first required parent failed: the child is doomed if pending.
    Doomed,
}

/// Applies a parent's `outcome` to one child's counters over an edge that does or does not
/// `require_success`. For stores that update children one row at a time.
pub fn apply_parent_outcome(
    counters: &mut Counters,
    requires_success: bool,
    outcome: Outcome,
) -> ChildEffect {
    counters.unfinished_parents = counters.unfinished_parents.saturating_sub(1);
    if requires_success && outcome == Outcome::Failed {
        counters.failed_required_parents += 1;
        if counters.failed_required_parents == 1 {
            return ChildEffect::Doomed;
        }
        return ChildEffect::Unchanged;
    }
    if counters.is_clear() {
        ChildEffect::Ready
    } else {
        ChildEffect::Unchanged
    }
}

/// What one finish released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    /// Pending steps that became ready.
    pub ready: Vec<u32>,
    /// Pending steps that were skipped (their state is set to [`StepState::Skipped`]).
    pub skipped: Vec<u32>,
}

/// The incremental form: step `index` has finished with `outcome`. Updates the counters of its
/// children, marks doomed pending descendants `Skipped` (cascading), and reports what became
/// ready or was skipped. O(out-degree) per finished step, skips included.
pub fn propagate(
    graph: &TaskGraph,
    counters: &mut [Counters],
    states: &mut [StepState],
    index: u32,
    outcome: Outcome,
) -> Release {
    let mut release = Release::default();
    propagate_into(graph, counters, states, index, outcome, &mut release);
    release
}

/// [`propagate`] appending to an existing [`Release`] (no allocation when nothing is released).
pub fn propagate_into(
    graph: &TaskGraph,
    counters: &mut [Counters],
    states: &mut [StepState],
    index: u32,
    outcome: Outcome,
    release: &mut Release,
) {
    let mut stack = vec![];
    let mut current = (index, outcome);
    loop {
        let (parent, outcome) = current;
        for edge in graph.children(parent) {
            let child = edge.step as usize;
            let effect = apply_parent_outcome(&mut counters[child], edge.requires_success, outcome);
            if states[child] != StepState::Pending {
                continue;
            }
            match effect {
                ChildEffect::Ready => release.ready.push(edge.step),
                ChildEffect::Doomed => {
                    states[child] = StepState::Skipped;
                    release.skipped.push(edge.step);
                    stack.push((edge.step, Outcome::Failed));
                }
                ChildEffect::Unchanged => {}
            }
        }
        match stack.pop() {
            Some(next) => current = next,
            None => break,
        }
    }
}

/// The full form: counters and verdicts recomputed from the states alone.
pub fn evaluate(graph: &TaskGraph, states: &[StepState]) -> (Vec<Counters>, Vec<Verdict>) {
    let mut counters = vec![Counters::default(); graph.len()];
    let mut verdicts = Vec::with_capacity(graph.len());
    for (i, c) in counters.iter_mut().enumerate() {
        for edge in graph.parents(i as u32) {
            match Outcome::of(states[edge.step as usize]) {
                None => c.unfinished_parents += 1,
                Some(Outcome::Failed) if edge.requires_success => c.failed_required_parents += 1,
                Some(_) => {}
            }
        }
        verdicts.push(if states[i] != StepState::Pending {
            Verdict::NotPending
        } else if c.failed_required_parents > 0 {
            Verdict::Doomed
        } else if c.unfinished_parents > 0 {
            Verdict::Waiting
        } else {
            Verdict::Ready
        });
    }
    (counters, verdicts)
}

/// Skips every doomed pending step (cascading) and returns the recomputed counters, the steps
/// skipped and the steps ready: the recovery form used after operator verbs.
pub fn settle(graph: &TaskGraph, states: &mut [StepState]) -> (Vec<Counters>, Release) {
    let mut release = Release::default();
    // Parents come before children in topological order, so one pass sees every doom.
    for &i in graph.topological_order() {
        if states[i as usize] != StepState::Pending {
            continue;
        }
        let doomed = graph.parents(i).iter().any(|e| {
            e.requires_success && Outcome::of(states[e.step as usize]) == Some(Outcome::Failed)
        });
        if doomed {
            states[i as usize] = StepState::Skipped;
            release.skipped.push(i);
        }
    }
    let (counters, verdicts) = evaluate(graph, states);
    release.ready = (0..graph.len() as u32)
        .filter(|&i| verdicts[i as usize] == Verdict::Ready)
        .collect();
    (counters, release)
}

/// The task's outcome from its steps' states: `None` while some step can still run,
/// otherwise whether it succeeded (no step failed for good or was cancelled).
pub fn task_outcome(states: &[StepState]) -> Option<Outcome> {
    let mut failed = false;
    for s in states {
        match s {
            StepState::Pending | StepState::InProgress | StepState::WaitingForRetry => return None,
            StepState::Error | StepState::Cancelled => failed = true,
            _ => {}
        }
    }
    Some(if failed {
        Outcome::Failed
    } else {
        Outcome::Succeeded
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::TaskTemplate;
    use proptest::prelude::*;

    fn graph(yaml: &str) -> TaskGraph {
        TaskTemplate::from_yaml(yaml).unwrap().compile().unwrap()
    }

    fn diamond() -> TaskGraph {
        graph(
            "namespace: t\nname: d\nversion: 1.0.0\nsteps:\n  - name: a\n  - name: b\n    depends_on: [a]\n  - name: c\n    depends_on: [a]\n  - name: d\n    depends_on: [b, c]\n",
        )
    }

    #[test]
    fn diamond_join_waits_for_both_branches() {
        let g = diamond();
        let mut counters = initial_counters(&g);
        let mut states = vec![StepState::Pending; 4];
        states[0] = StepState::Complete;
        let r = propagate(&g, &mut counters, &mut states, 0, Outcome::Succeeded);
        assert_eq!(r.ready, vec![1, 2]);
        states[1] = StepState::Complete;
        assert!(
            propagate(&g, &mut counters, &mut states, 1, Outcome::Succeeded)
                .ready
                .is_empty()
        );
        states[2] = StepState::Complete;
        assert_eq!(
            propagate(&g, &mut counters, &mut states, 2, Outcome::Succeeded).ready,
            vec![3]
        );
    }

    #[test]
    fn a_failed_required_parent_skips_the_whole_subtree() {
        let g = diamond();
        let mut counters = initial_counters(&g);
        let mut states = vec![StepState::Pending; 4];
        states[0] = StepState::Error;
        let r = propagate(&g, &mut counters, &mut states, 0, Outcome::Failed);
        assert!(r.ready.is_empty());
        assert_eq!(r.skipped, vec![1, 2, 3]);
        assert_eq!(task_outcome(&states), Some(Outcome::Failed));
    }

    #[test]
    fn an_optional_edge_runs_the_child_after_a_failure() {
        let g = graph(
            "namespace: t\nname: o\nversion: 1.0.0\nsteps:\n  - name: ship\n  - name: notify\n    depends_on: [{step: ship, requires_success: false}]\n",
        );
        let mut counters = initial_counters(&g);
        let mut states = vec![StepState::Error, StepState::Pending];
        let r = propagate(&g, &mut counters, &mut states, 0, Outcome::Failed);
        assert_eq!(r.ready, vec![1]);
        assert!(r.skipped.is_empty());
    }

    #[test]
    fn a_task_is_undecided_while_a_step_waits_for_retry() {
        assert_eq!(
            task_outcome(&[StepState::Complete, StepState::WaitingForRetry]),
            None
        );
        assert_eq!(
            task_outcome(&[
                StepState::Complete,
                StepState::Skipped,
                StepState::ResolvedManually
            ]),
            Some(Outcome::Succeeded)
        );
    }

    /// A random DAG template: each step may depend on earlier ones.
    fn random_graph() -> impl Strategy<Value = TaskGraph> {
        (2usize..24).prop_flat_map(|n| {
            proptest::collection::vec(
                proptest::collection::vec((0usize..n, any::<bool>()), 0..4),
                n,
            )
            .prop_map(move |deps| {
                let mut yaml = String::from("namespace: p\nname: g\nversion: 1.0.0\nsteps:\n");
                for (i, ds) in deps.iter().enumerate() {
                    yaml.push_str(&format!("  - name: s{i}\n"));
                    let mut seen = std::collections::BTreeSet::new();
                    let ds: Vec<_> = ds
                        .iter()
                        .filter(|(p, _)| *p < i && seen.insert(*p))
                        .collect();
                    if !ds.is_empty() {
                        yaml.push_str("    depends_on:\n");
                        for (p, req) in ds {
                            yaml.push_str(&format!(
                                "      - {{ step: s{p}, requires_success: {req} }}\n"
                            ));
                        }
                    }
                }
                graph(&yaml)
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Runs random outcomes through the incremental form and checks it against the full one
        /// after every finish.
        #[test]
        fn incremental_and_full_readiness_agree(g in random_graph(), picks in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3), 1..64)) {
            let n = g.len();
            let mut counters = initial_counters(&g);
            let mut states = vec![StepState::Pending; n];
            let mut ready: std::collections::BTreeSet<u32> = g.roots().collect();
            for (pick, kind) in picks {
                if ready.is_empty() { break; }
                let i = *pick.get(&ready.iter().copied().collect::<Vec<_>>());
                ready.remove(&i);
                let (state, outcome) = match kind {
                    0 => (StepState::Error, Outcome::Failed),
                    1 => (StepState::ResolvedManually, Outcome::Succeeded),
                    _ => (StepState::Complete, Outcome::Succeeded),
                };
                states[i as usize] = state;
                let r = propagate(&g, &mut counters, &mut states, i, outcome);
                ready.extend(r.ready.iter().copied());
                for s in &r.skipped { prop_assert_eq!(states[*s as usize], StepState::Skipped); }

                let (full, verdicts) = evaluate(&g, &states);
                prop_assert_eq!(&full, &counters);
                let full_ready: std::collections::BTreeSet<u32> = (0..n as u32).filter(|&i| verdicts[i as usize] == Verdict::Ready).collect();
                prop_assert_eq!(&full_ready, &ready);
                prop_assert!(!verdicts.contains(&Verdict::Doomed), "a doomed step was not skipped");
            }
            // When nothing is ready any more, every step has finished.
            if ready.is_empty() {
                prop_assert!(task_outcome(&states).is_some());
            }
        }

        /// `settle` after arbitrary resets reaches the state the incremental form would.
        #[test]
        fn settle_skips_exactly_the_doomed_steps(g in random_graph(), fails in proptest::collection::vec(any::<bool>(), 24)) {
            let n = g.len();
            let mut states = vec![StepState::Pending; n];
            // Finish the roots with random outcomes, then let settle work out the rest.
            let mut counters = initial_counters(&g);
            let mut incremental = states.clone();
            for r in g.roots().collect::<Vec<_>>() {
                let (s, o) = if fails[r as usize] { (StepState::Error, Outcome::Failed) } else { (StepState::Complete, Outcome::Succeeded) };
                states[r as usize] = s;
                incremental[r as usize] = s;
                propagate(&g, &mut counters, &mut incremental, r, o);
            }
            let (settled, _) = settle(&g, &mut states);
            prop_assert_eq!(&states, &incremental);
            prop_assert_eq!(settled, counters);
        }
    }
}
