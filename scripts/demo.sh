#!/usr/bin/env bash
# The main job: the order-fulfilment example workflow on the engine's default store.
# Usage: scripts/demo.sh [STORE_URL]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --quiet --release -p tasker-core-examples --bin order_fulfilment -- "$@"
