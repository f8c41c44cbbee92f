#!/usr/bin/env bash
# The quickstart: builds tilebox, then runs a workflow end to end on the embedded default and
# shows its result and timeline. `tilebox dev` runs the server (SQLite under the project's
# .tilebox/) and an in-process runner of a copy of examples/parallel-sleep, in one process;
# the job is submitted, waited for (a live bar on a terminal) and printed. Installs what it
# needs: uv from PyPI into the pinned Python, the project's dependencies from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/uv.sh

echo "building tilebox (the first release build takes a few minutes)" >&2
cargo build --release
tilebox="$PWD/target/release/tilebox"

work="$(mktemp -d)"
dev=""
cleanup() {
    if [ -n "$dev" ]; then
        kill -INT "$dev" 2>/dev/null || true
        wait "$dev" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
cp -r examples/parallel-sleep "$work/parallel-sleep"

echo "starting tilebox dev (syncs the project's environment with uv the first time)" >&2
"$tilebox" dev --listen 127.0.0.1:0 --quiet "$work/parallel-sleep" >"$work/dev.out" 2>"$work/dev.err" &
dev=$!
for _ in $(seq 1 1200); do
    if grep -q '^ready' "$work/dev.out"; then
        break
    fi
    if ! kill -0 "$dev" 2>/dev/null; then
        cat "$work/dev.err" >&2
        echo "tilebox dev stopped before it was ready" >&2
        exit 1
    fi
    if grep -q 'no code is loaded yet' "$work/dev.err"; then
        cat "$work/dev.err" >&2
        echo "tilebox dev could not load the example (above)" >&2
        exit 1
    fi
    sleep 0.5
done
if ! grep -q '^ready' "$work/dev.out"; then
    cat "$work/dev.err" >&2
    echo "tilebox dev was not ready within 10 minutes" >&2
    exit 1
fi
cat "$work/dev.out"
TILEBOX_API_URL="$(awk '$1 == "API" { print $2 }' "$work/dev.out")"
export TILEBOX_API_URL

echo
echo "\$ tilebox job submit --name quickstart --task ParallelSleepWorkflow --input '{\"count\": 6, \"seconds\": 0.5}'"
job="$("$tilebox" --json job submit --name quickstart --task ParallelSleepWorkflow \
    --input '{"count": 6, "seconds": 0.5}' | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')"
echo "submitted job $job"
echo "\$ tilebox job wait $job"
"$tilebox" job wait "$job"
echo
echo "\$ tilebox job get $job"
"$tilebox" job get "$job"
echo
echo "\$ tilebox job spans $job --timeline"
"$tilebox" job spans "$job" --timeline
