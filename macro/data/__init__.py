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


def example_case(name: str, root: str | Path):
    """A named example case (what a tool spec's ``cases`` lists), built under ``root`` on first use.

    ``brain-mri-demo`` is a four-sequence brain MRI phantom with a reference mask; ``lowfield-sequences`` is a
    low-field phantom given as its four bare sequences (no mask, so a volume needs a segmentation first); any other
    builder name gives its first case (seed 300); ``wheel:package/path`` is a real scan shipped inside an installed
    wheel (nibabel, pydicom, nilearn).
    """
    import importlib.util

    from macro.case import brats_files, load_case

    root = Path(root)
    if name.startswith("wheel:"):
        package, _, rest = name[len("wheel:") :].partition("/")
        spec = importlib.util.find_spec(package)
        path = Path(spec.submodule_search_locations[0]) / rest if spec and spec.submodule_search_locations else None
        if path is None or not path.exists():
            raise CaseError(path, f"example case {name!r}: the {package} wheel does not ship {rest}")
        return load_case(path)
    if name == "brain-mri-demo":
        return load_case(make(name, root / "example-brain", n=1, seed=100)[0])
    if name == "lowfield-sequences":
        folder = make("brats-phantom", root / "example-lowfield", n=1, seed=200, domain="lowfield")[0]
        return load_case(brats_files(folder)[0])
    return load_case(make(name, root / f"example-{name}", n=1, seed=300)[0])


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
