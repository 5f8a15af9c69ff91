//! A task's DAG laid out in layers, and drawn: in the terminal, as Graphviz DOT, as Mermaid,
//! and as SVG (the same drawing the dashboard shows).

use std::collections::HashMap;
use std::fmt::Write as _;

use tasker_core::view::GraphView;

/// Each node's index in `g.nodes`, by name.
fn index_of(g: &GraphView) -> HashMap<&str, usize> {
    g.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect()
}

/// The layer of each node of `g` (by index in `g.nodes`): 0 for a step without parents, else
/// one more than its deepest parent. Nodes on a cycle (a graph the engine never makes) go one
/// layer past the others.
pub fn layer_of(g: &GraphView) -> Vec<usize> {
    let index = index_of(g);
    let n = g.nodes.len();
    let mut parents = vec![0usize; n];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
    for e in &g.edges {
        if let (Some(&from), Some(&to)) = (index.get(e.from.as_str()), index.get(e.to.as_str())) {
            parents[to] += 1;
            children[from].push(to);
        }
    }
    let mut layer = vec![0usize; n];
    let mut done = vec![false; n];
    let mut ready: Vec<usize> = (0..n).filter(|&i| parents[i] == 0).collect();
    while let Some(i) = ready.pop() {
        done[i] = true;
        for &c in &children[i] {
            layer[c] = layer[c].max(layer[i] + 1);
            parents[c] -= 1;
            if parents[c] == 0 {
                ready.push(c);
            }
        }
    }
    let past = layer.iter().copied().max().map_or(0, |m| m + 1);
    for (i, d) in done.iter().enumerate() {
        if !d {
            layer[i] = past;
        }
    }
    layer
}

/// The nodes of each layer, in the graph's order.
pub fn layers(g: &GraphView) -> Vec<Vec<usize>> {
    let of = layer_of(g);
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); of.iter().copied().max().map_or(0, |m| m + 1)];
    for (i, &l) in of.iter().enumerate() {
        out[l].push(i);
    }
    out
}

/// The parents of each node, by name, in edge order.
fn parents_of(g: &GraphView) -> HashMap<&str, Vec<&str>> {
    let mut out: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &g.edges {
        out.entry(e.to.as_str()).or_default().push(e.from.as_str());
    }
    out
}

/// A mark for a step state, for the terminal.
fn mark(status: &str) -> &'static str {
    match status {
        "complete" | "resolved_manually" => "✔",
        "in_progress" | "waiting_for_children" => "▶",
        "error" => "✖",
        "waiting_for_retry" => "↻",
        "cancelled" | "skipped" => "–",
        _ => "·",
    }
}

/// The DAG for the terminal: one block per layer, each step with its state and parents.
pub fn text(g: &GraphView) -> String {
    let parents = parents_of(g);
    let width = g
        .nodes
        .iter()
        .map(|n| n.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (l, nodes) in layers(g).iter().enumerate() {
        for (k, &i) in nodes.iter().enumerate() {
            let node = &g.nodes[i];
            let status = node.status.as_str();
            let head = if k == 0 {
                format!("{:>3}", l + 1)
            } else {
                "   ".to_owned()
            };
            let _ = write!(
                out,
                "{head}  {} {:<width$}  {status:<20}",
                mark(status),
                node.name
            );
            if let Some(p) = parents.get(node.name.as_str()) {
                let _ = write!(out, " ← {}", p.join(", "));
            }
            if !node.children.is_empty() {
                let _ = write!(out, " ({} child tasks)", node.children.len());
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        }
    }
    out
}

/// A DOT string literal.
fn dot_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The fill colour of a step state (DOT, Mermaid and SVG alike).
pub fn colour(status: &str) -> &'static str {
    match status {
        "complete" | "resolved_manually" => "#c8e6c9",
        "in_progress" | "waiting_for_children" => "#bbdefb",
        "error" => "#ffcdd2",
        "waiting_for_retry" => "#ffe0b2",
        "cancelled" | "skipped" => "#e0e0e0",
        _ => "#ffffff",
    }
}

/// The DAG as Graphviz DOT, left to right, each step filled by its state.
pub fn dot(g: &GraphView) -> String {
    let mut out = format!(
        "digraph {} {{\n  rankdir=LR;\n  node [shape=box, style=\"rounded,filled\"];\n",
        dot_quote(&g.task_id.to_string())
    );
    for n in &g.nodes {
        let status = n.status.as_str();
        let label = format!("{}\n{status}", n.name);
        let _ = writeln!(
            out,
            "  {} [label={}, fillcolor=\"{}\"];",
            dot_quote(&n.name),
            dot_quote(&label),
            colour(status)
        );
    }
    for e in &g.edges {
        let style = if e.requires_success {
            ""
        } else {
            " [style=dashed]"
        };
        let _ = writeln!(
            out,
            "  {} -> {}{style};",
            dot_quote(&e.from),
            dot_quote(&e.to)
        );
    }
    out.push_str("}\n");
    out
}

/// A Mermaid label: every character but letters, digits, space, `_`, `.` and `-` as its
/// entity code (`#35;`), so that no name can close the label, start a directive (`%%{…}%%`) or
/// spell an entity of its own.
fn mermaid_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '.' | '-') {
            out.push(c);
        } else {
            let _ = write!(out, "#{};", u32::from(c));
        }
    }
    out
}

