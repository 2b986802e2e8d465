"""Synthetic datasets made by name, so the CLI, tests and evals get cases with known truth and no download."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from macro.errors import CaseError

Builder = Callable[..., list[Path]]
BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator that files a builder under ``name``; builders take ``out`` then keyword options."""

    def add(builder: Builder) -> Builder:
        BUILDERS[name] = builder
        return builder

    return add


def make(name: str, out: str | Path, **options) -> list[Path]:
    """Build dataset ``name`` into ``out`` and return its case folders."""
    builder = BUILDERS.get(name)
    if builder is None:
        raise CaseError(None, f"unknown dataset {name!r}", accepted=", ".join(sorted(BUILDERS)))
    return builder(Path(out), **options)


def demo_case(home_data_dir: Path) -> Path:
    """The ``brain-mri-demo`` case (seed 0), built on first use and reused while its files and truth still match.

    The case is built in a temporary folder and renamed into place, so an interrupted build never leaves a case
    that looks complete.
    """
    dataset_dir = Path(home_data_dir) / "brain-mri-demo"
    final = dataset_dir / "demo-000"
    if brain.case_is_complete(final, seed=0):
        return final
    dataset_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=dataset_dir))
    try:
        (built,) = make("brain-mri-demo", staging, n=1, seed=0)
        if final.exists():
            shutil.rmtree(final)
        try:
            os.replace(built, final)
        except OSError:
            if not brain.case_is_complete(final, seed=0):  # anything but a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


# Imported last: each builder module registers itself in BUILDERS.
from macro.data import anomaly, brain, cxr, derm, domains, stepcot  # noqa: E402,F401
