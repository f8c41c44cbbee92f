#!/usr/bin/env bash
# Runs every fuzz target for a bounded time.
#
#     bash tests/fuzz/run.sh [SECONDS_PER_TARGET]        (default 60; or FUZZ_SECONDS)
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_TARGETS    space-separated targets (default: all six)
#   FUZZ_TOOLCHAIN  toolchain for `cargo +TOOLCHAIN fuzz` (default nightly); with a stable
#                   toolchain the script sets RUSTC_BOOTSTRAP=1 so -Zsanitizer is accepted
#   FUZZ_JOBS       parallel fuzzing jobs per target (default 1)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The corpus grows in tests/fuzz/corpus/<target>
# (not committed; seeded from tests/fuzz/seeds/<target>); crashes land in
# tests/fuzz/artifacts/<target>, and the script exits non-zero on the first target that finds
# one. Reproduce one with `cargo +nightly fuzz run --fuzz-dir tests/fuzz <target> <file>`.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
seconds="${1:-${FUZZ_SECONDS:-60}}"
targets="${FUZZ_TARGETS:-archive_file archive_tar workflow_config task_submissions otlp_bodies task_protocol}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
jobs="${FUZZ_JOBS:-1}"

cd "$root"
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
    echo "error: \`cargo +$toolchain fuzz\` is not available" >&2
    echo "hint: cargo install cargo-fuzz; rustup toolchain install nightly (or FUZZ_TOOLCHAIN=stable)" >&2
    exit 1
fi
if ! cargo "+$toolchain" --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
# The crate's own build flag (.cargo/config.toml's build.rustflags do not apply once
# cargo-fuzz sets RUSTFLAGS).
export RUSTFLAGS="${RUSTFLAGS:-} --cfg pyo3_disable_reference_pool"
# The targets link libpython through pyo3 (unused by them); let the loader find it.
libdir="$(.cargo/python3.13 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

cargo "+$toolchain" fuzz build --fuzz-dir tests/fuzz
status=0
for target in $targets; do
    corpus="tests/fuzz/corpus/$target"
    mkdir -p "$corpus"
    echo "== $target: ${seconds}s" >&2
    log="$(mktemp)"
    parallel=()
    if [ "$jobs" -gt 1 ]; then
        parallel=(-jobs="$jobs" -workers="$jobs")
    fi
    if ! cargo "+$toolchain" fuzz run --fuzz-dir tests/fuzz "$target" "$corpus" "tests/fuzz/seeds/$target" -- \
        -max_total_time="$seconds" "${parallel[@]}" -rss_limit_mb=4096 -timeout=30 \
        -print_final_stats=1 2>"$log"; then
        tail -n 60 "$log" >&2
        echo "error: $target found a crash (see tests/fuzz/artifacts/$target)" >&2
        status=1
    fi
    # One summary line per target: executions, speed, coverage, corpus size.
    grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' "$log" \
        | tr '\n' ' ' >&2 || true
    grep -E '#[0-9]+.*(DONE|cov:)' "$log" | tail -n 1 >&2 || true
    echo >&2
    rm -f "$log"
    [ "$status" -eq 0 ] || exit "$status"
done
