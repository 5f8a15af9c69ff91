#!/usr/bin/env bash
# The main job: the order-fulfilment example workflow on the engine's default store (the
# embedded SQLite file ./tasker.db), in Rust, Python and Ruby.
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
echo
echo "== Ruby (the gem built from source and installed with gem install --local)"
bash scripts/ruby.sh >/dev/null
ruby examples/ruby/order_fulfilment.rb "$@"
