//! Which steps may run now.
//!
//! Two forms that must agree (a property test checks it):
//!
//! * the **incremental** form keeps, per step, [`Counters`] of parents that have not finished,
//!   of required parents that finished without success and of required parents that were not
//!   chosen; [`propagate`] updates them in O(out-degree) when a step finishes, and cascades
//!   skips;
//! * the **full** form, [`evaluate`], recomputes everything from the steps' states (and the
//!   decisions' [`Choices`]); stores use it after operator verbs and for recovery, tests use it
//!   as the reference.
//!
//! A step is *ready* when it is pending, every parent has finished and every parent it requires
//! to succeed has succeeded. A pending step with a required parent that failed for good is
//! *doomed*: it is skipped at once, and its own children learn that it failed.
//!
//! A `decision` step completes with the list of its children that run: each other child sees
//! it as [`Outcome::NotChosen`]. A child with a required parent not chosen is skipped as not
//! chosen too once all its parents have finished (a failure among them dooms it instead,
//! whatever the order they finished in), and its own children see it as not chosen. A
//! `deferred_convergence` step takes a parent not chosen as done: it runs once each parent has
//! completed or was not chosen.

use crate::state::{StepState, TaskState};
use crate::template::{StepKind, TaskGraph};

/// Where a step waiting for child tasks stands, from its children's states in order (`None`:
/// a child that is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildrenStand {
    /// A child is still running (and none has failed): the step waits.
    Open,
    /// Every child finished well (complete, or resolved by an operator): the step completes.
    Done,
    /// Child `index` (the first, in order) failed, was cancelled or is gone (`None`): the step
    /// fails, whatever the others are doing.
    Failed {
        /// Its position among the step's children.
        index: usize,
        /// Its state.
        state: Option<TaskState>,
    },
}

/// Where a step waiting for children with these states stands (see [`ChildrenStand`]).
///
/// ```
/// use tasker_core::readiness::{children_stand, ChildrenStand};
/// use tasker_core::TaskState::{Complete, Error, InProgress};
/// assert_eq!(children_stand([Some(Complete), Some(InProgress)]), ChildrenStand::Open);
/// assert_eq!(children_stand([Some(Complete), Some(Complete)]), ChildrenStand::Done);
/// assert_eq!(
///     children_stand([Some(InProgress), Some(Error)]),
///     ChildrenStand::Failed { index: 1, state: Some(Error) }
/// );
/// ```
pub fn children_stand(states: impl IntoIterator<Item = Option<TaskState>>) -> ChildrenStand {
    let mut stand = ChildrenStand::Done;
    for (index, state) in states.into_iter().enumerate() {
        match state {
            Some(TaskState::Complete | TaskState::ResolvedManually) => {}
            Some(TaskState::Pending | TaskState::InProgress | TaskState::Paused) => {
                stand = ChildrenStand::Open
            }
            // An errored child may still be retried by an operator, but its parent has been
            // told: the step fails (a retry of the parent starts new children).
            Some(TaskState::Error | TaskState::Cancelled) | None => {
                return ChildrenStand::Failed { index, state }
            }
        }
    }
    stand
}

/// Per-step readiness counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Parents that have not finished yet.
    pub unfinished_parents: u32,
    /// Parents joined by a `requires_success` edge that finished without success.
    pub failed_required_parents: u32,
    /// Parents joined by a `requires_success` edge that were not chosen (by a decision, or
    /// skipped as not chosen themselves); a `deferred_convergence` step counts none.
    pub not_chosen_parents: u32,
}

impl Counters {
    /// All parents have finished, every required one succeeded, and none was passed over.
    pub fn is_clear(self) -> bool {
        self.unfinished_parents == 0
            && self.failed_required_parents == 0
            && self.not_chosen_parents == 0
    }
}

/// How a finished step looks to its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Complete or resolved manually.
    Succeeded,
    /// Failed for good, skipped because a required parent failed, or cancelled.
    Failed,
    /// Not chosen by a decision: skipped, and not a failure.
    NotChosen,
}

impl Outcome {
    /// The outcome of a step in `state` with `counters`, if it has finished: a skipped step
    /// with no failed required parent was skipped as not chosen.
    pub fn of(state: StepState, counters: Counters) -> Option<Outcome> {
        if state.is_success() {
            Some(Outcome::Succeeded)
        } else if state == StepState::Skipped
            && counters.failed_required_parents == 0
            && counters.not_chosen_parents > 0
        {
            Some(Outcome::NotChosen)
        } else if state.is_finished() {
            Some(Outcome::Failed)
        } else {
            None
        }
    }

