"""The real-scan regression suite: every scan in the pydicom, nibabel and nilearn wheels through every tool that
accepts it, with the verdicts pinned per file (``macro eval real-scans --pin tests/data/real_scans.json``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from macro.eval.real_scans import sweep

PINNED = Path(__file__).parent / "data" / "real_scans.json"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # the shipped models, no home copies
        patch.setenv("MACRO_HOME", str(tmp_path_factory.mktemp("real-scans-home")))
        return sweep(log=lambda _: None)


def test_every_wheel_scan_gets_its_pinned_verdicts(report):
    pinned = json.loads(PINNED.read_text())
    assert sorted(report["verdicts"]) == sorted(pinned), "files changed: re-pin with macro eval real-scans --pin"
    changed = {
        name: {"pinned": pinned[name], "now": row, "notes": report["notes"][name]}
        for name, row in report["verdicts"].items()
        if row != pinned[name]
    }
    assert not changed, json.dumps(changed, indent=1)[:4000]


def test_the_suite_covers_what_the_issue_names(report):
    verdicts = report["verdicts"]
    assert verdicts["pydicom:test_files/CT_small.dcm"]["score_anomaly"] == "normal"  # the bank's own source
    for refused in ("liver_1frame.dcm", "rtdose.dcm", "rtstruct.dcm", "test-SR.dcm", "waveform_ecg.dcm"):
        assert verdicts[f"pydicom:test_files/{refused}"] == {"load": "refused"}, refused
    assert verdicts["nibabel:tests/data/anatomical.nii"]["crop_resample"] == "ok"
    assert not any(v == "error" for row in verdicts.values() for t, v in row.items() if t != "measure_volume")
