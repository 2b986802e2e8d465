"""Case locations are kept private: a stored case reference holds its id and modality, with the path relative to
MACRO_CASE_ROOT or MACRO_HOME when the scan lies under one, else only a hash of it (issue 19, privacy)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import OrderedDict

import pytest
from pydicom.data import get_testdata_file

from macro import case as case_module
from macro.case import load_case, load_case_ref
from macro.errors import CaseError


@pytest.fixture
def named_scan(tmp_path):
    folder = tmp_path / "Doe_Jane_MRN4471"
    folder.mkdir()
    return shutil.copy(get_testdata_file("CT_small.dcm"), folder / "Doe_Jane.dcm")


def _new_process(monkeypatch):
    """What another process knows: no decoded case and no location seen."""
    monkeypatch.setattr(case_module, "_CACHE", OrderedDict())
    monkeypatch.setattr(case_module, "_SOURCES", {})


def test_outside_every_root_only_a_hash_is_stored_and_another_process_asks_for_the_scan(named_scan, home, monkeypatch):
    monkeypatch.delenv("MACRO_CASE_ROOT", raising=False)
    case = load_case(named_scan)
    ref = case.ref()
    assert set(ref) == {"path_sha256", "modality", "id"} and "Doe" not in json.dumps(ref)
    assert load_case_ref(ref).id == case.id  # this process saw where it came from
    _new_process(monkeypatch)
    with pytest.raises(CaseError, match="known by its content hash only.*MACRO_CASE_ROOT"):
        load_case_ref(ref)


def test_under_macro_case_root_the_path_is_relative_and_reloads_anywhere(named_scan, home, monkeypatch):
    root = named_scan.parent.parent
    monkeypatch.setenv("MACRO_CASE_ROOT", str(root))
    ref = load_case(named_scan).ref()
    assert ref["root"] == "case_root" and ref["source"] == "Doe_Jane_MRN4471/Doe_Jane.dcm"
    assert str(root) not in json.dumps(ref)
    _new_process(monkeypatch)
    assert load_case_ref(ref).paths[0] == named_scan.resolve()
    monkeypatch.delenv("MACRO_CASE_ROOT")
    _new_process(monkeypatch)
    with pytest.raises(CaseError, match="relative to MACRO_CASE_ROOT, which is not set"):
        load_case_ref(ref)


def test_a_reference_stored_before_locations_were_private_still_reloads(named_scan, monkeypatch):
    _new_process(monkeypatch)
    legacy = {"source": str(named_scan), "modality": "ct", "id": load_case(named_scan).id}
    _new_process(monkeypatch)
    assert load_case_ref(legacy).id == legacy["id"]


@pytest.mark.slow
def test_the_cli_keeps_no_path_and_a_follow_up_in_a_new_process_asks_for_the_scan(named_scan, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "MACRO_HOME": str(tmp_path / "home")}

    def macro(*args):
        return subprocess.run([sys.executable, "-m", "macro.cli", *args], capture_output=True, text=True, env=env)

    first = macro("ask", str(named_scan), "describe this scan", "-p", "scripted", "--json")
    assert first.returncode == 0 and "Doe" not in first.stdout, first.stderr
    thread = json.loads(first.stdout)["thread_id"]
    again = macro("ask", "--thread", thread, "show a slice", "-p", "scripted")
    assert again.returncode == 2 and "give the scan again" in again.stderr.lower()
    assert len([line for line in again.stderr.splitlines() if line.startswith("error")]) == 1
    assert "Traceback" not in again.stderr
    given = macro("ask", str(named_scan), "--thread", thread, "show a slice", "-p", "scripted")
    assert given.returncode == 0, given.stderr
    judged = macro("feedback", thread, "good", "--case", str(named_scan))
    assert judged.returncode == 0 and "memory entry" in judged.stdout, judged.stdout + judged.stderr
    stored = b"".join(p.read_bytes() for p in (tmp_path / "home").rglob("*") if p.is_file())
    assert b"Doe" not in stored and b"MRN4471" not in stored
