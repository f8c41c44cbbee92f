"""Test setup: this repository's runtime on `sys.path`, and the official SDK's results.

`sdk_results` runs `sdk_helper.py` once per session with the Python of a venv that has the
official `tilebox-workflows` installed. The venv is created with uv under
`target/pytest-sdk-venv-<version>` and reused by later sessions: it is built in a private
directory and renamed into place, so a half-built venv is never used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
PYTHON_ROOT = TESTS.parent
REPOSITORY = PYTHON_ROOT.parent
SDK_VERSION = "0.66.0"
SDK_PYTHON_VERSION = "3.13"

sys.path.insert(0, str(PYTHON_ROOT))


def _run(command: list[str], what: str) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 -- fixed commands
    if completed.returncode != 0:
        raise RuntimeError(f"cannot {what}: `{' '.join(command)}` failed\n{completed.stdout}\n{completed.stderr}")


def _sdk_venv() -> Path:
    """The Python of the official SDK's venv, created on first use."""
    venv = REPOSITORY / "target" / f"pytest-sdk-venv-{SDK_VERSION}"
    python = venv / "bin" / "python"
    ready = venv / ".tilebox-sdk-ready"
    if ready.exists():
        return python
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is needed to create the official SDK's venv (hint: pip install uv)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    building = venv.with_name(f"{venv.name}.building-{os.getpid()}-{time.time_ns()}")
    try:
        _run([uv, "venv", "--quiet", "--python", SDK_PYTHON_VERSION, str(building)], "create the SDK venv")
        _run(
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--python",
                str(building / "bin" / "python"),
                f"tilebox-workflows=={SDK_VERSION}",
            ],
            "install the official SDK",
        )
        (building / ".tilebox-sdk-ready").write_text(SDK_VERSION)
        try:
            building.rename(venv)
        except OSError:
            if not ready.exists():  # somebody else's venv is in the way but unfinished
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return python


@pytest.fixture(scope="session")
def sdk_results() -> dict[str, Any]:
    """What the official SDK produces for the tables in `shapes.py`."""
    python = _sdk_venv()
    environment = {
        key: value for key, value in os.environ.items() if key != "PYTHONPATH" and not key.startswith("TILEBOX_")
    }
    completed = subprocess.run(  # noqa: S603 -- our helper with the venv's Python
        [str(python), str(TESTS / "sdk_helper.py")],
        capture_output=True,
        text=True,
        check=False,
        cwd=TESTS,
        env=environment,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the official SDK helper failed:\n{completed.stderr}")
    results: dict[str, Any] = json.loads(completed.stdout)
    assert str(PYTHON_ROOT) not in results["sdk_file"], "the helper must use the official SDK, not this runtime"
    return results


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Only functions defined in the test module itself are tests (not imported helpers)."""
    items[:] = [
        item
        for item in items
        if not isinstance(item, pytest.Function) or getattr(item.function, "__module__", None) == item.module.__name__
    ]
