#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian machine (idempotent).
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run on its own.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 \
  || need_apt+=(postgresql)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
command -v valgrind >/dev/null 2>&1 || need_apt+=(valgrind)
# Ruby, its headers and libclang (for rb-sys) and the test gems, from Debian: the gem registry
# is not used.
command -v ruby >/dev/null 2>&1 || need_apt+=(ruby)
[ -f /usr/include/ruby-*/ruby.h ] 2>/dev/null || ls /usr/include/ruby-*/ruby.h >/dev/null 2>&1 || need_apt+=(ruby-dev)
# libclang-cpp (pulled in by other packages) is not the C library bindgen loads.
ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
ruby -e 'require "minitest"' >/dev/null 2>&1 || need_apt+=(ruby-minitest)
ruby -e 'require "rails"' >/dev/null 2>&1 || need_apt+=(ruby-rails)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The dashboard's browser test: Debian's Chromium, driven by its chromedriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust with rustup first" >&2
  exit 1
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" \
    || rustup component add "$component" >/dev/null 2>&1 || true
done
