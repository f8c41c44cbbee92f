"""`Client` placeholder.

The official SDK's `Client` talks gRPC to the Tilebox API (submitting jobs, running a direct
runner). This runtime only executes tasks inside `tilebox runner start` / `tilebox task run`, where
grpc cannot even be imported (it refuses isolated sub-interpreters), so the name exists for imports
but constructing it explains where to go instead.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Client"]


class Client:
    """Not available in the in-process runtime; see the module documentation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "tilebox.workflows.Client is not available inside the tilebox runner: this copy of tilebox.workflows "
            "only executes tasks started by `tilebox runner start` or `tilebox task run`. Submit jobs with "
            "`tilebox job submit`, or with the official SDK (`pip install tilebox-workflows`) outside the runner."
        )
