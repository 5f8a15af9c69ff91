#!/usr/bin/env bash
# Builds the C library (target/release/libtasker_core.{so,a}) and a pkg-config file for it.
# With a prefix argument, also installs: scripts/c.sh /usr/local
#   -> PREFIX/include/tasker_core.h, PREFIX/lib/libtasker_core.{so,a},
#      PREFIX/lib/pkgconfig/tasker_core.pc   (then: cc app.c $(pkg-config --cflags --libs tasker_core))
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release -p tasker-core-c
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

write_pc() { # prefix includedir libdir
  cat <<PC
prefix=$1
includedir=$2
libdir=$3

Name: tasker_core
Description: Tasker Core workflow engine, C API
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -ltasker_core
Libs.private: -lpthread -ldl -lm
PC
}

mkdir -p target/release/pkgconfig
write_pc "$PWD" "$PWD/include" "$PWD/target/release" > target/release/pkgconfig/tasker_core.pc

if [ $# -ge 1 ]; then
  prefix=$1
  install -d "$prefix/include" "$prefix/lib/pkgconfig"
  install -m 644 include/tasker_core.h "$prefix/include/"
  install -m 755 target/release/libtasker_core.so "$prefix/lib/"
  install -m 644 target/release/libtasker_core.a "$prefix/lib/"
  write_pc "$prefix" "$prefix/include" "$prefix/lib" > "$prefix/lib/pkgconfig/tasker_core.pc"
  echo "installed into $prefix (ldconfig may be needed for the shared library)"
fi
