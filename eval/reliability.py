"""``macro selftest reliability``: what the agent does on bad days, counted (issue 19's acceptance instrument).

Six suites, each a tally a person can check against its bound:

* ``bad_inputs``: malformed scans (hypothesis mutations of real scans shipped in the nibabel and pydicom wheels, plus
  the named reproductions: damaged DICOM headers, picture bombs, 4D and ``.mgz`` volumes, malformed plans and tool
  arguments) through the loader and the CLI. A crash is anything but a clean refusal: an exception other than
  ``CaseError`` in process, or from the CLI an exit code other than 0/2/3, a traceback, or more than one error line.
* ``identifiers``: DICOM identifying attributes (PS3.15 Basic Profile) planted in scans that load and in scans that
  fail, and in the loadable scan's file and folder names; a leak is a planted value found in the CLI's output or
  anywhere under MACRO_HOME afterwards.
* ``escapes``: artifact ids and skill-library pointers that name files outside their store.
* ``kills``: a writer process updating every store (trajectories, memory, skill library, audit log) is killed with
  SIGKILL at a random moment; the stores must open, pass their checks and agree with each other afterwards.
* ``concurrency``: processes writing trajectories and memory entries at once; a lost record is one that is missing.
* ``limits``: a hanging tool, a tool that fills memory, over-limit volumes and an over-fine resampling; each must be
  stopped or refused within its bound; the largest volume allowed must stay under 2 GB in every process (the peak
  of all processes together is reported beside it).

The bounded form (the default, a few minutes) runs in CI with the same mutations every run, so a failure there
reproduces; ``full`` reaches the counts the issue asks for and draws new mutations each run to find new failures
(add what it finds to the named reproductions).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from pydantic import BaseModel, Field

from macro.artifacts import ArtifactStore
from macro.case import load_case
from macro.errors import CaseError
from macro.tools.base import MacroTool, ToolResult, ToolSpec
from macro.tools.worker import rss_mb


@dataclass
class Tally:
    tried: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # figures a suite reports beside its tally

    def count(self, ok: bool, what: str) -> None:
        self.tried += 1
        if not ok:
            self.failed += 1
            self.failures.append(what)


@dataclass(frozen=True)
class Size:
    mutations: int  # hypothesis examples per seed file
    kills: int
    writers: int
    writes_each: int
    explore: bool  # new random mutations each run; else the same ones every run (CI's failures reproduce)


BOUNDED = Size(mutations=40, kills=10, writers=4, writes_each=30, explore=False)
FULL = Size(mutations=120, kills=60, writers=6, writes_each=40, explore=True)
KEYS = {
    "bad_inputs": ("tried", "crashes"),
    "identifiers": ("planted", "leaks"),
    "escapes": ("tried", "escaped"),
    "kills": ("trials", "corrupted"),
    "concurrency": ("writes", "lost"),
    "limits": ("tried", "uncontained"),
}


def run(full: bool = False, progress: Callable[[str], None] = lambda name: None) -> dict:
    """All suites in a scratch MACRO_HOME; ``{suite: {count, failures, examples}}`` in the issue's JSON shape."""
    size = FULL if full else BOUNDED
    suites = {
        "bad_inputs": lambda w: bad_inputs(w, size),
        "identifiers": identifiers,
        "escapes": escapes,
        "kills": lambda w: kills(w, size),
        "concurrency": lambda w: concurrency(w, size),
        "limits": limits,
    }
    report = {}
    with tempfile.TemporaryDirectory(prefix="macro-selftest-") as tmp:
        for name, suite in suites.items():
            progress(name)
            work = Path(tmp) / name
            work.mkdir()
            with _home(work / "home"):
                tally = suite(work)
            tried, failed = KEYS[name]
            report[name] = {tried: tally.tried, failed: tally.failed, "examples": tally.failures[:5], **tally.extra}
    report["form"] = "full" if full else "bounded"
    return report


@contextmanager
def _home(path: Path) -> Iterator[None]:
    before = os.environ.get("MACRO_HOME")
    os.environ["MACRO_HOME"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MACRO_HOME")
        else:
            os.environ["MACRO_HOME"] = before


def _cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "macro.cli", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {}), "COLUMNS": "200"}
    )