    /// The outcome as child `child` sees it when the parent's decision chose `chosen` (`None`:
    /// not a decision, or every child).
    pub fn toward(self, child: u32, chosen: Option<&[u32]>) -> Outcome {
        match chosen {
            Some(chosen) if self == Outcome::Succeeded && !chosen.contains(&child) => {
                Outcome::NotChosen
            }
            _ => self,
        }
    }
}

/// The decisions taken in one task: for each decision step that completed, the children it
/// chose. Usually empty (no allocation); a task holds one entry per decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Choices(Vec<(u32, Box<[u32]>)>);

impl Choices {
    /// No decision taken.
    pub const EMPTY: Choices = Choices(Vec::new());

    /// The children decision step `step` chose, if it decided.
    pub fn chosen(&self, step: u32) -> Option<&[u32]> {
        self.0.iter().find(|(s, _)| *s == step).map(|(_, c)| &**c)
    }

    /// Records that `step` chose `children` (replacing an earlier decision of it).
    pub fn record(&mut self, step: u32, mut children: Vec<u32>) {
        children.sort_unstable();
        children.dedup();
        self.forget(step);
        self.0.push((step, children.into_boxed_slice()));
    }

    /// Forgets the decision of `step`.
    pub fn forget(&mut self, step: u32) {
        self.0.retain(|(s, _)| *s != step);
    }

    /// Whether no decision was taken.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each decision step with the children it chose.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &[u32])> {
        self.0.iter().map(|(s, c)| (*s, &**c))
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
    /// Pending, every parent finished, none failed, but a required one was not chosen: it must
    /// be skipped as not chosen.
    NotChosen,
    /// Not pending: running, finished or waiting for a retry.
    NotPending,
}

