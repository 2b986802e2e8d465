"""Tool contract, registry and the atomic imaging tools on real data."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel
from pydicom.data import get_testdata_file

from macro.artifacts import ArtifactStore
from macro.case import load_case
from macro.tools import registry as registry_module
from macro.tools.base import MacroTool, ToolContext, ToolExample, ToolResult, ToolSpec
from macro.tools.registry import Registry


def _ctx(case, tmp_path) -> ToolContext:
    return ToolContext(case=case, store=ArtifactStore(tmp_path / "artifacts"))


def _call(tool, ctx, **args):
    return tool.execute(ctx, tool.args_schema(**args))


def test_registry_offers_only_tools_that_accept_the_case(demo):
    registry = Registry.default()
    assert {t.name for t in registry.for_case(demo)} == {
        "describe_scan",
        "render_slice",
        "measure_volume",
        "crop_resample",
        "segment_brain_tumor",
    }
    ct_slice = load_case(get_testdata_file("CT_small.dcm"))
    assert {t.name for t in registry.for_case(ct_slice)} == {"describe_scan", "render_slice", "score_anomaly"}


def test_policy_facing_schema_has_no_ids_or_paths():
    for tool in Registry.default().all():
        props = tool.tool_call_schema.model_json_schema().get("properties", {})
        assert not {"case", "case_id", "mask", "path"} & set(props), tool.name


def test_bad_tool_definitions_fail_at_class_creation():
    class Args(BaseModel):
        x: int = 1

    with pytest.raises(TypeError, match="snake_case"):

        class BadName(MacroTool):  # noqa: F841
            name: str = "Bad-Name"
            description: str = "d"
            args_schema: type[BaseModel] = Args
            spec = ToolSpec(modalities=("*",))

    with pytest.raises(TypeError, match="unknown modality"):

        class BadModality(MacroTool):  # noqa: F841
            name: str = "bad_modality"
            description: str = "d"
            args_schema: type[BaseModel] = Args
            spec = ToolSpec(modalities=("spectroscopy",))

    with pytest.raises(TypeError, match="spec must be a ToolSpec"):

        class NoSpec(MacroTool):  # noqa: F841
            name: str = "no_spec"
            description: str = "d"
            args_schema: type[BaseModel] = Args

    with pytest.raises(TypeError, match="example requests repeat"):

        class Repeats(MacroTool):  # noqa: F841
            name: str = "repeats"
            description: str = "d"
            args_schema: type[BaseModel] = Args
            spec = ToolSpec(
                modalities=("*",),
                examples=(ToolExample(request="Go."), ToolExample(request="Go.", args={"x": 2})),
            )


class Echo(MacroTool):
    name: str = "echo_shape"
    description: str = "Echo the case shape (a third-party plug-in)."
    args_schema: type[BaseModel] = BaseModel
    spec = ToolSpec(modalities=("*",))

    def execute(self, ctx, args):
        return ToolResult(text=f"shape {ctx.case.shape}")


def test_entry_point_plugins_load_and_broken_ones_are_skipped(monkeypatch):
    eps = [
        *registry_module.entry_points(group="macro.tools"),  # the built-ins, declared in the same group
        EntryPoint("echo", f"{__name__}:Echo", "macro.tools"),
        EntryPoint("broken", "no_such_module:Tool", "macro.tools"),
    ]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: eps)
    registry = Registry.default()
    assert "echo_shape" in registry
    assert len(registry.problems) == 1
    assert "broken" in registry.problems[0]


def test_measure_volume_matches_phantom_truth(demo, demo_folder, tmp_path):
    truth = json.loads((demo_folder / "truth.json").read_text())["volumes_ml"]
    tool = Registry.default().get("measure_volume")
    for region in ("ET", "TC", "WT"):
        result = _call(tool, _ctx(demo, tmp_path), region=region)
        assert result.data["volume_ml"] == pytest.approx(truth[region], rel=1e-6)
        assert "reference segmentation" in result.text


def test_measure_volume_prefers_a_segmentation_artifact(demo, tmp_path):
    ctx = _ctx(demo, tmp_path)
    mask = np.zeros(demo.shape, np.uint8)
    mask[10:20, 10:20, 10:20] = 3
    art = ctx.store.save_nifti(mask, demo.affine, "mask", "seg")
    ctx.history.append(art.ref())
    result = _call(Registry.default().get("measure_volume"), ctx, region="ET")
    assert result.data["voxels"] == 1000
    assert result.data["volume_ml"] == pytest.approx(8.0)
    assert ctx.used["mask"] == art.id


def test_render_slice_writes_png_with_overlay(demo, tmp_path):
    ctx = _ctx(demo, tmp_path)
    result = _call(Registry.default().get("render_slice"), ctx, axis="coronal", sequence="t1ce")
    art = ctx.store.get(result.artifacts[0]["id"])
    with Image.open(art.path) as im:
        scale = art.meta["scale"]
        assert im.mode == "RGB"
        assert im.size == (demo.shape[0] * scale, demo.shape[2] * scale)
        assert min(im.size) >= 256
    assert result.data["overlay"] is True
    assert art.kind == "render"


def test_render_slice_rejects_out_of_range_index(demo, tmp_path):
    from macro.errors import CaseError

    with pytest.raises(CaseError, match="outside"):
        _call(Registry.default().get("render_slice"), _ctx(demo, tmp_path), axis="axial", index=10_000)


def test_crop_resample_changes_spacing(demo, tmp_path):
    ctx = _ctx(demo, tmp_path)
    result = _call(Registry.default().get("crop_resample"), ctx, spacing_mm=3.0)
    img = nib.load(str(ctx.store.get(result.artifacts[0]["id"]).path))
    assert result.data["spacing_mm"] == [3.0, 3.0, 3.0]
    assert img.shape[3] == 4
    assert all(s < d for s, d in zip(img.shape[:3], demo.shape))


def test_describe_scan_reports_real_statistics(demo, tmp_path):
    result = _call(Registry.default().get("describe_scan"), _ctx(demo, tmp_path))
    assert result.data["modality"] == "mri-multiseq"
    assert result.data["spacing_mm"] == [2.0, 2.0, 2.0]
    flair = result.data["intensity"]["flair"]
    assert flair["max"] == pytest.approx(float(demo.channel("flair").max()), rel=1e-4)


def test_tool_invokes_as_a_plain_langchain_tool(demo, tmp_path):
    tool = Registry.default().get("measure_volume")
    msg = tool.invoke(
        {"name": "measure_volume", "args": {"region": "WT"}, "id": "c1", "type": "tool_call"},
        config={"configurable": {"macro": _ctx(demo, tmp_path)}},
    )
    assert "mL" in msg.content
    assert msg.artifact.data["region"] == "WT"


def test_artifact_ids_cannot_escape_the_store(tmp_path):
    root = tmp_path / "store"
    store = ArtifactStore(root)
    outside = ArtifactStore(tmp_path / "elsewhere").save_png(np.zeros((4, 4, 3)), "image", "other")
    (root / "run-x").mkdir(parents=True)
    (root / "run-x" / "link").symlink_to(outside.path.parent, target_is_directory=True)
    for escape in ("../../etc/passwd", str(outside.path), f"run-x/link/{outside.path.name}"):
        with pytest.raises(KeyError):
            store.get(escape)
    own = store.save_png(np.zeros((4, 4, 3)), "image", "own")
    assert store.get(own.id).path == own.path


REAL_VOLUMES = ("anatomical.nii", "reoriented_anat_moved.nii", "mni152-2mm")


def _real_volume(name: str, tmp_path: Path) -> Path:
    """A real NIfTI from the nibabel or nilearn wheel."""
    if name == "mni152-2mm":
        from nilearn.datasets import load_mni152_template

        path = tmp_path / "mni152.nii.gz"
        nib.save(load_mni152_template(resolution=2), path)
        return path
    return Path(nib.__file__).parent / "tests" / "data" / name


@pytest.mark.parametrize("name", REAL_VOLUMES)
def test_crop_never_enlarges_a_real_volume_and_keeps_its_world_position(name, tmp_path):
    source = _real_volume(name, tmp_path)
    case = load_case(source)
    result = _call(Registry.default().get("crop_resample"), _ctx(case, tmp_path), crop=True)
    out = nib.load(result.artifacts[0]["path"])
    assert all(n <= m for n, m in zip(out.shape[:3], case.shape)), (out.shape, case.shape)
    assert np.allclose(result.data["spacing_mm"], np.sqrt((case.affine[:3, :3] ** 2).sum(axis=0)))
    # the crop's first voxel sits where that voxel sat in the input: find it by its value
    corner = np.asarray(out.dataobj)[0, 0, 0]
    world = out.affine @ np.array([0, 0, 0, 1.0])
    index = np.round(np.linalg.inv(case.affine) @ world).astype(int)[:3]
    assert all(0 <= i < n for i, n in zip(index, case.shape))
    assert case.image[0][tuple(index)] == pytest.approx(corner)


def test_a_tool_never_reads_another_cases_artifacts(tmp_path):
    """Two patients of the same shape in one thread: patient A's mask is used for A only; B is measured on its own
    reference segmentation and rendered without A's overlay; refs of unknown case are not trusted."""
    from macro.data import make
    from macro.tools.executor import ToolExecutor

    a, b = (load_case(f) for f in make("brain-mri-demo", tmp_path / "data", n=2, seed=0))
    assert a.shape == b.shape and a.id != b.id
    store = ArtifactStore(tmp_path / "artifacts")
    executor = ToolExecutor(Registry.default(), store, cache=False)
    mask_a = store.save_nifti(np.ones(a.shape, np.int16), None, "mask", "segmentation-of-a")
    thread = [{**mask_a.ref(), "case": a.id}]

    def run(case, name, args, history):
        _, step, produced = executor.run({"name": name, "args": args, "id": "c"}, case, history)
        return step, produced

    on_a, _ = run(a, "measure_volume", {"region": "WT"}, thread)
    assert on_a.ok and on_a.inputs["mask"] == mask_a.id
    on_b, _ = run(b, "measure_volume", {"region": "WT"}, thread)
    assert on_b.ok and "mask" not in on_b.inputs and "reference segmentation" in on_b.summary
    assert on_b.data["volume_ml"] != on_a.data["volume_ml"]
    shown, produced = run(b, "render_slice", {}, thread)
    assert shown.ok and "mask" not in shown.inputs and all(ref["case"] == b.id for ref in produced)
    unknown, _ = run(a, "measure_volume", {"region": "WT"}, [mask_a.ref()])
    assert "mask" not in unknown.inputs


def test_a_resampling_too_fine_for_memory_is_refused_before_any_work(tmp_path):
    from macro.tools.executor import ToolExecutor

    case = load_case(Path(nib.__file__).parent / "tests" / "data" / "anatomical.nii")  # 33x41x25 at 2 mm
    executor = ToolExecutor(Registry.default(), ArtifactStore(tmp_path), cache=False)
    _, step, made = executor.run({"name": "crop_resample", "args": {"spacing_mm": 0.21}, "id": "c"}, case, [])
    assert not step.ok and "limit 16,000,000" in step.error and "at least 0.26 mm" in step.error
    assert made == [] and not any(tmp_path.rglob("*.nii.gz"))