def _clean_cli(done: subprocess.CompletedProcess) -> bool:
    """Exit 0, or a refusal (2, 3) with one error line and no traceback."""
    if "Traceback" in done.stderr or "Traceback" in done.stdout:
        return False
    if done.returncode == 0:
        return True
    return done.returncode in (2, 3) and len(done.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ bad inputs


def _seeds() -> dict[str, bytes]:
    import nibabel
    from pydicom.data import get_testdata_file

    nib_data = Path(nibabel.__file__).parent / "tests" / "data"
    return {
        "scan.nii": (nib_data / "anatomical.nii").read_bytes(),
        "scan.nii.gz": (nib_data / "example4d.nii.gz").read_bytes(),
        "scan.dcm": Path(get_testdata_file("CT_small.dcm")).read_bytes(),
        "scan.png": _png_bytes(),
    }


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _loads_cleanly(path: Path) -> bool:
    """Loading either works or raises one CaseError; anything else is a crash."""
    try:
        case = load_case(path)
        case.image  # noqa: B018
    except CaseError:
        return True
    except Exception:
        return False
    return True


def bad_inputs(work: Path, size: Size) -> Tally:
    import logging

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    logging.getLogger("nibabel").setLevel(logging.ERROR)  # its notes on each damaged header are not results
    tally = Tally()

    def fuzz(name: str, seed: bytes) -> Callable[[], None]:
        edits = st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), min_size=1, max_size=8)

        @settings(
            max_examples=size.mutations,
            deadline=None,
            database=None,
            derandomize=not size.explore,
            suppress_health_check=list(HealthCheck),
        )
        @given(cut=st.one_of(st.none(), st.integers(1, len(seed) - 1)), edits=edits)
        def mutate(cut, edits):
            data = bytearray(seed[:cut] if cut else seed)
            for at, value in edits:
                if at < len(data):
                    data[at] = value
            path = work / f"m{tally.tried}-{name}"
            path.write_bytes(bytes(data))
            tally.count(_loads_cleanly(path), f"{name} cut {cut} edits {edits[:3]}")
            path.unlink()

        return mutate

    for name, seed in _seeds().items():
        fuzz(name, seed)()
    for path in _named_bad_inputs(work):
        tally.count(_loads_cleanly(path), path.name)
    for path, why in [*_named_bad_inputs(work, cli=True), *_bad_plans(work)]:
        args = ("ask", str(path), "describe", "-p", "scripted") if why is None else why
        tally.count(_clean_cli(_cli(*args)), f"CLI {' '.join(args)[:80]}")
    return tally


def _named_bad_inputs(work: Path, cli: bool = False) -> list:
    """The reproductions of the issue, as files; with ``cli`` the few that are also run through the command line."""
    import nibabel as nib

    folder = work / ("named-cli" if cli else "named")
    folder.mkdir()
    made = []
    dicom = _dicom(folder, "frames.dcm", {"NumberOfFrames": "1A"})
    made.append(dicom)
    made.append(_dicom(folder, "spacing.dcm", {"PixelSpacing": "abc"}))
    made.append(_dicom(folder, "rows.dcm", Rows=0))
    damaged = bytearray(_seeds()["scan.dcm"])
    at = damaged.index(b"\x08\x00\x60\x00CS") + 4  # the Modality element's VR, made one pydicom does not know
    damaged[at : at + 2] = b"TS"
    made.append(folder / "modality-vr.dcm")
    made[-1].write_bytes(bytes(damaged))
    png = folder / "bomb.png"
    png.write_bytes(_png_header(30000, 30000))
    made.append(png)
    ztxt = folder / "ztxt.png"
    ztxt.write_bytes(_ztxt_bomb())
    made.append(ztxt)
    four = folder / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 3), np.float32), np.eye(4)), four)
    made.append(four)
    mgz = folder / "volume.mgz"
    nib.save(nib.MGHImage(np.ones((4, 4, 4), np.float32), np.eye(4)), mgz)
    made.append(mgz)
    empty = folder / "empty.nii"
    empty.write_bytes(b"")
    made.append(empty)
    if cli:
        return [(p, None) for p in made] + [(p, ("tools", "list", "--case", str(p))) for p in (mgz, four, dicom)]
    return made


