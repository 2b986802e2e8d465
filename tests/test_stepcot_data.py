"""Step-CoT data: the loaders on a fixture in the real release's layout, their errors, and the phantom's chain."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from macro.data import make, stepcot
from macro.errors import CaseError


def _chain(answers: list[str]) -> list[dict]:
    return [
        {
            "step": f"Step {k + 1}",
            "question": stepcot.QUESTIONS[k],
            "options": list(stepcot.OPTIONS[k]),
            "answer": a,
            "reasoning": f"because {k}",
        }
        for k, a in enumerate(answers)
    ]


NORMAL = ["No abnormality", "None", "None", "None", "None", "None", "Normal"]
CANCER = ["Increased opacity", "Focal", "Nodule/Mass", "Left upper zone", "Lobulated", "None", "Lung cancer"]


@pytest.fixture()
def release(tmp_path):
    """train/val/test.xlsx + data.json + images/ and images_2/, as the Step-CoT release lays them out."""
    for folder, name in (("images", "p1.png"), ("images", "p2.png"), ("images_2", "p3.png")):
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.fromarray(np.full((32, 32), 90, np.uint8)).save(tmp_path / folder / name)
    records = [
        {
            "patient_id": "p1",
            "image_path": "images/p1.png",
            "origin": "site A",
            "report": "clear",
            "vqa_chain": _chain(NORMAL),
        },
        {
            "patient_id": "p2",
            "image_path": "images/p2.png",
            "origin": "site A",
            "report": "mass",
            "vqa_chain": _chain(CANCER),
        },
        {
            "patient_id": "p3",
            "image_path": "p3.png",
            "origin": "site B",
            "report": "odd",
            "vqa_chain": _chain(CANCER[:5] + ["Not an option", "Lung cancer"]),
        },
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    pd.DataFrame([{"patient_id": "p1", "image_path": "images/p1.png"}]).to_excel(tmp_path / "train.xlsx", index=False)
    pd.DataFrame([{**records[1], "vqa_chain": json.dumps(records[1]["vqa_chain"])}]).to_excel(
        tmp_path / "val.xlsx", index=False
    )
    pd.DataFrame([{"patient_id": "p3"}]).to_excel(tmp_path / "test.xlsx", index=False)
    return tmp_path


def test_loaders_read_the_release_layout(release):
    splits = stepcot.load_stepcot(release)
    assert [r.patient_id for r in splits["train"] + splits["val"] + splits["test"]] == ["p1", "p2", "p3"]
    assert splits["val"][0].vqa_chain[3].answer == "Left upper zone"
    assert splits["val"][0].report == "mass"
    assert splits["test"][0].image_file() == release / "images_2" / "p3.png"  # a bare name is found in images_2/
    everything = stepcot.load_data_json(release / "data.json")
    maps = stepcot.label_maps(everything)
    assert [len(m) for m in maps] == [4, 4, 6, 7, 5, 7, 9]
    labels, valid = stepcot.encode_labels(everything, maps)
    assert labels[1].tolist() == [1, 1, 2, 3, 3, 0, 4]
    assert labels[2, 5] == -1
    assert not valid[2, 5]
    assert valid[:, :5].all()


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda recs: {"not": "a list"}, "expected a list of records"),
        (
            lambda recs: [recs[0], {k: v for k, v in recs[1].items() if k != "vqa_chain"}],
            "record 1: missing field 'vqa_chain'",
        ),
        (
            lambda recs: [{**recs[0], "vqa_chain": recs[0]["vqa_chain"][:6]}],
            "record 0: vqa_chain must be a list of 7 steps, got 6",
        ),
        (
            lambda recs: [
                {
                    **recs[0],
                    "vqa_chain": [
                        *recs[0]["vqa_chain"][:2],
                        {"question": "q", "options": "A, B", "answer": "A"},
                        *recs[0]["vqa_chain"][3:],
                    ],
                }
            ],
            "record 0, step 3: options must be a non-empty list",
        ),
    ],
)
def test_malformed_data_json_names_file_and_record(release, mutate, expected):
    path = release / "data.json"
    path.write_text(json.dumps(mutate(json.loads(path.read_text()))))
    with pytest.raises(CaseError, match=expected) as info:
        stepcot.load_data_json(path)
    assert info.value.path == str(path)


def test_malformed_xlsx_rows_name_file_and_row(release):
    pd.DataFrame([{"patient_id": "p1"}, {"patient_id": "p9"}]).to_excel(release / "train.xlsx", index=False)
    with pytest.raises(CaseError, match=r"train\.xlsx: row 3: 'p9' is neither in data.json") as info:
        stepcot.load_split(release, "train")
    assert info.value.path == str(release / "train.xlsx")
    pd.DataFrame([{"patient_id": "p2", "image_path": "images/p2.png", "vqa_chain": "[{broken"}]).to_excel(
        release / "val.xlsx", index=False
    )
    with pytest.raises(CaseError, match="row 2: vqa_chain is not valid JSON"):
        stepcot.load_split(release, "val")
    pd.DataFrame([{"name": "p1"}]).to_excel(release / "test.xlsx", index=False)
    with pytest.raises(CaseError, match="no patient_id or image_path column"):
        stepcot.load_split(release, "test")
    (release / "test.xlsx").write_text("not a workbook")
    with pytest.raises(CaseError, match="not a readable .xlsx"):
        stepcot.load_split(release, "test")
    (release / "images_2" / "p3.png").unlink()
    record = stepcot.load_data_json(release / "data.json")[2]
    with pytest.raises(CaseError, match="image of patient p3 not found"):
        record.image_file()


def test_the_diagnosis_follows_from_the_earlier_steps():
    chains = [stepcot.draw_chain(np.random.default_rng([5, i])) for i in range(3000)]
    by_steps = defaultdict(set)
    for a in chains:
        by_steps[tuple(a[k] for k in stepcot.ATTRIBUTES[:6])].add(a["diagnosis"])
        assert a["diagnosis"] == stepcot.diagnose(a)
    assert all(len(d) == 1 for d in by_steps.values())  # steps 1-6 determine the diagnosis
    by_pattern = defaultdict(set)
    for a in chains:
        by_pattern[a["pattern"]].add(a["diagnosis"])
    assert len(by_pattern["Cavity"]) == 2  # ... but no single step does
    assert len(by_pattern["Nodule/Mass"]) == 2
    assert {a["pattern"] for a in chains if a["density"] == "Mixed opacity"} == {"Cavity"}
    upper = np.mean(
        [("upper" in a["location"]) for a in chains if a["pattern"] == "Cavity" and a["distribution"] == "Focal"]
    )
    lower = np.mean(
        [("upper" in a["location"]) for a in chains if a["pattern"] == "Consolidation" and a["distribution"] == "Focal"]
    )
    assert upper > 0.55  # location depends on the pattern
    assert lower < 0.4
    for option_set, key in zip(stepcot.OPTIONS, stepcot.ATTRIBUTES):
        assert {a[key] for a in chains} == set(option_set)  # every option occurs


def test_a_lesion_is_drawn_in_the_zone_its_chain_names():
    normal = dict(zip(stepcot.ATTRIBUTES, NORMAL))
    half = stepcot.SIZE // 2
    for location, (rows, cols) in {
        "Right upper zone": (slice(0, half), slice(0, half)),
        "Left lower zone": (slice(half, None), slice(half, None)),
    }.items():
        chain = dict(zip(stepcot.ATTRIBUTES, CANCER), location=location, morphology="Well-circumscribed")
        changed = (
            np.abs(
                stepcot.render(np.random.default_rng(3), chain).astype(float)
                - stepcot.render(np.random.default_rng(3), normal).astype(float)
            )
            > 20
        )
        assert changed.sum() > 20, location
        assert changed[rows, cols].sum() > 0.8 * changed.sum(), location


def test_phantom_writes_the_real_schema_and_xray_cases(tmp_path):
    from macro.case import load_case

    paths = make("stepcot-phantom", tmp_path / "sc", n=12, seed=4)
    splits = stepcot.load_stepcot(tmp_path / "sc")
    assert [len(splits[s]) for s in stepcot.SPLITS] == [8, 2, 2]
    assert len(paths) == 12
    record = splits["train"][0]
    assert len(record.vqa_chain) == 7
    assert record.vqa_chain[6].answer in record.report
    assert record.vqa_chain[0].reasoning
    case = load_case(paths[0])
    assert case.modality == "xray"
    assert case.dims == 2
    again = make("stepcot-phantom", tmp_path / "again", n=2, seed=4)
    assert again[1].read_bytes() == paths[1].read_bytes()
    with pytest.raises(CaseError, match="n must be an integer"):
        make("stepcot-phantom", tmp_path / "bad", n=0)
