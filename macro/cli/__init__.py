"""The ``macro`` command line: one module per command group, every command behind one error guard (one line on
stderr; exit 2 for bad input or damaged weights, 3 for a missing model)."""

from __future__ import annotations

from macro.cli import (  # noqa: F401
    anomaly,
    bench,
    chat,
    data,
    doctor,
    evaluate,
    fl,
    mcp,
    memory,
    runs,
    selftest,
    skills,
    tools,
    train,
    ui,
)
from macro.cli.common import app, guard_all

guard_all(app)


def main() -> None:
    app()