def _dicom(folder: Path, name: str, raw: dict | None = None, **attributes) -> Path:
    """CT_small.dcm with ``attributes`` set by keyword and ``raw`` ones stored as given (malformed values)."""
    import warnings

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.datadict import dictionary_VR, tag_for_keyword

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    for keyword, value in (raw or {}).items():
        tag = tag_for_keyword(keyword)
        if tag not in ds:
            ds.add_new(tag, dictionary_VR(tag), None)
        ds[tag]._value = value
    path = folder / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(path, enforce_file_format=True)
    return path


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _ztxt_bomb() -> bytes:
    import struct
    import zlib

    png = _png_bytes()
    body = b"comment\0\0" + zlib.compress(b"A" * 200_000_000, 9)
    text = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(">I", zlib.crc32(b"zTXt" + body))
    return png[:33] + text + png[33:]


def _bad_plans(work: Path) -> list:
    """Malformed ``scripted:PLAN.json`` files and a tool argument too large to store."""
    import nibabel

    scan = str(Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii")
    bodies = {
        "not-json.json": "{",
        "list.json": "[1, 2]",
        "steps-string.json": '{"steps": "describe_scan"}',
        "huge-arg.json": json.dumps({"steps": [{"name": "render_slice", "args": {"index": 2**70}}]}),
    }
    made = []
    for name, body in bodies.items():
        path = work / name
        path.write_text(body)
        made.append((path, ("ask", scan, "describe", "-p", f"scripted:{path}")))
    return made


# ------------------------------------------------------------------ identifiers

PLANTED = {
    "PatientName": "Zyxwv^Quentin",
    "PatientID": "MRN-83726154",
    "PatientBirthDate": "19410723",
    "OtherPatientIDs": "ALT-55190372",
    "AccessionNumber": "ACC90817263",
    "InstitutionName": "Saint Ygraine Hospital",
    "ReferringPhysicianName": "Vortigern^Alys",
    "StudyID": "STU-4471902",
}


def identifiers(work: Path) -> Tally:
    scans = work / "scans"
    scans.mkdir()
    # the file and its folder are named as records often are, so a stored path would leak too
    folder = scans / f"{PLANTED['PatientName'].replace('^', '_')}_{PLANTED['PatientID']}"
    folder.mkdir()
    good = _dicom(folder, f"{PLANTED['AccessionNumber']}.dcm", **PLANTED)
    broken = [
        _dicom(scans, "planted-spacing.dcm", {"PixelSpacing": "abc"}, **PLANTED),
        _dicom(scans, "planted-frames.dcm", {"NumberOfFrames": "1A"}, **PLANTED),
    ]
    truncated = scans / "planted-truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-3000])
    outputs, tally = [], Tally()
    for path in (good, *broken, truncated):
        for args in (
            ("ask", str(path), "describe this scan", "-p", "scripted", "--json"),
            ("tools", "list", "--case", str(path)),
        ):
            done = _cli(*args)
            outputs.append(done.stdout + done.stderr)
            if path == good and done.returncode != 0:  # else the normal path was never tried
                tally.count(False, f"the planted scan was not answered: {done.stderr.strip()[:200]}")
    home = Path(os.environ["MACRO_HOME"])
    stored = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    for keyword, value in PLANTED.items():
        parts = [value, *value.split("^")] if "^" in value else [value]
        leaked = any(part in text for part in parts for text in outputs) or any(
            part.encode() in stored for part in parts
        )
        tally.count(not leaked, f"{keyword} ({value})")
    return tally


# ------------------------------------------------------------------ escapes


def escapes(work: Path) -> Tally:
    from macro.skills.library import POINTER, Library

    tally = Tally()
    outside = work / "secret.json"
    outside.write_text('{"id": "x", "kind": "mask", "meta": {}}')
    (work / "secret").write_text("outside")
    store = ArtifactStore(work / "artifacts")
    store.root.mkdir()
    (store.root / "run-link").symlink_to(work)
    for art_id in (str(work / "secret"), "../secret", "run-x/../../secret", "run-link/secret", "/etc/passwd"):
        try:
            store.get(art_id)
            tally.count(False, f"artifact id {art_id!r} resolved")
        except KeyError:
            tally.count(True, art_id)
    library = work / "skills"
    library.mkdir()
    for pointer in (str(outside), "../secret.json", "round-0001.json/../../secret.json"):
        (library / POINTER).write_text(pointer)
        shelf = Library(library)
        current = shelf.current()
        tally.count(current.path is None or current.path.parent == library, f"library pointer {pointer!r} honoured")
    return tally


# ------------------------------------------------------------------ kills

WRITER = """
import sys, numpy as np
from pathlib import Path
import nibabel
from macro.agent.experience import record_verdict
from macro.case import load_case
from macro.config import Home
from macro.federated.run import append_audit
from macro.skills.library import Library
from macro.trajectory import Trajectory, TrajectoryStore
home = Home.current()
store, library = TrajectoryStore(home.trajectories_db), Library(home.skills)
case = load_case(Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii")
step = {"tool": "describe_scan", "args": {}, "ok": True}
print("ready", flush=True)
for i in range(10_000):
    traj = Trajectory("describe", case.id, [step], "a", "p", f"thread-{i}", case_ref=case.ref())
    store.add(traj)
    record_verdict(traj.id, "verified", "selftest")
    if i % 3 == 2:
        record_verdict(traj.id, "failed", "selftest")  # a person changes their mind: the hint must go
    append_audit({"request": i}, home.root / "audit.jsonl")
    if i % 4 == 0:
        library.commit([], note=f"round {i}")
"""


def _stores_sound(home: Path) -> str | None:
    """None when every store opens, passes its own check and agrees with the others (every memory entry belongs to
    a verified trajectory); else what is wrong."""
    from macro.federated.run import check_audit
    from macro.memory.store import ImageMemory
    from macro.skills.library import Library
    from macro.trajectory import TrajectoryStore

    try:
        with sqlite3.connect(home / "trajectories.sqlite") as conn:
            if conn.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                return "trajectory database fails its integrity check"
        store = TrajectoryStore(home / "trajectories.sqlite")
        memory = ImageMemory(home / "memory")
        entries = memory.query(np.ones(memory.stats()["dim"]), k=len(memory), floor=-1.0) if len(memory) else []
        library = Library(home / "skills")
        library.current()
        if library.problems:
            return f"skill library: {library.problems[0]}"
        audit = check_audit(home / "audit.jsonl")
        if not audit["ok"]:
            return f"audit log: {audit['problems'][0]}"
        for hit in entries:
            if store.get(hit.meta["trajectory_id"]).verification != "verified":
                return f"memory entry {hit.id} belongs to a trajectory that is not verified"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def kills(work: Path, size: Size) -> Tally:
    tally = Tally()
    rng = random.Random(0)
    for trial in range(size.kills):
        home = work / f"trial-{trial}"
        env = {**os.environ, "MACRO_HOME": str(home)}
        proc = subprocess.Popen([sys.executable, "-c", WRITER], stdout=subprocess.PIPE, text=True, env=env)
        proc.stdout.readline()  # "ready": the imports are done, writing starts
        time.sleep(rng.uniform(0.05, 2.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        problem = _stores_sound(home)
        tally.count(problem is None, f"trial {trial}: {problem}")
    return tally


# ------------------------------------------------------------------ concurrency

APPENDER = """
import sys, numpy as np
from pathlib import Path
from macro.trajectory import Trajectory, TrajectoryStore
from macro.memory.store import ImageMemory
home, writer, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
store, memory = TrajectoryStore(home / "t.sqlite"), ImageMemory(home / "memory")
for i in range(n):
    store.add(Trajectory("q", "case-x", [], "a", "p", f"{writer}-{i}"))
    memory.add(np.ones(8, np.float32), {"writer": writer, "i": i})
"""


def concurrency(work: Path, size: Size) -> Tally:
    from macro.memory.store import ImageMemory
    from macro.trajectory import TrajectoryStore

    procs = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(work), f"w{w}", str(size.writes_each)])
        for w in range(size.writers)
    ]
    for proc in procs:
        proc.wait()
    threads = {t.thread_id for t in TrajectoryStore(work / "t.sqlite").list(limit=10**6)}
    memory = ImageMemory(work / "memory")
    stored = {(h.meta["writer"], h.meta["i"]) for h in memory.query(np.ones(8), k=len(memory) or 1, floor=-1.0)}
    tally = Tally()
    for w in range(size.writers):
        for i in range(size.writes_each):
            tally.count(f"w{w}-{i}" in threads, f"trajectory w{w}-{i} lost")
            tally.count((f"w{w}", i) in stored, f"memory entry w{w}-{i} lost")
    return tally


