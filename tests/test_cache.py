"""The result cache: deterministic tools answer a repeated call from it, keyed by everything the result depends on;
a continual segmentation keeps its stream exact when a cached result stands in for a run."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from macro.artifacts import ArtifactStore
from macro.case import load_case
from macro.tools.cache import FILE, ResultCache
from macro.tools.executor import ToolExecutor
from macro.tools.registry import Registry


def run(executor, case, name, args=None, history=None, session=None):
    _, step, produced = executor.run({"name": name, "args": args or {}, "id": "c"}, case, history or [], session)
    return step, produced


def test_a_repeated_call_comes_from_the_cache_with_its_artifacts(tmp_path):
    registry = Registry.default()
    case = load_case(get_testdata_file("CT_small.dcm"))
    executor = ToolExecutor(registry, ArtifactStore(tmp_path))
    first, made = run(executor, case, "render_slice")
    again, made_again = run(executor, case, "render_slice")
    assert not first.cached and again.cached
    assert again.summary == first.summary and made_again == made
    assert (tmp_path / FILE).is_file()
    Path(made[0]["path"]).unlink()  # a result whose file is gone is recomputed
    rebuilt, remade = run(executor, case, "render_slice")
    assert not rebuilt.cached and Path(remade[0]["path"]).is_file()
    uncached = ToolExecutor(registry, ArtifactStore(tmp_path), cache=False)
    assert not run(uncached, case, "render_slice")[0].cached


def test_the_key_holds_what_the_result_depends_on():
    registry = Registry.default()
    case = load_case(get_testdata_file("CT_small.dcm"))
    tool = registry.get("render_slice")
    base = ResultCache.key(tool, case, {"axis": "axial"}, [], "")
    assert base == ResultCache.key(tool, case, {"axis": "axial"}, [], "")
    assert base != ResultCache.key(tool, case, {"axis": "coronal"}, [], "")
    assert base != ResultCache.key(tool, case, {"axis": "axial"}, [{"id": "run-1/mask.nii.gz", "kind": "mask"}], "")
    assert base != ResultCache.key(tool, case, {"axis": "axial"}, [], "after:x")
    other = load_case(get_testdata_file("MR_small.dcm"))
    assert base != ResultCache.key(tool, other, {"axis": "axial"}, [], "")


@pytest.mark.slow
def test_a_cached_segmentation_keeps_the_adaptation_stream_exact(tmp_path):
    """Thread 1 segments A then B for real; thread 2 gets A from the cache, then B must equal thread 1's B (the
    model first adapts on A, as the run it skipped would have), and says it is the second volume of its stream."""
    from macro.data import make

    folders = make("brain-mri-demo", tmp_path / "data", n=2, seed=0)
    a, b = load_case(folders[0]), load_case(folders[1])
    registry = Registry.default()
    reference = ToolExecutor(registry, ArtifactStore(tmp_path / "ref"), cache=False)
    one: dict = {}
    run(reference, a, "segment_brain_tumor", {"adapt": "tent"}, session=one)
    b_ref, _ = run(reference, b, "segment_brain_tumor", {"adapt": "tent"}, session=one)

    executor = ToolExecutor(registry, ArtifactStore(tmp_path / "cached"))
    run(executor, a, "segment_brain_tumor", {"adapt": "tent"}, session={})
    two: dict = {}
    a_hit, _ = run(executor, a, "segment_brain_tumor", {"adapt": "tent"}, session=two)
    b_two, _ = run(executor, b, "segment_brain_tumor", {"adapt": "tent"}, session=two)
    assert a_hit.cached and not b_two.cached
    assert b_two.data["volumes_ml"] == b_ref.data["volumes_ml"]
    assert "volume 2 of this thread's stream" in b_two.summary
