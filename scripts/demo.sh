#!/usr/bin/env bash
# The main job: the order-fulfilment example workflow on the engine's default store (the
# embedded SQLite file ./tasker.db), in Rust and in Python.
# Usage: scripts/demo.sh [STORE_URL]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== Rust"
cargo run --quiet --release -p tasker-core-examples --bin order_fulfilment -- "$@"
echo
echo "== Python (the wheel built by maturin, installed into target/pyvenv)"
python=$(bash scripts/python.sh | tail -n 1)
"$python" examples/python/order_fulfilment.py "$@"
