#!/usr/bin/env bash
# Every test: formatting, lints, the Rust unit / property / scenario tests of every crate (the
# scenario suite against memory, SQLite and PostgreSQL), the examples, and every benchmark built
# and run once as a smoke test. PostgreSQL: the server at DATABASE_URL, else a throwaway cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/postgres.sh
start_postgres

step() { printf '\n==> %s\n' "$*"; }
# No incremental caches: a fresh clone builds once, and they would take gigabytes of disk.
export CARGO_INCREMENTAL=0
# Whatever way the run ends, say how much disk it took (a full disk once failed CI), and stop
# the throwaway cluster (this trap replaces the one start_postgres set, so it calls it).
finish() {
  echo "disk: target/ holds $(du -sh target 2>/dev/null | cut -f1), $(df -h . | awk 'NR == 2 { print $4 }') free"
  stop_postgres
}
trap finish EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (workspace)"
# The dashboard's browser test must run here, not skip (setup.sh installed Chromium).
export TASKER_REQUIRE_BROWSER=1
cargo test --workspace 2>&1 | tee target/test-output.txt
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' target/test-output.txt)

# The suites made a schema per engine (tasker_test_*): drop them (DATABASE_URL may be shared).
psql -qAt "$TASKER_TEST_POSTGRES_URL" -c "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tasker\_test\_%'" \
  | while read -r schema; do psql -q "$TASKER_TEST_POSTGRES_URL" -c "DROP SCHEMA $schema CASCADE" 2>/dev/null; done

step "python: the wheel (maturin) in a fresh venv, pytest"
python=$(bash scripts/python.sh | tail -n 1)
(cd bindings-python && "../$python" -m pytest -q tests) | tee target/pytest-output.txt
py_passed=$(grep -Eo '[0-9]+ passed' target/pytest-output.txt | tail -n 1 | grep -Eo '[0-9]+' || echo 0)
py_failed=$(grep -Eo '[0-9]+ failed' target/pytest-output.txt | tail -n 1 | grep -Eo '[0-9]+' || echo 0)

step "ruby: the gem built from source (gem build + gem install --local), minitest"
bash scripts/ruby.sh
# The Rails app's dashboard test runs the tasker binary cargo test built.
(cd bindings-ruby && TASKER_BIN="$PWD/../target/debug/tasker" ruby -Itest -e 'Dir["test/**/*_test.rb"].sort.each { |f| require File.expand_path(f) }') \
  | tee target/ruby-output.txt
rb_passed=$(awk '/runs, .* assertions/ { runs = $1; fails = $5 + $7 } END { print runs - fails }' target/ruby-output.txt)
rb_failed=$(awk '/runs, .* assertions/ { print $5 + $7 }' target/ruby-output.txt | tail -n 1)

step "c: the library, the header drift test, the C tests under valgrind"
bash scripts/c.sh
(bash tests/c/run.sh) | tee target/c-output.txt
c_passed=$(grep -Eo '^c: [0-9]+ passed' target/c-output.txt | grep -Eo '[0-9]+' || echo 0)
c_failed=$(grep -Eo '[0-9]+ failed' target/c-output.txt | tail -n 1 | grep -Eo '[0-9]+' || echo 0)
# The installed pkg-config file works for a plain cc build.
PKG_CONFIG_PATH=target/release/pkgconfig cc -std=c11 -Wall -Werror examples/c/order_fulfilment.c \
  $(PKG_CONFIG_PATH=target/release/pkgconfig pkg-config --cflags --libs tasker_core) -o target/c-example

step "example: order fulfilment"
cargo run --quiet -p tasker-core-examples --bin order_fulfilment memory:
"$python" examples/python/order_fulfilment.py memory:
LD_LIBRARY_PATH=target/release ./target/c-example examples/order_fulfilment.yaml memory:
ruby examples/ruby/order_fulfilment.rb memory:

step "benchmarks: every bench builds (cargo bench --no-run); smoke: each runs once at a small size"
# The smoke runs are criterion's test mode: a handful of steps per figure, nothing measured. They
# check the readiness SQL baseline against the Rust answer, run the end-to-end workload on every
# store (3 worker processes on PostgreSQL) and drive the FFI workload from Python, Ruby and C.
cargo bench --workspace --no-run --quiet
TASKER_BENCH_POSTGRES_URL="$TASKER_TEST_POSTGRES_URL" TASKER_BENCH_REQUIRE_BINDINGS=1 \
  cargo test --quiet -p tasker-core-benches --benches 2>&1 | tee target/bench-smoke-output.txt
# The dashboard's page benchmark (a 1,000-step task's page through its router).
cargo test --quiet -p tasker-cli --benches 2>&1 | tee -a target/bench-smoke-output.txt
bench_passed=$(grep -c '^Success$' target/bench-smoke-output.txt || true)
cargo run --quiet -p tasker-core-benches --bin throughput -- --smoke
cargo run --quiet -p tasker-core-benches --bin throughput -- --smoke --template chain --overlap
cargo run --quiet -p tasker-core-benches --bin throughput -- --create 50
passed=$((passed + bench_passed))

echo
echo "rust: ${passed} passed, ${failed} failed"
echo "python: ${py_passed} passed, ${py_failed} failed"
echo "ruby: ${rb_passed} passed, ${rb_failed} failed"
echo "c: ${c_passed} passed, ${c_failed} failed"
echo "all: $((passed + py_passed + rb_passed + c_passed)) passed, $((failed + py_failed + rb_failed + c_failed)) failed"
