# frozen_string_literal: true

# Builds the native extension with cargo (the gem registry is not needed: Ruby's headers and
# libclang come from the system, the crates from crates.io) and writes a Makefile whose
# `install` target puts tasker_core/tasker_core_native.<dlext> where RubyGems expects it.
require "mkmf"
require "rbconfig"

cargo = ENV.fetch("CARGO", "cargo")
abort "tasker_core: cargo is required to build the native extension (install Rust with rustup)" unless find_executable(cargo)
dir = File.expand_path(__dir__)
abort "tasker_core: #{dir}/vendor/tasker-core is missing (build the gem with scripts/ruby.sh)" unless File.exist?(File.join(dir, "vendor", "tasker-core", "Cargo.toml"))
dlext = RbConfig::CONFIG["DLEXT"]
target = ENV.fetch("TASKER_CORE_CARGO_TARGET_DIR", File.join(dir, "target"))

File.write("Makefile", <<~MAKE)
  sitearchdir ?= #{RbConfig::CONFIG["sitearchdir"]}
  DESTDIR ?=

  all: tasker_core_native.#{dlext}

  tasker_core_native.#{dlext}:
  \t#{cargo} build --release --manifest-path #{dir}/Cargo.toml --target-dir #{target}
  \tcp #{target}/release/libtasker_core_native.so tasker_core_native.#{dlext}

  install: all
  \tmkdir -p $(DESTDIR)$(sitearchdir)/tasker_core
  \tcp tasker_core_native.#{dlext} $(DESTDIR)$(sitearchdir)/tasker_core/

  clean:
  \trm -f tasker_core_native.#{dlext}
MAKE