# ------------------------------------------------------------------ limits


class Runaway(BaseModel):
    seconds: float = Field(default=0.0, ge=0)
    megabytes: int = Field(default=0, ge=0)


class RunawayTool(MacroTool):
    """A probe: a plug-in that hangs or fills memory, run through the real executor and worker; it counts its calls
    in the thread's session, so a test can see that a stopped call changed nothing."""

    name: str = "runaway_probe"
    description: str = "Sleep, then fill memory (reliability probe)."
    args_schema: type[BaseModel] = Runaway
    spec = ToolSpec(modalities=("*",), timeout_s=2, memory_mb=300)

    def execute(self, ctx, args):
        ctx.session["calls"] = ctx.session.get("calls", 0) + 1
        time.sleep(args.seconds)
        block = np.ones(args.megabytes * 2**18, np.float32)  # touched, so resident
        return ToolResult(text=f"call {ctx.session['calls']}, {block.nbytes >> 20} MB")


def limits(work: Path) -> Tally:
    import nibabel as nib

    from macro.tools.executor import ToolExecutor
    from macro.tools.registry import Registry

    tally = Tally()
    scan = Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii"
    case = load_case(scan)
    registry = Registry([RunawayTool(), *Registry.default().all()])
    executor = ToolExecutor(registry, ArtifactStore(work), cache=False, isolate=True)
    for args, bound_s in (
        ({"seconds": 3600}, 2 + 10),
        ({"megabytes": 4000}, 60),
        ({"seconds": 5, "megabytes": 10}, 12),
    ):
        start = time.monotonic()
        _, step, _ = executor.run({"name": "runaway_probe", "args": args, "id": "c"}, case, [])
        took = time.monotonic() - start
        tally.count(
            not step.ok and "was stopped" in (step.error or "") and took < bound_s, f"probe {args}: {took:.1f} s"
        )
    _, step, _ = executor.run({"name": "crop_resample", "args": {"spacing_mm": 0.21}, "id": "c"}, case, [])
    tally.count(not step.ok and "limit" in (step.error or ""), "crop_resample 0.21 mm")
    big = np.zeros((2048, 2048, 95), np.uint8)
    big[5, 5, 5] = 1
    nib.save(nib.Nifti1Image(big, np.eye(4)), work / "big.nii.gz")
    del big
    done = _cli("ask", str(work / "big.nii.gz"), "describe", "-p", "scripted")
    tally.count(done.returncode == 2 and "over the limit" in done.stderr, "2048x2048x95 volume")
    cube = np.zeros((512, 512, 500), np.uint8)  # the largest volume allowed, 0.6 MB on disk
    cube[100:200, 100:200, 100:200] = 50
    nib.save(nib.Nifti1Image(cube, np.eye(4)), work / "cube.nii.gz")
    del cube
    code, process, total = _peak_mb(["ask", str(work / "cube.nii.gz"), "describe this scan", "-p", "scripted"])
    tally.count(code == 0 and process < PEAK_MB, f"512x512x500 volume: {process:.0f} MB in one process")
    tally.extra = {"largest_volume_peak_mb": {"one_process": round(process), "all_processes": round(total)}}
    return tally


PEAK_MB = 2048


def _peak_mb(args: list[str]) -> tuple[int, float, float]:
    """Exit code, then the peak resident memory of the largest process of a CLI run and of all its processes
    together (sampled from /proc every 20 ms: the agent and its tool worker)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "macro.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    process = total = 0.0
    while proc.poll() is None:
        sizes = [rss_mb(pid) or 0.0 for pid in _tree(proc.pid)]
        process, total = max(process, *sizes), max(total, sum(sizes))
        time.sleep(0.02)
    return proc.returncode, process, total


def _tree(pid: int) -> list[int]:
    found = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [p for child in fh.read().split() for p in _tree(int(child))]
    except OSError:
        pass
    return found
