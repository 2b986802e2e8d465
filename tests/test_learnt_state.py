"""One rule for learnt state: commands that learn write under MACRO_HOME, never into the installed package, and the
next ``macro ask`` uses what they wrote; a damaged weights file of any family is refused in one line naming it."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from macro import weights
from macro.cli import app


def _slots() -> dict[str, weights.Slot]:
    from macro.agent import local_llm  # noqa: F401  (declares the adapter's slot)
    from macro.tools.registry import Registry

    Registry.default()  # declares the tools' slots
    return dict(weights.SLOTS)


SLOT_NAMES = (
    "policy/smollm2-tools-lora",
    "policy/smollm2-tools-grpo-lora",
    "segmentation",
    "classification/derm",
    "classification/cxr",
    "anomaly",
    "vqa",
)


def _damage_home_copy(slot: weights.Slot) -> list[Path]:
    """Copy the shipped weights to the home copy (which then takes precedence) and flip a byte in each of its files."""
    shutil.copytree(slot.shipped, slot.home_dir())
    manifest = json.loads((slot.home_dir() / weights.MANIFEST).read_text())
    victims = [slot.home_dir() / entry["file"] for entry in manifest["files"].values()]
    for victim in victims:
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    return victims


def _one_line_naming(result, victims: list[Path]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert any(str(v) in lines[0] for v in victims), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def test_every_slot_is_covered():
    assert set(_slots()) == set(SLOT_NAMES)


@pytest.mark.parametrize("name", SLOT_NAMES)
def test_a_damaged_weights_file_is_refused_by_models_verify(home, name):
    slot = _slots()[name]
    victims = _damage_home_copy(slot)
    result = CliRunner().invoke(app, ["models", "verify"])
    assert result.exit_code == 2
    line = _one_line_naming(result, victims)
    assert slot.regenerate in line, "the message names the command that regenerates the weights"


def _family_command(name: str, demo_folder: Path) -> list[str]:
    return {
        "policy/smollm2-tools-lora": ["ask", str(demo_folder), "What is the volume?", "--policy", "embedded:sft"],
        "policy/smollm2-tools-grpo-lora": ["ask", str(demo_folder), "How large is it?", "--policy", "embedded"],
        "segmentation": ["eval", "segmentation", "--n", "1", "--out", str(demo_folder.parent / "seg-report")],
        "classification/derm": ["fl", "unlearn", "--task", "derm", "--client", "0"],
        "classification/cxr": ["fl", "unlearn", "--task", "cxr", "--client", "0"],
        "anomaly": ["anomaly", "info"],
        "vqa": ["eval", "vqa", "--bench"],
    }[name]


@pytest.mark.parametrize("name", SLOT_NAMES)
def test_a_damaged_weights_file_stops_the_command_that_loads_it(home, demo_folder, name):
    victims = _damage_home_copy(_slots()[name])
    result = CliRunner().invoke(app, _family_command(name, demo_folder))
    assert result.exit_code == 2, result.output
    _one_line_naming(result, victims)


def test_models_list_says_which_copy_is_in_use(home):
    slot = _slots()["anomaly"]
    shutil.copytree(slot.shipped, slot.home_dir())
    rows = {r["slot"]: r for r in json.loads(CliRunner().invoke(app, ["models", "list", "--json"]).stdout)}
    assert rows["anomaly"]["copy"] == "home"
    assert rows["anomaly"]["folder"] == str(slot.home_dir())
    assert rows["segmentation"]["copy"] == "shipped"
    assert all(r["problem"] is None for r in rows.values())


# ---------------------------------------------------------------- a read-only install


def _snapshot(folders) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def read_only_package():
    """Every shipped weights folder made read-only for the test. Root ignores file modes, so the files are also
    compared by sha256 afterwards: nothing may have been written, whoever runs the tests."""
    folders = [slot.shipped for slot in _slots().values()]
    before = _snapshot(folders)
    modes = {}
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            modes[path] = path.stat().st_mode
            path.chmod(modes[path] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert _snapshot(folders) == before, "a command wrote into the installed package"
    assert not [p for f in folders for p in f.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def _ask(case: Path, question: str, policy: str = "scripted") -> dict:
    result = CliRunner().invoke(app, ["ask", str(case), question, "--policy", policy, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_anomaly_learn_on_a_read_only_install_writes_the_home_bank_the_tool_then_uses(
    home, tmp_path, read_only_package
):
    from macro.data import make

    made = make("anomaly-stream", tmp_path / "stream", n=6, n_test=2, only=("ct-head",), seed=5)[0]
    task = made.rename(made.with_name("ct-head-site2"))  # a new category for the shipped bank
    result = CliRunner().invoke(app, ["anomaly", "learn", "--task", str(task)])
    assert result.exit_code == 0, result.output
    slot = _slots()["anomaly"]
    assert slot.origin() == "home"
    learnt = weights.verify(slot.home_dir(), slot.regenerate)
    shipped = weights.verify(slot.shipped, slot.regenerate)
    assert [t["name"] for t in learnt["tasks"]] == [*(t["name"] for t in shipped["tasks"]), "ct-head-site2"]
    image = sorted((task / "test" / "good").glob("*.png"))[0]
    step = _ask(image, "Is anything anomalous in this image?")["trajectory"]["steps"][0]
    assert step["tool"] == "score_anomaly"
    assert step["data"]["bank"]["sha256"] == learnt["sha256"][:12], "the tool scores against the new home bank"


@pytest.mark.slow
def test_fl_train_and_unlearn_on_a_read_only_install_write_the_home_copy_the_tool_then_uses(home, read_only_package):
    """A small federation (150 images, 2 rounds) keeps this minutes-short: unlearning the shipped model would rebuild
    its 3000-image federation first."""
    from macro.data import make

    slot = _slots()["classification/derm"]
    trained = CliRunner().invoke(app, ["fl", "train", "--task", "derm", "--rounds", "2", "--n-images", "150"])
    assert trained.exit_code == 0, trained.output
    assert slot.origin() == "home"
    assert (
        weights.verify(slot.home_dir(), slot.regenerate)["command"]
        == "macro fl train --task derm --rounds 2 --n-images 150"
    )
    result = CliRunner().invoke(app, ["fl", "unlearn", "--task", "derm", "--client", "2"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["model_before"] == json.loads(trained.stdout)["sha256"]
    assert record["weights"] == "$MACRO_HOME/models/classification/derm"
    picture = make("derm-phantom", home / "unseen-derm", n=1, seed=777)[0]
    step = _ask(picture, "What kind of lesion is this?")["trajectory"]["steps"][0]
    assert step["tool"] == "classify_lesion"
    assert step["data"]["model_version"]["sha256"] == record["model_after"][:12]
    assert step["data"]["model_version"]["unlearned_clients"] == [2]


@pytest.mark.slow
def test_train_sft_on_a_read_only_install_writes_the_home_adapter_the_policy_then_uses(
    home, demo_folder, model_home, read_only_package
):
    from macro.agent.local_llm import BASE_NAME

    (home / "models").mkdir(parents=True)
    (home / "models" / BASE_NAME).symlink_to(model_home.models / BASE_NAME)  # the converted SmolLM2, shared
    args = ["train", "sft", "--epochs", "0.05", "--eval-prompts", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    slot = _slots()["policy/smollm2-tools-lora"]
    assert slot.origin() == "home"
    trained = weights.verify(slot.home_dir(), slot.regenerate)
    assert trained["command"] == "macro train sft --epochs 0.05 --eval-prompts 4"
    answer = _ask(demo_folder, "Describe this scan.", policy="embedded")
    assert answer["trajectory"]["policy_id"] == f"embedded:smollm2-135m+lora-{trained['sha256'][:8]}"