/// The DAG as a Mermaid flowchart, left to right, each step classed by its state.
pub fn mermaid(g: &GraphView) -> String {
    let index = index_of(g);
    let mut out = String::from("flowchart LR\n");
    let mut used: Vec<&str> = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let status = n.status.as_str();
        let _ = writeln!(
            out,
            "  s{i}[\"{} ({status})\"]:::{status}",
            mermaid_label(&n.name)
        );
        if !used.contains(&status) {
            used.push(status);
        }
    }
    for e in &g.edges {
        if let (Some(a), Some(b)) = (index.get(e.from.as_str()), index.get(e.to.as_str())) {
            let arrow = if e.requires_success { "-->" } else { "-.->" };
            let _ = writeln!(out, "  s{a} {arrow} s{b}");
        }
    }
    for status in used {
        let _ = writeln!(out, "  classDef {status} fill:{}", colour(status));
    }
    out
}

/// Text for XML content and attributes (control characters but newline, return and tab,
/// which XML forbids, as U+FFFD).
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(c),
            c if c.is_control() => out.push('\u{fffd}'),
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const NODE_W: usize = 170;
const NODE_H: usize = 40;
const GAP_X: usize = 60;
const GAP_Y: usize = 14;
const PAD: usize = 10;

/// The DAG as SVG: layers left to right, each step a box filled by its state with its name
/// and state in it (and a `<title>` tooltip), edges as curves (dashed when the child runs
/// whatever the parent's outcome). Each box is a `<g class="step" data-step=… data-status=…>`
/// so that a page can find it.
pub fn svg(g: &GraphView) -> String {
    let layers = layers(g);
    let tallest = layers.iter().map(Vec::len).max().unwrap_or(0);
    let width = PAD * 2 + layers.len() * NODE_W + layers.len().saturating_sub(1) * GAP_X;
    let height = PAD * 2 + tallest * NODE_H + tallest.saturating_sub(1) * GAP_Y;
    let mut at: Vec<(usize, usize)> = vec![(0, 0); g.nodes.len()];
    for (l, nodes) in layers.iter().enumerate() {
        for (k, &i) in nodes.iter().enumerate() {
            at[i] = (PAD + l * (NODE_W + GAP_X), PAD + k * (NODE_H + GAP_Y));
        }
    }
    let index = index_of(g);
    let mut out = String::with_capacity(256 + g.nodes.len() * 400);
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"dag\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    out.push_str("<g class=\"edges\" fill=\"none\" stroke=\"#777\">");
    for e in &g.edges {
        let (Some(&a), Some(&b)) = (index.get(e.from.as_str()), index.get(e.to.as_str())) else {
            continue;
        };
        let (x1, y1) = (at[a].0 + NODE_W, at[a].1 + NODE_H / 2);
        let (x2, y2) = (at[b].0, at[b].1 + NODE_H / 2);
        let mid = (x1 + x2) / 2;
        let dash = if e.requires_success {
            ""
        } else {
            " stroke-dasharray=\"4 3\""
        };
        let _ = write!(
            out,
            "<path d=\"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}\"{dash}/>"
        );
    }
    out.push_str("</g>");
    for (i, n) in g.nodes.iter().enumerate() {
        let (x, y) = at[i];
        let status = n.status.as_str();
        let name = xml_escape(&n.name);
        let shown: String = if n.name.chars().count() > 24 {
            let cut: String = n.name.chars().take(23).collect();
            xml_escape(&format!("{cut}…"))
        } else {
            name.clone()
        };
        let _ = write!(
            out,
            "<g class=\"step\" data-step=\"{name}\" data-status=\"{status}\"><title>{name}: {status}</title><rect x=\"{x}\" y=\"{y}\" width=\"{NODE_W}\" height=\"{NODE_H}\" rx=\"6\" fill=\"{}\" stroke=\"#555\"/><text x=\"{}\" y=\"{}\">{shown}</text><text x=\"{}\" y=\"{}\" fill=\"#555\" font-size=\"10\">{status}</text></g>",
            colour(status),
            x + 8,
            y + 16,
            x + 8,
            y + 32,
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tasker_core::view::{GraphEdge, GraphNode};
    use tasker_core::StepState;

    fn graph(n: usize, edges: &[(usize, usize)]) -> GraphView {
        GraphView {
            task_id: "0190b6c4-0000-7000-8000-000000000000".parse().unwrap(),
            nodes: (0..n)
                .map(|i| GraphNode {
                    name: format!("s{i}"),
                    handler: "h".into(),
                    status: StepState::Pending,
                    instance_of: None,
                    children: Vec::new(),
                })
                .collect(),
            edges: edges
                .iter()
                .map(|&(a, b)| GraphEdge {
                    from: format!("s{a}"),
                    to: format!("s{b}"),
                    requires_success: true,
                })
                .collect(),
        }
    }

    #[test]
    fn a_diamond_has_three_layers() {
        let g = graph(4, &[(0, 1), (0, 2), (1, 3), (2, 3)]);
        assert_eq!(layers(&g), vec![vec![0], vec![1, 2], vec![3]]);
        let text = text(&g);
        assert!(text.contains("s3") && text.contains("← s1, s2"), "{text}");
    }

    #[test]
    fn names_are_escaped_in_every_format() {
        let mut g = graph(2, &[(0, 1)]);
        g.nodes[0].name = "a\"<b>&".into();
        g.edges[0].from = g.nodes[0].name.clone();
        assert!(svg(&g).contains("a&quot;&lt;b&gt;&amp;"));
        assert!(!svg(&g).contains("a\"<b>"));
        assert!(dot(&g).contains("\"a\\\"<b>&\""));
        assert!(
            mermaid(&g).contains("a#34;#60;b#62;#38;"),
            "{}",
            mermaid(&g)
        );
        g.nodes[1].name = "%%{init: x}%%\u{7}".into();
        g.edges[0].to = g.nodes[1].name.clone();
        assert!(!mermaid(&g).contains("%%"), "{}", mermaid(&g));
        assert!(!svg(&g).contains('\u{7}'));
    }

    proptest! {
        /// Every edge goes from a lower layer to a higher one, and every step is drawn once.
        #[test]
        fn edges_point_forward(n in 1usize..30, pairs in proptest::collection::vec((0usize..30, 0usize..30), 0..60)) {
            let edges: Vec<(usize, usize)> = pairs.into_iter().filter(|&(a, b)| a < n && b < n && a < b).collect();
            let g = graph(n, &edges);
            let of = layer_of(&g);
            for &(a, b) in &edges {
                prop_assert!(of[a] < of[b]);
            }
            let drawn = svg(&g);
            prop_assert_eq!(drawn.matches("<g class=\"step\"").count(), n);
            prop_assert_eq!(layers(&g).iter().map(Vec::len).sum::<usize>(), n);
        }
    }
}
