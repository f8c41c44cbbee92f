#!/usr/bin/env python3
"""How fast the web console opens a big job: the pages of one 100,000-task job.

    python3 bench/console.py [--binary PATH] [--no-build] [--backends sqlite,pg1]
                             [--fanout 100000] [--logs 110000] [--samples 20] [--slots 2]
                             [--json-out F] [--keep-temp]

For each backend (as `bench/backends.py` starts it: a fresh server, our runner in direct
mode serving `workload.py`), one `FanOut` job of --fanout no-op subtasks runs to completion
(checked: completed, every task computed), and --logs log records (info, warn, error and
debug in turn) are exported into its trace over OTLP/HTTP, 10,000 an export (the server's
limit): more than the 100,000 the logs tab counts. Then, on a quiet machine, each console view of
that job is fetched --samples times over one kept-alive HTTP/1.1 connection, as a browser
would, and the median, p95 and largest time to the last byte are reported with the body
size:

- `/jobs`: the jobs page (the first 50 jobs);
- `/jobs/<id>`: the job page as a browser first opens it (header, Tasks tab: the root);
- `/jobs/<id>/header`: the header fragment the page polls;
- `/jobs/<id>/tasks?parent=<root>`: the first page of the root's 100,000 children (the
  expander);
- `/jobs/<id>?tab=execution`: the timeline (capped at 2,000 spans);
- `/jobs/<id>?tab=logs`: the first page of logs, under the count per level;
- `/jobs/<id>/log-counts`: the count per level alone (polled every 5 s while a job runs).

The timings are the server's answer over loopback, not a browser's rendering. As the other
harnesses, it prints the load average and waits for a quiet machine first.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from backends import Backend, Postgres
from processes import DEFAULT_BINARY, Harness, fmt, load_average, log, machine, percentile

VIEWS = (
    ("jobs page", "/jobs"),
    ("job page", "/jobs/{job}"),
    ("header fragment", "/jobs/{job}/header"),
    ("root's children, first page", "/jobs/{job}/tasks?parent={root}"),
    ("execution tab", "/jobs/{job}?tab=execution"),
    ("logs tab", "/jobs/{job}?tab=logs"),
    ("log counts fragment", "/jobs/{job}/log-counts"),
)

EXPORT_RECORDS = 10_000
LEVELS = ((9, "INFO"), (13, "WARN"), (17, "ERROR"), (5, "DEBUG"))


def export_logs(url: str, trace_parent: str, count: int) -> None:
    """Exports `count` log records into the trace of `trace_parent` over OTLP/HTTP JSON."""
    trace_id = trace_parent.split("-")[1]
    address = urlparse(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    now = time.time_ns()
    sent = 0
    while sent < count:
        batch = min(EXPORT_RECORDS, count - sent)
        records = []
        for index in range(sent, sent + batch):
            number, text = LEVELS[index % len(LEVELS)]
            records.append(
                {
                    "timeUnixNano": str(now + index),
                    "severityNumber": number,
                    "severityText": text,
                    "body": {"stringValue": f"bench line {index}"},
                    "traceId": trace_id,
                }
            )
        body = json.dumps(
            {"resourceLogs": [{"resource": {"attributes": []}, "scopeLogs": [{"logRecords": records}]}]}
        ).encode()
        connection.request(
            "POST", "/v1/logs", body=body, headers={"Content-Type": "application/json", "Host": "127.0.0.1"}
        )
        response = connection.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST /v1/logs answered {response.status}: {answer[:300]!r}")
        sent += batch
    connection.close()


def fetch(connection: http.client.HTTPConnection, path: str, fragment: bool) -> tuple[float, int, int]:
    headers = {"Host": "127.0.0.1"}
    if fragment:
        headers["X-Tilebox-Fragment"] = "1"
    start = time.perf_counter()
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    return time.perf_counter() - start, response.status, len(body)


def measure_views(url: str, job: str, root: str, samples: int) -> list[dict]:
    address = urlparse(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    results = []
    for label, template in VIEWS:
        path = template.format(job=job, root=root)
        fragment = path.endswith(("/header", "/log-counts")) or "/tasks?" in path
        fetch(connection, path, fragment)  # warm: the first read of a page fills caches
        times, sizes = [], set()
        for _ in range(samples):
            seconds, status, size = fetch(connection, path, fragment)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}")
            times.append(seconds * 1000)
            sizes.add(size)
        result = {
            "view": label,
            "path": path,
            "samples": samples,
            "p50_ms": percentile(times, 50),
            "p95_ms": percentile(times, 95),
            "max_ms": max(times),
            "bytes": max(sizes),
        }
        log(
            f"{label} ({path}): p50 {fmt(result['p50_ms'], 1)} ms, p95 {fmt(result['p95_ms'], 1)} ms, "
            f"max {fmt(result['max_ms'], 1)} ms, {result['bytes']:,} bytes"
        )
        results.append(result)
    connection.close()
    return results


def run(args: argparse.Namespace, harness: Harness) -> dict:
    results: dict = {
        "machine": machine(),
        "command": "python3 bench/console.py " + " ".join(sys.argv[1:]),
        "settings": dict(vars(args)),
        "backends": {},
        "conditions": harness.conditions,
    }
    log(f"load average {load_average()} (1/5/15 min) on {results['machine']['nproc']} CPUs")
    harness.prepare_binary()
    harness.write_project()
    postgres = Postgres(harness) if "pg1" in args.backends else None
    for name in args.backends:
        backend = Backend(harness, name, postgres, args.slots)
        suite = results["backends"][name] = {}
        try:
            harness.wait_quiet(f"{name} fan-out of {args.fanout:,}")
            fanout = backend.fanout(f"bench-console-{name}.", args.fanout, 60 + args.fanout / 300)
            if not fanout["ok"]:
                raise RuntimeError(f"the fan-out of {name} did not complete: {fanout}")
            job = harness.cli_json("job", "list", "--name", f"bench-console-{name}.", "--limit", "1")["jobs"][0]["id"]
            document = harness.cli_json("job", "get", job, timeout=300)
            root = document["tasks"][0]["id"]  # the tree's roots come first; a fan-out has one
            suite["fanout"] = fanout
            started = time.perf_counter()
            export_logs(harness.url, document["trace_parent"], args.logs)
            log(f"exported {args.logs:,} log records in {time.perf_counter() - started:.1f} s")
            harness.wait_quiet(f"{name} console views")
            suite["views"] = measure_views(harness.url, job, root, args.samples)
        except (RuntimeError, OSError, KeyError, ValueError, IndexError) as error:
            log(f"backend {name} failed: {error}")
            suite["error"] = str(error)[-2000:]
        finally:
            backend.stop()
    return results


def markdown(results: dict) -> str:
    lines = [
        f"`{results['command']}`, load average at the start {results['conditions'][0]['load_average'][0]:.2f}"
        if results["conditions"]
        else f"`{results['command']}`",
        "",
        "| backend | view | p50 | p95 | max | bytes |",
        "|---|---|---|---|---|---|",
    ]
    for name, suite in results["backends"].items():
        if "error" in suite:
            lines.append(f"| {name} | failed: {suite['error'][:200]} | | | | |")
            continue
        for view in suite["views"]:
            lines.append(
                f"| {name} | {view['view']} | {fmt(view['p50_ms'], 1)} ms | {fmt(view['p95_ms'], 1)} ms "
                f"| {fmt(view['max_ms'], 1)} ms | {view['bytes']:,} |"
            )
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--binary", default=str(DEFAULT_BINARY))
    add("--no-build", action="store_true")
    add("--backends", default="sqlite", help="comma-separated subset of: sqlite,pg1")
    add("--fanout", type=int, default=100_000)
    add("--logs", type=int, default=110_000)
    add("--samples", type=int, default=20)
    add("--slots", type=int, default=2)
    add("--database-writers", type=int, default=2)
    add("--quiet-wait", type=float, default=30)
    add("--quiet-total", type=float, default=240)
    add("--quiet-cores", type=float, default=0.3)
    add("--data-base", default=None)
    add("--seed", type=int, default=1)
    add("--json-out")
    add("--keep-temp", action="store_true")
    args = parser.parse_args()
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - {"sqlite", "pg1"}
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    return args


def main() -> None:
    args = parse_args()
    harness = Harness(args)
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        results = run(args, harness)
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(1)
    finally:
        harness.cleanup()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=str))
    print(markdown(results), end="")
    if any("error" in suite for suite in results["backends"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
