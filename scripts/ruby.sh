#!/usr/bin/env bash
# Builds the tasker_core gem from source and installs it (gem build + gem install --local):
# vendors the core crate (cargo package) into the extension, so that the gem's own extconf.rb
# compiles everything with cargo. Prints the installed gem's version on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo package --quiet -p tasker-core --allow-dirty --no-verify
vendor=bindings-ruby/ext/tasker_core/vendor
rm -rf "$vendor" && mkdir -p "$vendor"
tar -xzf target/package/tasker-core-*.crate -C "$vendor"
mv "$vendor"/tasker-core-* "$vendor/tasker-core"
# The package keeps the sources' old times: touch them, or an incremental build keeps stale code.
find "$vendor" -type f -exec touch {} +
# The extension's build shares one cargo target dir across runs (it is not in the workspace).
export TASKER_CORE_CARGO_TARGET_DIR="$PWD/target/ruby-ext"
# A failed install leaves its files behind, and the next install would build those: remove them.
gem uninstall --all --ignore-dependencies --executables tasker_core >/dev/null 2>&1 || true
gemdir="$(gem environment gemdir)"
rm -rf "$gemdir"/gems/tasker_core-* "$gemdir"/extensions/*/*/tasker_core-*
(cd bindings-ruby && rm -f tasker_core-*.gem && gem build --quiet tasker_core.gemspec >&2 \
  && gem install --local --no-document tasker_core-*.gem >&2)
ruby -e 'require "tasker_core"; puts TaskerCore::VERSION'
