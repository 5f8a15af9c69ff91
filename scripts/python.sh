#!/usr/bin/env bash
# Builds the tasker_core wheel with maturin and installs it into a fresh venv at target/pyvenv.
# Prints the venv's python path on its last line. Used by scripts/test.sh and scripts/demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/pyvenv
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "maturin>=1.5,<2" "pytest>=7" "prometheus_client>=0.17" "opentelemetry-proto>=1.20"
rm -rf target/wheels
"$venv/bin/maturin" build --quiet --release -m bindings-python/Cargo.toml -o target/wheels >&2
"$venv/bin/pip" install --quiet target/wheels/tasker_core-*.whl
echo "$venv/bin/python"
