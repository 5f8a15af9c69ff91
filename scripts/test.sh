#!/usr/bin/env bash
# Every test: formatting, lints, the Rust unit / property / scenario tests of every crate (the
# scenario suite against memory, SQLite and PostgreSQL), the examples and a smoke run of the
# throughput harness. PostgreSQL: the server at DATABASE_URL, else a throwaway cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/postgres.sh
start_postgres

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (workspace)"
cargo test --workspace 2>&1 | tee target/test-output.txt
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' target/test-output.txt)

step "example: order fulfilment"
cargo run --quiet -p tasker-core-examples --bin order_fulfilment

step "throughput harness (smoke)"
cargo run --quiet -p tasker-core-benches --bin throughput -- --smoke

echo
echo "rust: ${passed} passed, ${failed} failed"