/// Counters of a task in which no step has finished.
pub fn initial_counters(graph: &TaskGraph) -> Vec<Counters> {
    (0..graph.len() as u32)
        .map(|i| Counters {
            unfinished_parents: graph.parents(i).len() as u32,
            ..Counters::default()
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
    /// The child's last parent finished, none failed, a required one was not chosen: it is
    /// skipped as not chosen if pending.
    NotChosen,
}

/// Applies a parent's `outcome` (as the child sees it, see [`Outcome::toward`]) to one child's
/// counters over an edge that does or does not `require_success`, for a child that is or is
/// not a `deferred_convergence` step.
pub fn apply_parent_outcome(
    counters: &mut Counters,
    requires_success: bool,
    convergence: bool,
    outcome: Outcome,
) -> ChildEffect {
    counters.unfinished_parents = counters.unfinished_parents.saturating_sub(1);
    match outcome {
        Outcome::Failed if requires_success => {
            counters.failed_required_parents += 1;
            if counters.failed_required_parents == 1 {
                return ChildEffect::Doomed;
            }
        }
        Outcome::NotChosen if requires_success && !convergence => {
            counters.not_chosen_parents += 1;
        }
        _ => {}
    }
    if counters.failed_required_parents > 0 || counters.unfinished_parents > 0 {
        ChildEffect::Unchanged
    } else if counters.not_chosen_parents > 0 {
        ChildEffect::NotChosen
    } else {
        ChildEffect::Ready
    }
}

/// What one finish released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    /// Pending steps that became ready.
    pub ready: Vec<u32>,
    /// Pending steps that were skipped (their state is set to [`StepState::Skipped`]); which
    /// kind of skip each is, [`Outcome::of`] tells from its counters.
    pub skipped: Vec<u32>,
}

/// The incremental form: step `index` has finished with `outcome`. Updates the counters of its
/// children, marks doomed and passed-over pending descendants `Skipped` (cascading), and
/// reports what became ready or was skipped. O(out-degree) per finished step, skips included.
pub fn propagate(
    graph: &TaskGraph,
    counters: &mut [Counters],
    states: &mut [StepState],
    choices: &Choices,
    index: u32,
    outcome: Outcome,
) -> Release {
    let mut release = Release::default();
    propagate_into(
        graph,
        counters,
        states,
        choices,
        index,
        outcome,
        &mut release,
    );
    release
}

/// [`propagate`] appending to an existing [`Release`] (no allocation when nothing is released).
pub fn propagate_into(
    graph: &TaskGraph,
    counters: &mut [Counters],
    states: &mut [StepState],
    choices: &Choices,
    index: u32,
    outcome: Outcome,
    release: &mut Release,
) {
    let mut stack = vec![];
    let mut current = (index, outcome);
    loop {
        let (parent, outcome) = current;
        let chosen = choices.chosen(parent);
        for edge in graph.children(parent) {
            let child = edge.step as usize;
            let convergence = graph.step(edge.step).kind == StepKind::DeferredConvergence;
            let seen = outcome.toward(edge.step, chosen);
            let effect = apply_parent_outcome(
                &mut counters[child],
                edge.requires_success,
                convergence,
                seen,
            );
            if states[child] != StepState::Pending {
                continue;
            }
            let skipped = match effect {
                ChildEffect::Ready => {
                    release.ready.push(edge.step);
                    continue;
                }
                ChildEffect::Doomed => Outcome::Failed,
                ChildEffect::NotChosen => Outcome::NotChosen,
                ChildEffect::Unchanged => continue,
            };
            states[child] = StepState::Skipped;
            release.skipped.push(edge.step);
            stack.push((edge.step, skipped));
        }
        match stack.pop() {
            Some(next) => current = next,
            None => break,
        }
    }
}

/// The full form: counters and verdicts recomputed from the states and choices alone.
pub fn evaluate(
    graph: &TaskGraph,
    states: &[StepState],
    choices: &Choices,
) -> (Vec<Counters>, Vec<Verdict>) {
    let mut states = states.to_vec();
    walk(graph, &mut states, choices, false)
}

/// Skips every doomed or passed-over pending step (cascading) and returns the recomputed
/// counters, the steps skipped and the steps ready: the recovery form used after operator
/// verbs.
pub fn settle(
    graph: &TaskGraph,
    states: &mut [StepState],
    choices: &Choices,
) -> (Vec<Counters>, Release) {
    let (counters, verdicts) = walk(graph, states, choices, true);
    let mut release = Release::default();
    for &i in graph.topological_order() {
        match verdicts[i as usize] {
            Verdict::Ready => release.ready.push(i),
            // `walk` reports the steps it skipped as doomed or not chosen.
            Verdict::Doomed | Verdict::NotChosen => release.skipped.push(i),
            Verdict::Waiting | Verdict::NotPending => {}
        }
    }
    release.ready.sort_unstable();
    (counters, release)
}

/// Counters and verdicts in topological order (a skipped parent's outcome depends on its own
/// counters); with `skip`, each doomed or passed-over pending step is skipped on the way, so
/// that its children see it skipped (its verdict still says why).
fn walk(
    graph: &TaskGraph,
    states: &mut [StepState],
    choices: &Choices,
    skip: bool,
) -> (Vec<Counters>, Vec<Verdict>) {
    let mut counters = vec![Counters::default(); graph.len()];
    let mut verdicts = vec![Verdict::NotPending; graph.len()];
    for &i in graph.topological_order() {
        let convergence = graph.step(i).kind == StepKind::DeferredConvergence;
        let mut c = Counters::default();
        for edge in graph.parents(i) {
            let p = edge.step as usize;
            match Outcome::of(states[p], counters[p])
                .map(|o| o.toward(i, choices.chosen(edge.step)))
            {
                None => c.unfinished_parents += 1,
                Some(Outcome::Failed) if edge.requires_success => c.failed_required_parents += 1,
                Some(Outcome::NotChosen) if edge.requires_success && !convergence => {
                    c.not_chosen_parents += 1
                }
                Some(_) => {}
            }
        }
        let i = i as usize;
        counters[i] = c;
        if states[i] != StepState::Pending {
            continue;
        }
        verdicts[i] = if c.failed_required_parents > 0 {
            Verdict::Doomed
        } else if c.unfinished_parents > 0 {
            Verdict::Waiting
        } else if c.not_chosen_parents > 0 {
            Verdict::NotChosen
        } else {
            Verdict::Ready
        };
        if skip && matches!(verdicts[i], Verdict::Doomed | Verdict::NotChosen) {
            states[i] = StepState::Skipped;
        }
    }
    (counters, verdicts)
}

/// The task's outcome from its steps' states: `None` while some step can still run,
/// otherwise whether it succeeded (no step failed for good or was cancelled).
pub fn task_outcome(states: &[StepState]) -> Option<Outcome> {
    let mut failed = false;
    for s in states {
        match s {
            StepState::Pending
            | StepState::InProgress
            | StepState::WaitingForRetry
            | StepState::WaitingForChildren => return None,
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
    use std::collections::BTreeSet;

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

    /// The approval routing of tasker-core's decision-point example: `route` (1) chooses among
    /// `auto` (2), `manager` (3) and `finance` (4); `finalize` (5) converges them; `audit` (6)
    /// requires `finance`; `report` (7) requires `finance` and `validate` (0) only optionally.
    fn routing() -> TaskGraph {
        graph(
            "namespace: t\nname: r\nversion: 1.0.0\nsteps:\n  - name: validate\n  - name: route\n    type: decision\n    depends_on: [validate]\n  - {name: auto, depends_on: [route]}\n  - {name: manager, depends_on: [route]}\n  - {name: finance, depends_on: [route]}\n  - name: finalize\n    type: deferred_convergence\n    depends_on: [auto, manager, finance]\n  - {name: audit, depends_on: [finance]}\n  - {name: report, depends_on: [finance, {step: validate, requires_success: false}]}\n",
        )
    }

    /// Finishes `index` with `state` and propagates it.
    fn finish(
        g: &TaskGraph,
        counters: &mut [Counters],
        states: &mut [StepState],
        choices: &Choices,
        index: u32,
        state: StepState,
    ) -> Release {
        states[index as usize] = state;
        let outcome = Outcome::of(state, counters[index as usize]).unwrap();
        propagate(g, counters, states, choices, index, outcome)
    }

    /// One task's readiness state, run step by step through the incremental form.
    struct Run {
        g: TaskGraph,
        counters: Vec<Counters>,
        states: Vec<StepState>,
        choices: Choices,
    }

    impl Run {
        fn new(g: TaskGraph) -> Self {
            Run {
                counters: initial_counters(&g),
                states: vec![StepState::Pending; g.len()],
                choices: Choices::default(),
                g,
            }
        }

        /// Finishes step `index` with `state`.
        fn finish(&mut self, index: u32, state: StepState) -> Release {
            let Run {
                g,
                counters,
                states,
                choices,
            } = self;
            finish(g, counters, states, choices, index, state)
        }

        /// Decision step `index` completes, choosing `chosen`.
        fn decide(&mut self, index: u32, chosen: Vec<u32>) -> Release {
            self.choices.record(index, chosen);
            self.finish(index, StepState::Complete)
        }

        /// How step `index` looks to its children.
        fn outcome(&self, index: usize) -> Option<Outcome> {
            Outcome::of(self.states[index], self.counters[index])
        }
    }

    #[test]
    fn diamond_join_waits_for_both_branches() {
        let mut run = Run::new(diamond());
        let done = StepState::Complete;
        assert_eq!(run.finish(0, done).ready, vec![1, 2]);
        assert!(run.finish(1, done).ready.is_empty());
        assert_eq!(run.finish(2, done).ready, vec![3]);
    }

    #[test]
    fn a_failed_required_parent_skips_the_whole_subtree() {
        let mut run = Run::new(diamond());
        let r = run.finish(0, StepState::Error);
        assert!(r.ready.is_empty());
        assert_eq!(r.skipped, vec![1, 2, 3]);
        assert_eq!(task_outcome(&run.states), Some(Outcome::Failed));
        assert_eq!(run.outcome(3), Some(Outcome::Failed));
    }

    #[test]
    fn an_optional_edge_runs_the_child_after_a_failure() {
        let mut run = Run::new(graph(
            "namespace: t\nname: o\nversion: 1.0.0\nsteps:\n  - name: ship\n  - name: notify\n    depends_on: [{step: ship, requires_success: false}]\n",
        ));
        let r = run.finish(0, StepState::Error);
        assert_eq!(r.ready, vec![1]);
        assert!(r.skipped.is_empty());
    }

    #[test]
    fn a_decision_runs_the_chosen_children_and_passes_over_the_rest() {
        let mut run = Run::new(routing());
        run.finish(0, StepState::Complete);
        let r = run.decide(1, vec![3]);
        assert_eq!(r.ready, vec![3], "only the manager approval runs");
        // auto and finance, then audit (requires finance) and report (requires finance; its
        // optional edge to validate does not save it).
        assert_eq!(
            r.skipped.iter().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([2, 4, 6, 7])
        );
        for s in [2, 4, 6, 7] {
            assert_eq!(run.outcome(s), Some(Outcome::NotChosen));
        }
        // The convergence waits for the one chosen branch, then runs.
        assert_eq!(run.states[5], StepState::Pending);
        assert_eq!(run.finish(3, StepState::Complete).ready, vec![5]);
        run.finish(5, StepState::Complete);
        assert_eq!(task_outcome(&run.states), Some(Outcome::Succeeded));
    }

    #[test]
    fn a_chosen_branch_that_fails_skips_the_convergence() {
        let mut run = Run::new(routing());
        run.finish(0, StepState::Complete);
        run.decide(1, vec![3, 4]);
        let r = run.finish(4, StepState::Error);
        assert_eq!(
            r.skipped.iter().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from([5, 6, 7])
        );
        assert_eq!(run.outcome(5), Some(Outcome::Failed));
        assert_eq!(task_outcome(&run.states), None, "manager still runs");
    }

    #[test]
    fn a_failure_dooms_a_passed_over_step_whichever_finished_first() {
        // c requires a (not chosen by d) and b (which fails).
        let g = graph(
            "namespace: t\nname: f\nversion: 1.0.0\nsteps:\n  - {name: d, type: decision}\n  - {name: a, depends_on: [d]}\n  - {name: k, depends_on: [d]}\n  - name: b\n  - {name: c, depends_on: [a, b]}\n  - {name: after, type: deferred_convergence, depends_on: [c]}\n",
        );
        for failure_first in [false, true] {
            let mut run = Run::new(g.clone());
            if failure_first {
                run.finish(3, StepState::Error);
                run.decide(0, vec![2]);
            } else {
                run.decide(0, vec![2]);
                assert_eq!(run.states[4], StepState::Pending, "c waits for b");
                run.finish(3, StepState::Error);
            }
            assert_eq!(run.states[4], StepState::Skipped);
            assert_eq!(run.outcome(4), Some(Outcome::Failed));
            assert_eq!(
                run.states[5],
                StepState::Skipped,
                "the convergence saw a failure"
            );
        }
    }

    #[test]
    fn a_decision_resolved_by_hand_chooses_every_child() {
        let mut run = Run::new(routing());
        run.finish(0, StepState::Complete);
        let r = run.finish(1, StepState::ResolvedManually);
        assert_eq!(r.ready, vec![2, 3, 4]);
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

    /// A random DAG template: each step may depend on earlier ones; some steps are decisions
    /// (when something depends on them) and some deferred convergences (when they depend on
    /// something).
    fn random_graph() -> impl Strategy<Value = TaskGraph> {
        (2usize..24).prop_flat_map(|n| {
            (
                proptest::collection::vec(
                    proptest::collection::vec((0usize..n, any::<bool>()), 0..4),
                    n,
                ),
                proptest::collection::vec(0u8..6, n),
            )
                .prop_map(move |(deps, kinds)| {
                    let mut parents: Vec<Vec<(usize, bool)>> = Vec::with_capacity(n);
                    for (i, ds) in deps.iter().enumerate() {
                        let mut seen = BTreeSet::new();
                        parents.push(
                            ds.iter()
                                .copied()
                                .filter(|(p, _)| *p < i && seen.insert(*p))
                                .collect(),
                        );
                    }
                    let has_children: BTreeSet<usize> =
                        parents.iter().flatten().map(|(p, _)| *p).collect();
                    let mut yaml = String::from("namespace: p\nname: g\nversion: 1.0.0\nsteps:\n");
                    for (i, ps) in parents.iter().enumerate() {
                        yaml.push_str(&format!("  - name: s{i}\n"));
                        if kinds[i] == 0 && has_children.contains(&i) {
                            yaml.push_str("    type: decision\n");
                        } else if kinds[i] == 1 && !ps.is_empty() {
                            yaml.push_str("    type: deferred_convergence\n");
                        }
                        if !ps.is_empty() {
                            yaml.push_str("    depends_on:\n");
                            for (p, req) in ps {
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

    /// What a finishing step does in a random run: fail, be resolved, or complete (a decision
    /// choosing the children its mask picks).
    fn finish_randomly(
        g: &TaskGraph,
        i: u32,
        kind: u8,
        mask: u64,
        choices: &mut Choices,
    ) -> StepState {
        match kind {
            0 => StepState::Error,
            1 => StepState::ResolvedManually,
            _ => {
                if g.step(i).kind == StepKind::Decision {
                    let chosen = g
                        .children(i)
                        .iter()
                        .map(|e| e.step)
                        .filter(|c| mask & (1 << (c % 64)) != 0)
                        .collect();
                    choices.record(i, chosen);
                }
                StepState::Complete
            }
        }
    }

    fn child_state() -> impl Strategy<Value = Option<TaskState>> {
        proptest::option::weighted(0.95, proptest::sample::select(TaskState::ALL))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn a_step_waits_until_its_children_all_succeeded_or_one_did_not(
            states in proptest::collection::vec(child_state(), 0..20)
        ) {
            let failed = |s: &Option<TaskState>| {
                matches!(s, None | Some(TaskState::Error | TaskState::Cancelled))
            };
            let stand = children_stand(states.iter().copied());
            match states.iter().position(failed) {
                Some(index) => {
                    prop_assert_eq!(stand, ChildrenStand::Failed { index, state: states[index] });
                }
                None if states.iter().all(|s| s.is_some_and(TaskState::is_finished)) => {
                    prop_assert_eq!(stand, ChildrenStand::Done);
                }
                None => {
                    prop_assert_eq!(stand, ChildrenStand::Open);
                }
            }
        }

        /// Runs random outcomes and decisions through the incremental form and checks it
        /// against the full one after every finish.
        #[test]
        fn incremental_and_full_readiness_agree(g in random_graph(), picks in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u64>()), 1..64)) {
            let n = g.len();
            let mut counters = initial_counters(&g);
            let mut states = vec![StepState::Pending; n];
            let mut choices = Choices::default();
            let mut ready: BTreeSet<u32> = g.roots().collect();
            for (pick, kind, mask) in picks {
                if ready.is_empty() { break; }
                let i = *pick.get(&ready.iter().copied().collect::<Vec<_>>());
                ready.remove(&i);
                let state = finish_randomly(&g, i, kind, mask, &mut choices);
                let r = finish(&g, &mut counters, &mut states, &choices, i, state);
                ready.extend(r.ready.iter().copied());
                for s in &r.skipped {
                    prop_assert_eq!(states[*s as usize], StepState::Skipped);
                    prop_assert!(!ready.contains(s));
                }

                let (full, verdicts) = evaluate(&g, &states, &choices);
                prop_assert_eq!(&full, &counters);
                let full_ready: BTreeSet<u32> = (0..n as u32).filter(|&i| verdicts[i as usize] == Verdict::Ready).collect();
                prop_assert_eq!(&full_ready, &ready);
                prop_assert!(!verdicts.contains(&Verdict::Doomed), "a doomed step was not skipped");
                prop_assert!(!verdicts.contains(&Verdict::NotChosen), "a passed-over step was not skipped");
                // A step runs only if no decision above it passed it over on a required edge.
                for &r in &ready {
                    let convergence = g.step(r).kind == StepKind::DeferredConvergence;
                    for e in g.parents(r) {
                        let seen = Outcome::of(states[e.step as usize], counters[e.step as usize]).map(|o| o.toward(r, choices.chosen(e.step)));
                        prop_assert!(convergence || !e.requires_success || seen == Some(Outcome::Succeeded));
                    }
                }
            }
            // When nothing is ready any more, every step has finished.
            if ready.is_empty() {
                prop_assert!(task_outcome(&states).is_some());
            }
        }

        /// `settle` after the roots finished (decisions among them) reaches the state the
        /// incremental form would.
        #[test]
        fn settle_skips_exactly_the_doomed_and_passed_over_steps(g in random_graph(), kinds in proptest::collection::vec(0u8..4, 24), mask in any::<u64>()) {
            let n = g.len();
            let mut states = vec![StepState::Pending; n];
            let mut counters = initial_counters(&g);
            let mut incremental = states.clone();
            let mut choices = Choices::default();
            let mut released = BTreeSet::new();
            for r in g.roots().collect::<Vec<_>>() {
                let s = finish_randomly(&g, r, kinds[r as usize], mask, &mut choices);
                states[r as usize] = s;
                let done = finish(&g, &mut counters, &mut incremental, &choices, r, s);
                released.extend(done.ready);
                released.extend(done.skipped);
            }
            let (settled, release) = settle(&g, &mut states, &choices);
            prop_assert_eq!(&states, &incremental);
            prop_assert_eq!(settled, counters);
            let from_settle: BTreeSet<u32> = release.ready.iter().chain(&release.skipped).copied().collect();
            prop_assert_eq!(from_settle, released);
        }
    }
}
