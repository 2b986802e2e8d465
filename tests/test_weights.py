"""The one weights module: fp16 safetensors + manifest, verified at load, written so a kill leaves the old copy, and
the rule that a home copy under MACRO_HOME takes precedence over the shipped one."""

from __future__ import annotations

import json
import os

import pytest
import torch

from macro import imagenet, weights
from macro.errors import ModelUnavailable, WeightsError

REGENERATE = "macro train thing"


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "steps": torch.tensor([7])}


def test_tensors_round_trip_in_fp16_with_a_manifest(tmp_path):
    manifest = weights.save_tensors(tmp_path, {"net.safetensors": _state()}, {"command": REGENERATE, "seed": 3})
    entry = manifest["files"]["net.safetensors"]
    assert entry["file"] == f"net-{entry['sha256'][:12]}.safetensors", "files are named by their content"
    assert manifest["sha256"] == entry["sha256"]
    assert manifest["dtype"] == "float16"
    assert manifest["software"]["torch"] == torch.__version__
    loaded, states = weights.load_tensors(tmp_path, REGENERATE)
    assert loaded == json.loads((tmp_path / weights.MANIFEST).read_text())
    assert states["net.safetensors"]["w"].dtype == torch.float32
    assert torch.equal(states["net.safetensors"]["w"], _state()["w"].half().float())
    assert torch.equal(states["net.safetensors"]["steps"], torch.tensor([7])), "integer tensors keep their values"


def test_a_new_version_replaces_the_old_files(tmp_path):
    first = weights.save_tensors(tmp_path, {"net.safetensors": _state(0)}, {})
    second = weights.save_tensors(tmp_path, {"net.safetensors": _state(1)}, {})
    assert first["sha256"] != second["sha256"]
    assert sorted(p.name for p in tmp_path.glob("net-*")) == [second["files"]["net.safetensors"]["file"]]


@pytest.mark.parametrize("killed_at", ["net-", "manifest.json"])
def test_a_writer_killed_part_way_leaves_the_previous_version(tmp_path, monkeypatch, killed_at):
    before = weights.save_tensors(tmp_path, {"net.safetensors": _state(0)}, {})
    real = weights.atomic_write_bytes

    def write(path, payload):
        if path.name.startswith(killed_at):
            raise KeyboardInterrupt("killed")
        real(path, payload)

    monkeypatch.setattr(weights, "atomic_write_bytes", write)
    with pytest.raises(KeyboardInterrupt):
        weights.save_tensors(tmp_path, {"net.safetensors": _state(1)}, {})
    monkeypatch.setattr(weights, "atomic_write_bytes", real)
    assert weights.load_tensors(tmp_path, REGENERATE)[0]["sha256"] == before["sha256"]


def test_a_damaged_file_is_refused_naming_it_and_the_command_that_remakes_it(tmp_path):
    manifest = weights.save_tensors(tmp_path, {"net.safetensors": _state()}, {})
    path = tmp_path / manifest["files"]["net.safetensors"]["file"]
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with pytest.raises(WeightsError) as caught:
        weights.load_tensors(tmp_path, REGENERATE)
    assert str(path) in str(caught.value)
    assert "sha256" in str(caught.value)
    assert REGENERATE in str(caught.value)


def test_a_missing_file_and_a_broken_manifest_are_refused(tmp_path):
    manifest = weights.save_tensors(tmp_path, {"net.safetensors": _state()}, {})
    (tmp_path / manifest["files"]["net.safetensors"]["file"]).unlink()
    with pytest.raises(WeightsError, match="missing"):
        weights.verify(tmp_path, REGENERATE)
    (tmp_path / weights.MANIFEST).write_text("{not json")
    with pytest.raises(WeightsError, match="unreadable weights manifest"):
        weights.verify(tmp_path, REGENERATE)


def test_no_weights_at_all_says_how_to_make_them(tmp_path):
    with pytest.raises(ModelUnavailable, match=REGENERATE):
        weights.load_tensors(tmp_path / "nothing", REGENERATE)


def test_the_home_copy_takes_precedence_over_the_shipped_one(tmp_path, home):
    shipped = tmp_path / "shipped"
    weights.save_tensors(shipped, {"net.safetensors": _state(0)}, {})
    slot = weights.Slot("test/thing", shipped, REGENERATE)
    assert slot.active() == shipped
    assert slot.origin() == "shipped"
    assert slot.target(None) == home / "models" / "test" / "thing", "learning writes the home copy by default"
    weights.save_tensors(slot.target(None), {"net.safetensors": _state(1)}, {})
    assert slot.active() == slot.home_dir()
    assert slot.origin() == "home"
    assert slot.target(tmp_path / "explicit") == tmp_path / "explicit"


def test_a_slot_name_is_declared_once(tmp_path):
    weights.slot("test/declared", tmp_path / "a", REGENERATE)
    assert weights.slot("test/declared", tmp_path / "a", REGENERATE) is weights.SLOTS["test/declared"]
    with pytest.raises(ValueError, match="already declared"):
        weights.slot("test/declared", tmp_path / "b", REGENERATE)


def test_data_folders_are_recorded_relative_to_macro_home_or_by_name(home, tmp_path):
    assert weights.portable(home / "data" / "stepcot-phantom") == "$MACRO_HOME/data/stepcot-phantom"
    assert weights.portable(tmp_path / "elsewhere" / "isic2018") == "isic2018"


def test_load_once_caches_until_the_manifest_changes(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    calls = []

    def load():
        calls.append(1)
        return len(calls)

    assert weights.load_once("test/model", load, manifest) == 1
    assert weights.load_once("test/model", load, manifest) == 1
    stat = manifest.stat()
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # retrained weights
    assert weights.load_once("test/model", load, manifest) == 2
    assert weights.load_once("test/other", load) == 3
    assert weights.load_once("test/other", load) == 3


@pytest.mark.parametrize("size", [96, 128, 224])
def test_one_imagenet_trunk_serves_every_input_size(size):
    """The trunk is built once at BUILD_SIZE; its static padding is the same for every side divisible by 32."""
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    own = imagenet.Trunk(imagenet.backbone(size))
    assert torch.equal(imagenet.trunk()(images), own(images))
