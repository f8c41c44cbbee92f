"""The SDK's OTLP exports land in the server and read back through the SDK (DESIGN §8, reference §6).

The runner runs in a child process (`telemetry.py run <cluster>`), so its log and span exporters
flush when it exits; its stderr shows whether an export failed. The parent then reads the job's
logs and spans back with `jobs().query_logs()` / `query_spans()` (QueryJobLogs / QueryJobSpans).
"""

import json
import subprocess
import sys
import traceback
from typing import Any

from harness import EVENTS, SUMMARY_PREFIX, connect, connect_runner, emit, job_summary, record
from tilebox.workflows import ExecutionContext, Task


class Child(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "child")
        context.logger.info("child says hi")


class Root(Task):
    def execute(self, context: ExecutionContext) -> None:
        record(context, "root")
        context.logger.info("root starting", answer=42)
        context.submit_subtask(Child())


def run(cluster: str) -> None:
    connect_runner().runner(cluster, tasks=[Root, Child]).run_all()
    emit({"events": EVENTS})


def read_back(call: Any) -> tuple[list[Any], str | None]:
    try:
        return list(call()), None
    except Exception:  # noqa: BLE001 -- the test reports what the SDK raised
        return [], traceback.format_exc(limit=3)


def main() -> None:
    client = connect()
    cluster = client.clusters().create("Interop telemetry")
    job = client.jobs().submit("interop-telemetry", Root(), cluster=cluster)

    runner = subprocess.run(
        [sys.executable, __file__, "run", cluster.slug], capture_output=True, text=True, timeout=100, check=False
    )
    summaries = [line for line in runner.stdout.splitlines() if line.startswith(SUMMARY_PREFIX)]
    runner_events = json.loads(summaries[-1].removeprefix(SUMMARY_PREFIX))["events"] if summaries else None

    logs, logs_error = read_back(lambda: client.jobs().query_logs(job))
    spans, spans_error = read_back(lambda: client.jobs().query_spans(job))
    emit(
        {
            "job": job_summary(client.jobs().find(job)),
            "runner_exit_code": runner.returncode,
            "runner_events": runner_events,
            "runner_stderr_tail": runner.stderr[-4000:] if runner.returncode else "",
            "runner_export_problems": [line for line in runner.stderr.splitlines() if "export" in line.lower()],
            "logs": [
                {"body": log.body, "severity": log.severity_text, "task_id": log.attributes.get("task_id")}
                for log in logs
            ],
            "logs_error": logs_error,
            "spans": [
                {"name": span.name, "status": span.status_code, "task_id": span.attributes.get("task_id")}
                for span in spans
            ],
            "spans_error": spans_error,
        }
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["run"]:
        run(sys.argv[2])
    else:
        main()
