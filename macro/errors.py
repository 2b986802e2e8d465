"""The one error type for bad user input; the CLI maps it to exit code 2 and one line on stderr."""

from __future__ import annotations

from pathlib import Path


class CaseError(ValueError):
    """A scan or case that cannot be used. The message names the file, the problem and what is accepted."""

    def __init__(self, path: str | Path | None, problem: str, accepted: str | None = None):
        self.path = str(path) if path is not None else None
        self.problem = problem
        self.accepted = accepted
        where = f"{self.path}: " if self.path else ""
        tail = f" (accepted: {accepted})" if accepted else ""
        super().__init__(f"{where}{problem}{tail}")
