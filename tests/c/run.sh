#!/usr/bin/env bash
# Builds and runs the C tests (tests/c/test_*.c) and the C example (examples/c/order_fulfilment.c)
# against the library that bindings-c builds, each under valgrind.
#
#   cargo build --release -p tasker-core-c     # first: this script does not build Rust
#   bash tests/c/run.sh                        # from the repository root
#
# Prints one line per program and a final "c: N passed, M failed"; exits non-zero on any failure.
# A failing program's output is shown; every log stays in target/c-tests/<name>.log.
# valgrind is required; only with TASKER_C_NO_VALGRIND=1 *and* no valgrind installed do the
# programs run without it.
set -u

root=$(pwd)
include_dir=$root/include
lib_dir=$root/target/release
out_dir=$root/target/c-tests
example_yaml=$root/examples/order_fulfilment.yaml

die() {
    echo "tests/c/run.sh: $*" >&2
    exit 2
}

[ -f "$root/tests/c/run.sh" ] || die "run me from the repository root: bash tests/c/run.sh"
[ -f "$include_dir/tasker_core.h" ] || die "missing include/tasker_core.h"
[ -f "$lib_dir/libtasker_core.so" ] ||
    die "missing target/release/libtasker_core.so (first: cargo build --release -p tasker-core-c)"
command -v gcc >/dev/null || die "gcc is not installed"

valgrind=(valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite
    --show-leak-kinds=definite)
if ! command -v valgrind >/dev/null; then
    if [ "${TASKER_C_NO_VALGRIND:-}" = 1 ]; then
        echo "valgrind is not installed and TASKER_C_NO_VALGRIND=1: running WITHOUT valgrind" \
            "(no memory checks)"
        valgrind=()
    else
        die "valgrind is not installed (install it, or set TASKER_C_NO_VALGRIND=1 to run without)"
    fi
fi

# A run that hangs fails after this many seconds (valgrind makes everything slower).
time_limit=${TASKER_C_TIMEOUT:-600}
limit=()
command -v timeout >/dev/null && limit=(timeout --kill-after=10 "$time_limit")

mkdir -p "$out_dir"
cflags=(-std=c11 -Wall -Wextra -Werror -pthread -I "$include_dir")
passed=0
failed=0

# run_one NAME SOURCE [ARGS...]: compile SOURCE to target/c-tests/NAME and run it.
run_one() {
    local name=$1 source=$2
    shift 2
    local exe=$out_dir/$name log=$out_dir/$name.log
    if ! gcc "${cflags[@]}" "$source" -L "$lib_dir" -ltasker_core -o "$exe" >"$log" 2>&1; then
        echo "FAIL $name (does not compile)"
        sed 's/^/    /' "$log"
        failed=$((failed + 1))
        return
    fi
    local start=$SECONDS rc=0
    LD_LIBRARY_PATH=$lib_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
        "${limit[@]}" "${valgrind[@]}" "$exe" "$@" >>"$log" 2>&1 || rc=$?
    local took=$((SECONDS - start))
    if [ "$rc" = 0 ]; then
        echo "ok   $name (${took}s)"
        passed=$((passed + 1))
    else
        case $rc in
        99) why="valgrind found errors" ;;
        124 | 137) why="timed out after ${time_limit}s" ;;
        *) why="exit status $rc" ;;
        esac
        echo "FAIL $name ($why)"
        sed 's/^/    /' "$log"
        failed=$((failed + 1))
    fi
}

for source in "$root"/tests/c/test_*.c; do
    name=$(basename "$source" .c)
    run_one "$name" "$source"
done
run_one order_fulfilment "$root/examples/c/order_fulfilment.c" "$example_yaml" "memory:"

echo "c: $passed passed, $failed failed"
[ "$failed" = 0 ]
