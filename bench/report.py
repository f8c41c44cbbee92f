"""The markdown section `bench/run.py` prints, made to be pasted into BENCHMARKS.md as it is."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from processes import SDK_VERSION, fmt

RUNNER_NAMES = {"ours-n1": "ours `-n 1`", "ours-n2": "ours `-n 2`", "sdk": f"official SDK {SDK_VERSION} direct runner"}
MIB = 1024 * 1024
MISSING = "—"


def markdown(results: dict, args: argparse.Namespace) -> str:
    lines = header(results)
    if results.get("interrupted"):
        lines += ["**The run was interrupted: what follows is what it measured until then.**", ""]
    lines += runners(results, args)
    lines += scaling(results)
    lines += deploy(results)
    lines += conditions(results)
    for error in results.get("errors", []):
        first_line = (error["error"].strip().splitlines() or ["?"])[0][:300]
        lines.append(f"- **Step failed:** {error['step']}: {first_line}")
    return "\n".join(lines).rstrip() + "\n"


def table(columns: list[str], align: str) -> list[str]:
    """Header and separator of a markdown table; `align` has one letter per column, l or r."""
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---:" if letter == "r" else "---" for letter in align) + "|",
    ]


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:,.1f}"


def span(low: float | None, high: float | None, digits: int) -> str:
    return f"{fmt(low, digits)}–{fmt(high, digits)}"


def header(results: dict) -> list[str]:
    machine = results["machine"]
    fsync = "; ".join(
        f"p50 {results[key]['p50_ms']:.2f} ms, p99 {results[key]['p99_ms']:.2f} ms {when}"
        for when, key in (("before the run", "fsync_before"), ("after it", "fsync_after"))
        if key in results
    )
    load = " / ".join(f"{value:.2f}" for value in machine["load_average"])
    tree = f"`{machine['git_head']}`" + (" with uncommitted changes" if machine["git_dirty"] else "")
    return [
        f"### Run of {machine['date']}",
        "",
        f"**Command:** `{results['command'].strip()}` (binary `{results.get('binary', '?')}`)"
        + (f", {results['duration_s'] / 60:.1f} min." if "duration_s" in results else "."),
        "",
        f"**Machine:** {machine['nproc']} CPUs ({machine['cpu']}), {machine['mem_gib']} GiB RAM, "
        f"Linux {machine['kernel']}; tree {tree}. Load average at the start {load} (1 / 5 / 15 min).",
        "",
        f"**Server data dir** on {results.get('data_dir_fs', '?')}; a 4 KiB append + fdatasync there: {fsync}.",
        "",
    ]


# --- our runner against the SDK's --------------------------------------------------------------


def throughput_cell(suite: dict) -> str:
    result = suite["throughput"]
    rate = f"**{fmt(result['tasks_per_s'], 0)}** ({span(result['min_tasks_per_s'], result['max_tasks_per_s'], 0)})"
    return rate if result["all_ok"] else f"{rate}; {check(result)}"


def cpu_per_task_cell(suite: dict) -> str:
    result = suite["throughput"]
    server, runner = (result["cpu"]["cpu_s"][part] / result["total_tasks"] * 1e6 for part in ("server", "runner"))
    return f"{server:,.0f} / {runner:,.0f}"


def latency_cell(suite: dict) -> str:
    client = suite["latency"]["client_ms"]
    return f"**{fmt(client['p50'], 1)} / {fmt(client['p99'], 1)}**"


def server_latency_cell(suite: dict) -> str:
    server = suite["latency"]["server_ms"]
    return f"{fmt(server['p50'], 0)} / {fmt(server['p99'], 0)}"


def latency_outliers_cell(suite: dict) -> str:
    result = suite["latency"]
    return f"{result['client_over_100ms']} of {result['started']} / {fmt(result['client_ms']['max'], 0)}"


def cpu_bound_cell(suite: dict) -> str:
    result = suite["cpu_bound"]
    wall = f"**{fmt(result['wall_median_s'], 2)}** ({span(result['wall_min_s'], result['wall_max_s'], 2)})"
    return wall if result["all_ok"] else f"{wall} **not completed**"


def cpu_bound_detail_cell(suite: dict) -> str:
    result = suite["cpu_bound"]
    return f"{fmt(result['mean_task_ms'], 0)} ms / {result['busy_cores_median']:.2f}"


def rss_cell(suite: dict) -> str:
    rss = suite["rss_after"]
    text = f"{mib(rss['vmrss_kib'])} / {mib(rss['vmhwm_kib'])}"
    if rss["group_processes"] > 1:
        text += f" ({mib(rss['group_vmrss_kib'])} in {rss['group_processes']} processes)"
    return text


def check(result: dict) -> str:
    if result.get("all_ok", result.get("ok")):
        return "yes"
    return (
        f"**not completed**: {result['computed']:,} of {result['n'] + 1:,} computed, "
        f"{result['executions']:,} executions ({result['state']})"
    )


def runners(results: dict, args: argparse.Namespace) -> list[str]:
    suites = results.get("runners", {})
    labels = [label for label in RUNNER_NAMES if label in suites]
    if not labels:
        return []
    n, repeat = args.throughput_n, args.repeat
    rows: list[tuple[str, Callable[[dict], str]]] = [
        (f"no-op throughput, 1 + {n:,} tasks (tasks/s; median, range of {repeat})", throughput_cell),
        ("every job completed, every task executed once", lambda suite: check(suite["throughput"])),
        (
            f"root task: create and submit {n:,} subtasks (ms)",
            lambda suite: fmt(suite["throughput"]["root_s"] * 1000, 0),
        ),
        ("CPU per task: server / runner (µs)", cpu_per_task_cell),
        ("dispatch latency p50 / p99, submit call → task body (ms)", latency_cell),
        ("dispatch latency p50 / p99, server submitted → started (ms)", server_latency_cell),
        ("latency samples over 100 ms / max (ms)", latency_outliers_cell),
        ("submit call alone, p50 (ms)", lambda suite: fmt(suite["latency"]["submit_call_ms"]["p50"], 1)),
        (f"CPU-bound: {args.cpu_tasks} tasks (s; median, range of {repeat})", cpu_bound_cell),
        ("CPU-bound: mean task time / busy cores (server + runner)", cpu_bound_detail_cell),
        ("runner RSS at the end: VmRSS / VmHWM (MiB)", rss_cell),
    ]
    lines = ["#### Our runner against the official SDK's (same server, same jobs)", ""]
    lines += table([""] + [RUNNER_NAMES[label] for label in labels], "l" + "r" * len(labels))
    for title, cell in rows:
        cells = []
        for label in labels:
            try:
                cells.append(cell(suites[label]))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append(MISSING)
        if any(value != MISSING for value in cells):
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append("")

    one, two = (suites.get(label, {}).get("cpu_bound") for label in ("ours-n1", "ours-n2"))
    if one and two and one["wall_median_s"] and two["wall_median_s"]:
        lines += [
            f"**CPU-bound speedup, `-n 2` over `-n 1`: {one['wall_median_s'] / two['wall_median_s']:.2f}×** "
            f"(median walls; {one['wall_min_s'] / two['wall_min_s']:.2f}× from the best of each).",
            "",
        ]
    if "throughput" in args.only:
        lines.append(
            f"- Throughput: a root task submits {n:,} no-op subtasks; the runner is warm (a 50-task job ran first); "
            "tasks/s = all tasks of the job / (last task stopped − job submitted), server timestamps in "
            "milliseconds. The no-op task appends one byte to an open file, which counts its executions."
        )
    if "latency" in args.only:
        lines.append(
            f"- Dispatch latency: {args.latency_samples} single-task jobs per runner, one at a time on the idle "
            f"runner, each after a seeded random pause of {args.latency_min_gap:g}–{args.latency_gap:g} s; "
            "from `time.time_ns()` right before the SDK client's submit call to the `time.time_ns()` "
            "that is the task's first statement, loopback."
        )
    calibration = results.get("cpu_calibration")
    if calibration:
        lines.append(
            f"- CPU-bound: one job whose root submits {args.cpu_tasks} tasks of "
            f"`for value in range({calibration['iterations']:,}): total += value` "
            f"(calibrated to {args.cpu_task_ms:g} ms in the SDK venv's CPython), from the job's submission "
            "to its last task's stop; "
            "speedup = wall with `-n 1` / wall with `-n 2`."
        )
    lines.append("")
    return lines


# --- scaling -----------------------------------------------------------------------------------


def scaling(results: dict) -> list[str]:
    scaling_table = results.get("scaling")
    if not scaling_table:
        return []
    lines = [f"#### Scaling: fan-outs of no-op tasks, our runner `-n {scaling_table['slots']}`", ""]
    columns = [
        "fan-out",
        "outcome",
        "submit → last task (s)",
        "tasks/s",
        "rate by quarter of the run (tasks/s)",
        "peak server RSS (MiB)",
        "peak runner RSS (MiB)",
        "database after (MiB)",
    ]
    lines += table(columns, "rlrrlrrr")
    for row in scaling_table["rows"]:
        lines.append(scaling_row(row))
    lines += [
        "",
        "- Each row is one job on the same server, one after another, on a warm runner; timed like the throughput. "
        "Peak RSS: the larger of VmHWM (reset through `/proc/PID/clear_refs` when the row starts) and the largest "
        "VmRSS of the process group (children included) sampled every 0.25 s. Database: the SQLite file plus its "
        "`-wal` after the row (in brackets, its growth during the row).",
        "- Rate by quarter: tasks computed per second between the client's polls (every 2–5 s), "
        "from the root task's submission of the subtasks to the end.",
        "",
    ]
    return lines


def scaling_row(row: dict) -> str:
    if row.get("skipped"):
        return f"| {row['n']:,} | skipped: {row['skipped']} |" + " |" * 6
    if row["ok"]:
        outcome = "completed, every task executed once"
        elapsed, rate = fmt(row["elapsed_s"], 2), f"**{fmt(row['tasks_per_s'], 0)}**"
    else:
        outcome = (
            f"**not completed** ({row['state']} after {row['client_wall_s']:.0f} s, timeout {row['timeout_s']:.0f} s): "
            f"{row['computed']:,} of {row['n'] + 1:,} computed, {row['executions']:,} executions"
        )
        elapsed, rate = "n/a", f"({row['computed'] / row['client_wall_s']:,.0f} so far)"
    database = f"{row['database_bytes'] / MIB:,.1f} (+{row['database_growth_bytes'] / MIB:,.1f})"
    cells = [
        f"{row['n']:,}",
        outcome,
        elapsed,
        rate,
        quarters(row["samples"]),
        mib(row["server_peak_kib"]),
        mib(row["runner_peak_kib"]),
        database,
    ]
    return "| " + " | ".join(cells) + " |"


def quarters(samples: list[dict]) -> str:
    """Rates over the four quarters of the polls after the root task submitted the subtasks."""
    points = [sample for sample in samples if sample["total"] > 1]
    if len(points) < 5:
        return MISSING
    marks = [points[index * (len(points) - 1) // 4] for index in range(5)]
    rates = [
        f"{(later['computed'] - earlier['computed']) / (later['t'] - earlier['t']):,.0f}"
        for earlier, later in zip(marks, marks[1:], strict=False)
        if later["t"] > earlier["t"]
    ]
    return " → ".join(rates)


# --- deploy and conditions ---------------------------------------------------------------------


def deploy(results: dict) -> list[str]:
    rounds = results.get("deploy", {}).get("rounds")
    if not rounds:
        return []

    def ms(value: float | None) -> str:
        return fmt(value * 1000 if value is not None else None, 0)

    lines = ["#### Deploy-to-first-task (release runner, `runner start --cluster`)", ""]
    columns = [
        "round",
        "publish-release (ms)",
        "deploy-release (ms)",
        "deploy returned → task started (ms)",
        "of which → release loaded / loaded → started (ms)",
    ]
    lines += table(columns, "lrrrr")
    for entry in rounds:
        split = f"{ms(entry.get('deploy_return_to_loaded_s'))} / {ms(entry.get('loaded_to_started_s'))}"
        lines.append(
            f"| {entry['round']} | {ms(entry['publish_s'])} | {ms(entry['deploy_command_s'])} | "
            f"**{ms(entry['deploy_return_to_started_s'])}** | {split} |"
        )
    lines.append("")
    return lines


def conditions(results: dict) -> list[str]:
    """One row per measurement (the repeated jobs of a measurement share a row, with ranges)."""
    groups: dict[str, list[dict]] = {}
    for entry in results.get("conditions", []):
        groups.setdefault(re.sub(r" \(\d+/\d+\)$", "", entry["label"]), []).append(entry)
    if not groups:
        return []

    def values(found: list[float], digits: int = 2) -> str:
        if not found:
            return "n/a"
        low, high = min(found), max(found)
        return (
            f"{low:.{digits}f}" if round(low, digits) == round(high, digits) else f"{low:.{digits}f}–{high:.{digits}f}"
        )

    settings = results["settings"]
    lines = [f"#### Conditions of each measurement ({results['machine']['nproc']} CPUs)", ""]
    columns = [
        "measurement",
        "load average (1 min) before",
        "cores busy before",
        "waited for quiet (s)",
        "other processes during (cores)",
    ]
    lines += table(columns, "lrrrr")
    for label, entries in groups.items():
        busy = values([entry["busy_cores"] for entry in entries])
        unquiet = sum(1 for entry in entries if not entry["quiet"])
        if unquiet:
            busy += f" (not quiet: {unquiet} of {len(entries)})"
        cells = [
            label,
            values([entry["load_average"][0] for entry in entries]),
            busy,
            values([entry["waited_s"] for entry in entries], 0),
            values([entry["other_cores_during"] for entry in entries if "other_cores_during" in entry]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"- Before each measurement the harness waited (at most {settings['quiet_wait']:g} s, "
        f"{settings['quiet_total']:g} s in all) for 2 s with fewer than {settings['quiet_cores']:g} cores busy. "
        "Other processes: the machine's busy CPU time minus the server's and the runner's during the measurement; "
        "it includes the harness itself, its CLI calls and the latency driver.",
        "",
    ]
    return lines
