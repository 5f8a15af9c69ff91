//! Property-based fuzzing of the template loaders (proptest, stable Rust): arbitrary bytes and
//! mutated valid templates never panic, and either load or give a typed error.

use std::str::FromStr;

use proptest::prelude::*;
use tasker_core::template::{TaskTemplate, TemplateError};

/// Valid templates to mutate: the example's, a few of this project's, and the Rails Tasker and
/// tasker-core samples in `../shared/compat/` when they are there.
fn seeds() -> Vec<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut seeds = vec![
        std::fs::read_to_string(format!("{root}/examples/order_fulfilment.yaml"))
            .expect("the example template"),
        "namespace: n\nname: t\nversion: 1.0.0\nsteps:\n  - name: a\n  - name: b\n    depends_on: [a]\n"
            .to_owned(),
        r#"{"namespace":"n","name":"j","version":"1.0.0","steps":[{"name":"a","retry":{"max_attempts":3}}]}"#
            .to_owned(),
    ];
    if let Ok(dir) = std::fs::read_dir(format!("{root}/../shared/compat")) {
        for entry in dir.flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                seeds.push(text);
            }
        }
    }
    seeds
}

/// Loads `text` as the engine does (YAML or JSON, then compiled): `Ok` or a typed error.
fn load(text: &str) -> Result<(), TemplateError> {
    let template = if text.trim_start().starts_with('{') {
        TaskTemplate::from_json(text)?
    } else {
        TaskTemplate::from_str(text)?
    };
    template.compile().map(drop)
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Insert(usize, u8),
    Replace(usize, u8),
    Duplicate(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop::sample::select(b" \n:-[]{},\"'#&*!|>0123456789abcxyz_\t\\".to_vec());
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Edit::Duplicate(i, n)),
    ]
}

fn mutate(text: &str, edits: &[Edit]) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for e in edits {
        match *e {
            Edit::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i % bytes.len());
            }
            Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Edit::Replace(i, b) if !bytes.is_empty() => {
                let n = bytes.len();
                bytes[i % n] = b;
            }
            Edit::Duplicate(i, n) if !bytes.is_empty() => {
                let start = i % bytes.len();
                let end = (start + n).min(bytes.len());
                let copy = bytes[start..end].to_vec();
                bytes.splice(start..start, copy);
            }
            _ => {}
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = load(&text);
    }

    #[test]
    fn mutated_valid_templates_never_panic(
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let seeds = seeds();
        let text = &seeds[seed.index(seeds.len())];
        let mutated = mutate(text, &edits);
        let _ = load(&String::from_utf8_lossy(&mutated));
    }
}

#[test]
fn the_seeds_load_before_mutation() {
    // The project's own seeds are valid; the compat samples may need the template-format work.
    for text in seeds().iter().take(3) {
        load(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    }
}

#[test]
fn deeply_nested_text_is_an_error_not_a_stack_overflow() {
    for depth in [100, 10_000, 200_000] {
        let yaml = format!(
            "namespace: n\nname: t\nversion: 1.0.0\nsteps: {}{}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(load(&yaml).is_err());
        let json = format!(
            r#"{{"namespace":"n","name":"t","version":"1.0.0","steps":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(load(&json).is_err());
    }
}
