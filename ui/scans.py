"""Scans for the web UI: the example picker and uploads, both copied under MACRO_HOME.

A thread stores its scan's location only when the scan lies under MACRO_HOME or MACRO_CASE_ROOT (a path elsewhere
may carry a name or a record number, :meth:`macro.case.Case.ref`). The browser's upload lands in a temporary folder
that is gone after a restart, so every scan the UI opens is first copied to ``MACRO_HOME/uploads/<content hash>/``:
a thread picked from the list after a restart finds its scan again. A zipped DICOM series is unpacked there, with
the checks a zip from a stranger needs (no path out of the folder, bounded size and file count).
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path, PurePosixPath

from macro.case import Case, load_case
from macro.config import Home
from macro.data import demo_case, example_case
from macro.errors import CaseError
from macro.tools.worker import check_voxels, on_voxels

DEMO = "Brain MRI phantom, four sequences (demo)"
EXAMPLES = {
    DEMO: "brain-mri-demo",
    "Brain T1 MRI, real (nibabel anatomical.nii)": "wheel:nibabel/tests/data/anatomical.nii",
    "MNI152 T1 template, real (nilearn)": (
        "wheel:nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    ),
    "Head CT slice, real (pydicom CT_small.dcm)": "wheel:pydicom/data/test_files/CT_small.dcm",
    "MR slice, real (pydicom MR_small.dcm)": "wheel:pydicom/data/test_files/MR_small.dcm",
    "Chest X-ray phantom": "cxr-phantom",
    "Dermoscopy phantom": "derm-phantom",
}
UPLOAD_TYPES = [".nii", ".nii.gz", ".dcm", ".zip", ".png", ".jpg", ".jpeg", ".mgz"]
MAX_ZIP_BYTES = 2 * 2**30  # unpacked
MAX_ZIP_FILES = 5000


def open_example(label: str, home: Home) -> Case:
    """The example named ``label`` in :data:`EXAMPLES`, copied under MACRO_HOME so its threads survive restarts."""
    name = EXAMPLES.get(label)
    if name is None:
        raise CaseError(None, f"unknown example {label!r}", accepted=", ".join(EXAMPLES))
    if name == "brain-mri-demo":
        return checked(load_case(demo_case(home.data), check=False))
    case = example_case(name, home.data / "examples")
    return open_upload([str(p) for p in case.paths], home) if name.startswith("wheel:") else checked(case)


def open_upload(paths: list[str], home: Home, modality: str | None = None) -> Case:
    """One uploaded scan: a file, several files of one scan (a DICOM series, four BraTS NIfTI) or one zip of them."""
    if not paths:
        raise CaseError(None, "no file was uploaded")
    sources = [Path(p) for p in paths]
    digest = hashlib.sha256()
    for path in sorted(sources, key=lambda p: p.name):
        digest.update(path.name.encode())
        with path.open("rb") as fh:  # in blocks: an upload may be a large series or zip
            while block := fh.read(1 << 20):
                digest.update(block)
    folder = home.uploads / digest.hexdigest()[:16]
    if not folder.exists():
        staging = folder.with_name(folder.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for path in sources:
            if path.suffix.lower() == ".zip":
                _unzip(path, staging)
            else:
                shutil.copyfile(path, staging / path.name)
        staging.rename(folder)
    files = [p for p in folder.rglob("*") if p.is_file()]
    if len(files) == 1:
        target = files[0]
    else:  # a series or a BraTS folder: its innermost folder that holds every file
        target = Path(*_common_parts([p.parent for p in files]))
    return checked(load_case(target, modality=modality, check=False))


def checked(case: Case) -> Case:
    """The case once its voxels have been decoded and checked where tools read them (a tool worker)."""
    on_voxels(check_voxels, case)
    return case


def _unzip(archive: Path, into: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > MAX_ZIP_FILES:
            raise CaseError(archive, f"the zip holds {len(members)} files; at most {MAX_ZIP_FILES} are unpacked")
        if sum(m.file_size for m in members) > MAX_ZIP_BYTES:
            raise CaseError(archive, f"the zip unpacks to more than {MAX_ZIP_BYTES // 2**30} GB")
        for member in members:
            parts = PurePosixPath(member.filename).parts
            if PurePosixPath(member.filename).is_absolute() or ".." in parts or not parts:
                raise CaseError(archive, f"the zip names a path outside its folder: {member.filename!r}")
            if parts[0] == "__MACOSX" or parts[-1].startswith("."):
                continue
            target = into.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _common_parts(folders: list[Path]) -> tuple[str, ...]:
    parts = folders[0].parts
    for folder in folders[1:]:
        n = next((i for i, (a, b) in enumerate(zip(parts, folder.parts)) if a != b), min(len(parts), len(folder.parts)))
        parts = parts[:n]
    return parts
