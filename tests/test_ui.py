"""The web UI's behaviour without a browser: scans copied under MACRO_HOME, the viewer and its overlays, threads that
survive a restart, verdicts; the browser test (test_ui_browser.py) proves the wiring."""

from __future__ import annotations

import zipfile
from pathlib import Path

import nibabel
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from macro.artifacts import ArtifactStore
from macro.config import Home
from macro.errors import CaseError
from macro.ui.scans import DEMO, open_upload
from macro.ui.viewer import REFERENCE, Overlay, tool_overlays, view
from macro.ui.workbench import Workbench

ANATOMICAL = Path(nibabel.__file__).parent / "tests" / "data" / "anatomical.nii"


def test_an_upload_is_copied_under_the_home_and_keeps_its_thread_after_a_restart(home, tmp_path):
    upload = tmp_path / "browser-tmp" / "anatomical.nii"
    upload.parent.mkdir()
    upload.write_bytes(ANATOMICAL.read_bytes())
    bench = Workbench()
    session = bench.open_upload([str(upload)])
    assert session.case.paths[0].is_relative_to(home / "uploads")
    assert session.case.ref().get("root"), "a scan under MACRO_HOME keeps its location in the thread"
    events = list(bench.ask(session, "Describe the scan", "scripted"))
    assert events[-1][0] == "answer" and any(kind == "step" for kind, _ in events)
    assert events[-1][1].startswith("MR scan, 3D") and "Findings (from tools)" not in events[-1][1], events[-1][1]
    upload.unlink()  # the browser's temporary copy is gone after a restart

    again = Workbench()
    (label, thread_id), *_ = again.threads()
    assert thread_id == session.thread_id and "Describe the scan" in label and "1 turn" in label
    reopened, messages = again.reopen(thread_id)
    assert reopened.case.id == session.case.id
    assert [m["role"] for m in messages][0] == "user" and messages[-1]["content"] == events[-1][1]
    assert any(m.get("metadata", {}).get("title", "").startswith("Tool: describe_scan") for m in messages)


def test_a_second_turn_continues_the_thread_and_a_verdict_is_recorded(home):
    from macro.trajectory import TrajectoryStore

    bench = Workbench()
    session = bench.open_upload([get_testdata_file("CT_small.dcm")])
    for question in ("Describe the scan", "Show me the image"):
        list(bench.ask(session, question, "scripted"))
    turns = TrajectoryStore(Home.current().trajectories_db).list(thread_id=session.thread_id)
    assert [t.question for t in turns] == ["Describe the scan", "Show me the image"]
    assert any(step["tool"] == "render_slice" and step["ok"] for step in turns[1].steps)
    assert session.pictures(bench.home), "the render is offered as a picture"
    assert bench.judge(session, good=False).startswith("Recorded: failed")
    assert TrajectoryStore(Home.current().trajectories_db).get(turns[-1].id).verification == "failed"


def test_asking_without_a_scan_or_judging_an_empty_thread_is_a_clear_error(home):
    from macro.ui.workbench import Session

    bench = Workbench()
    with pytest.raises(CaseError, match="open a scan first"):
        list(bench.ask(Session(), "Describe the scan", "scripted"))
    with pytest.raises(CaseError, match="ask a question first"):
        bench.judge(bench.open_upload([get_testdata_file("CT_small.dcm")]), good=True)


def test_a_zipped_dicom_series_opens_and_a_zip_slip_is_refused(home, tmp_path):
    series = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"
    files = sorted(p for p in series.iterdir() if p.is_file())
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in files:
            zf.write(path, f"series/{path.name}")
        zf.writestr("__MACOSX/._junk", b"junk")
    case = open_upload([str(archive)], Home.current())
    assert case.modality == "ct" and case.shape == (16, 16, 5) and case.paths[0].is_relative_to(home / "uploads")

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../outside.dcm", b"x")
    with pytest.raises(CaseError, match="outside its folder"):
        open_upload([str(evil)], Home.current())
    assert not (tmp_path / "outside.dcm").exists()


def test_the_viewer_blends_masks_and_heatmaps_and_follows_the_mask(demo):
    mask = demo.labels.astype(np.int16) * 0
    mask[40:50, 50:60, 70:75] = 3  # an "enhancing" block far from the phantom's own tumour
    plain, _, _ = view(demo, "axial", 72, "flair")
    with_mask, index, where = view(demo, "axial", None, "flair", [Overlay("m", "mask", mask)], 0.6)
    assert index in range(70, 75) and where == f"axial {index}/{demo.shape[2] - 1}"
    plain_here, _, _ = view(demo, "axial", index, "flair")
    red = (with_mask[..., 0].astype(int) - with_mask[..., 1]) > 100
    assert red.sum() > (plain_here[..., 0].astype(int) - plain_here[..., 1] > 100).sum()
    heat = np.zeros(demo.shape, np.float32)
    heat[:, :, 72] = np.linspace(0, 1, demo.shape[1])[None, :]
    hot, _, _ = view(demo, "axial", 72, "flair", [Overlay("h", "heatmap", heat)], 0.8)
    assert not np.array_equal(hot, plain) and hot.shape == plain.shape
    assert view(demo, "coronal", 10_000, None)[1] == demo.shape[1] - 1  # an index past the end shows the last slice


def test_overlays_are_the_nifti_outputs_on_the_scans_grid(demo, tmp_path):
    store = ArtifactStore(tmp_path)
    on_grid = store.save_nifti(np.zeros(demo.shape, np.int16), demo.affine, "mask", "tumour")
    resampled = store.save_nifti(np.zeros((10, 10, 10), np.int16), None, "mask", "resampled-mask")
    picture = store.save_png(np.zeros((8, 8, 3), np.uint8), "render", "axial")
    layers, notes = tool_overlays(demo, store, [on_grid.id, resampled.id, picture.id, "run-gone/x.nii.gz"])
    assert [layer.name.split(" ")[0] for layer in layers] == [Path(on_grid.id).name.split(".")[0]]
    assert any("not the scan's" in note for note in notes) and any("no longer" in note for note in notes)


def test_the_demo_example_offers_its_reference_mask(home):
    session = Workbench().open_example(DEMO)
    layers, _ = session.layers(Home.current())
    assert list(layers) == [REFERENCE] and set(np.unique(layers[REFERENCE].array)) <= {0, 1, 2, 3}


def test_the_app_builds_with_every_widget_wired(home):
    pytest.importorskip("gradio")
    from macro.ui.app import build

    app = build(Workbench(), policy="scripted")
    ids = {getattr(block, "elem_id", None) for block in app.blocks.values()}
    assert {"example", "upload", "viewer", "overlays", "chat", "question", "threads", "policy", "good", "bad"} <= ids
    assert len(app.fns) >= 10
