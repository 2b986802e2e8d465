"""The errors a user can act on. The CLI prints each on one line and exits with its ``exit_code``; tools and the
agent loop turn them into tool messages the policy can read.

They live at the bottom layer so every package can raise them without importing the layer that reports them.
"""

from __future__ import annotations

from pathlib import Path


class MacroError(Exception):
    """Base of the user-facing errors: the message names what is wrong and what to do."""

    exit_code = 2


class CaseError(MacroError, ValueError):
    """A scan or case that cannot be used. The message names the file, the problem and what is accepted."""

    def __init__(self, path: str | Path | None, problem: str, accepted: str | None = None):
        self.path = str(path) if path is not None else None
        self.problem = problem
        self.accepted = accepted
        where = f"{self.path}: " if self.path else ""
        tail = f" (accepted: {accepted})" if accepted else ""
        super().__init__(f"{where}{problem}{tail}")

    def __reduce__(self):  # rebuilt from its parts when it comes back from a tool worker
        return type(self), (self.path, self.problem, self.accepted)


class ModelUnavailable(MacroError, RuntimeError):
    """A model is not installed or not trained yet; the message says how to get it."""

    exit_code = 3


class WeightsError(CaseError):
    """A weights file that is present but cannot be trusted (unreadable, damaged or replaced). The message names the
    file and the command that regenerates it."""

    def __init__(self, path: str | Path, problem: str, regenerate: str | None = None):
        super().__init__(path, problem + (f"; regenerate it with: {regenerate}" if regenerate else ""))
