//! DAG shapes for the readiness benchmarks: the same templates feed the Rust forms and the SQL
//! baseline, so both answer the question over identical graphs and identical states.

use serde_json::{json, Value};
use tasker_core::readiness::{self, Choices, Verdict};

/// No decisions: the generated DAGs have none.
static NONE: Choices = Choices::EMPTY;
use tasker_core::{StepState, TaskGraph, TaskTemplate};

/// The shapes benchmarked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `s0 → s1 → … → sN-1`.
    Chain,
    /// One root with every other step depending on it.
    FanOut,
    /// Layers of 10 steps; each step depends on the two nearest steps of the layer above.
    Lattice,
    /// Each step depends on up to 3 earlier steps picked by a seeded generator; one edge in
    /// five does not require success.
    Random,
}

impl Shape {
    /// Every shape, in report order.
    pub const ALL: [Shape; 4] = [Shape::Chain, Shape::FanOut, Shape::Lattice, Shape::Random];

    /// A short name for benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Chain => "chain",
            Shape::FanOut => "fan-out",
            Shape::Lattice => "lattice",
            Shape::Random => "random",
        }
    }

    /// The parents of step `i` of an `n`-step graph, with `requires_success` per edge.
    fn parents(self, i: usize, rng: &mut fastrand::Rng) -> Vec<(usize, bool)> {
        const WIDTH: usize = 10;
        match self {
            Shape::Chain if i > 0 => vec![(i - 1, true)],
            Shape::FanOut if i > 0 => vec![(0, true)],
            Shape::Lattice if i >= WIDTH => {
                let above = i - WIDTH;
                let layer_start = above - above % WIDTH;
                let mut ps = vec![(above, true)];
                if above + 1 < layer_start + WIDTH {
                    ps.push((above + 1, true));
                }
                ps
            }
            Shape::Random if i > 0 => {
                let mut ps: Vec<(usize, bool)> = Vec::new();
                for _ in 0..rng.usize(0..=3) {
                    // Mostly near neighbours, so the graph is deep as well as wide.
                    let back = 1 + rng.usize(0..i.min(50));
                    let p = i - back;
                    if !ps.iter().any(|&(q, _)| q == p) {
                        ps.push((p, rng.u8(0..5) != 0));
                    }
                }
                ps
            }
            _ => vec![],
        }
    }
}

/// The template of an `n`-step graph of `shape` (namespace `bench`, name `<shape>_<n>`).
pub fn template(shape: Shape, n: usize) -> TaskTemplate {
    let mut rng = fastrand::Rng::with_seed(n as u64);
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let deps: Vec<Value> = shape
                .parents(i, &mut rng)
                .into_iter()
                .map(|(p, required)| json!({ "step": format!("s{p}"), "requires_success": required }))
                .collect();
            json!({ "name": format!("s{i}"), "depends_on": deps })
        })
        .collect();
    let value = json!({
        "namespace": "bench",
        "name": format!("{}_{n}", shape.name().replace('-', "_")),
        "version": "1.0.0",
        "steps": steps,
    });
    TaskTemplate::from_value(value).expect("the generated templates are valid")
}

/// The compiled graph of [`template`].
pub fn graph(shape: Shape, n: usize) -> TaskGraph {
    template(shape, n)
        .compile()
        .expect("the generated templates are acyclic")
}

/// A partly completed run: the first half of the steps in topological order have finished (every
/// tenth of them failed for good where no child requires it to succeed, the rest complete), and
/// the first step that became ready is running — a state the engine can reach.
pub fn partly_completed(graph: &TaskGraph) -> Vec<StepState> {
    let mut states = vec![StepState::Pending; graph.len()];
    let order = graph.topological_order();
    let mut counters = readiness::initial_counters(graph);
    let half = order.len() / 2;
    for (k, &i) in order.iter().enumerate().take(half.max(1)) {
        if states[i as usize] != StepState::Pending {
            continue; // skipped by an earlier failure
        }
        let dooms = graph.children(i).iter().any(|e| e.requires_success);
        let (state, outcome) = if k % 10 == 9 && !dooms {
            (StepState::Error, readiness::Outcome::Failed)
        } else {
            (StepState::Complete, readiness::Outcome::Succeeded)
        };
        states[i as usize] = state;
        readiness::propagate(graph, &mut counters, &mut states, &NONE, i, outcome);
    }
    if let Some(i) = ready(graph, &states).first() {
        states[*i as usize] = StepState::InProgress;
    }
    states
}

/// The ready steps by the full form, in index order.
pub fn ready(graph: &TaskGraph, states: &[StepState]) -> Vec<u32> {
    let (_, verdicts) = readiness::evaluate(graph, states, &NONE);
    (0..graph.len() as u32)
        .filter(|&i| verdicts[i as usize] == Verdict::Ready)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_compiles_at_every_benchmarked_size() {
        for shape in Shape::ALL {
            for n in [10, 100, 1_000, 10_000] {
                let g = graph(shape, n);
                assert_eq!(g.len(), n, "{shape:?} {n}");
                let states = partly_completed(&g);
                let finished = states.iter().filter(|s| s.is_finished()).count();
                assert!(finished >= n / 2, "{shape:?} {n}: {finished} finished");
                assert!(states.contains(&StepState::Pending), "{shape:?} {n}");
            }
        }
    }

    #[test]
    fn a_partly_completed_chain_has_one_running_step_and_nothing_ready() {
        let g = graph(Shape::Chain, 100);
        let states = partly_completed(&g);
        assert_eq!(
            states
                .iter()
                .filter(|s| **s == StepState::InProgress)
                .count(),
            1
        );
        assert!(ready(&g, &states).is_empty());
    }
}
