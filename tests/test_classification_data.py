"""Classification data layer: the derm/cxr phantoms, the ISIC 2018 and ChestX-ray14 readers, and the client splits."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from macro.case import load_case
from macro.data import BUILDERS, cxr, derm, make
from macro.data.labelled import (
    CXR14_CLASSES,
    ISIC_CLASSES,
    LabelledSet,
    dirichlet_split,
    erase_labels,
    label_set_split,
    read_chestxray14,
    read_isic2018,
    read_phantom,
    shard,
    train_val_test,
)
from macro.errors import CaseError

DATASETS = {"derm-phantom": ("derm", "dermoscopy", derm.CLASSES), "cxr-phantom": ("cxr", "xray", cxr.CLASSES)}


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


# ---------------------------------------------------------------- builders


@pytest.mark.parametrize("name", DATASETS)
def test_same_seed_gives_identical_bytes_in_any_batch_size(tmp_path, name):
    assert name in BUILDERS
    first = make(name, tmp_path / "a", n=4, seed=5, size=32)
    make(name, tmp_path / "b", n=4, seed=5, size=32)
    prefix = make(name, tmp_path / "c", n=2, seed=5, size=32)
    other = make(name, tmp_path / "d", n=2, seed=6, size=32)
    for path in sorted((tmp_path / "a").iterdir()):
        assert (tmp_path / "b" / path.name).read_bytes() == path.read_bytes(), path.name
    assert [p.read_bytes() for p in prefix] == [p.read_bytes() for p in first[:2]]
    assert [p.read_bytes() for p in other] != [p.read_bytes() for p in first[:2]]
    assert [p.name for p in first] == [f"{DATASETS[name][0]}-{i:05d}.png" for i in range(4)]


@pytest.mark.parametrize("name", DATASETS)
def test_folder_is_a_labelled_dataset_with_sidecars(tmp_path, name):
    prefix, modality, classes = DATASETS[name]
    paths = make(name, tmp_path, n=6, seed=1, size=40)
    with (tmp_path / "labels.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["image", *classes]
    assert [r[0] for r in rows[1:]] == [p.name for p in paths]
    for path, row in zip(paths, rows[1:]):
        side = json.loads(path.with_suffix(".json").read_text())
        assert side["modality"] == modality
        assert side["dataset"] == name
        assert side["seed"] == 1
        assert list(side["labels"].values()) == [int(v) for v in row[1:]]
        case = load_case(path)
        assert case.modality == modality
        assert case.shape == (40, 40)
        assert len(case.channels) == (3 if modality == "dermoscopy" else 1)
    data = read_phantom(tmp_path)
    assert data.classes == classes
    assert data.modality == modality
    assert data.multi_label == (name == "cxr-phantom")
    assert data.labels.dtype == np.float32
    assert data.labels.shape == (6, len(classes))
    if not data.multi_label:
        assert (data.labels.sum(axis=1) == 1).all()
    images = data.load_images(size=24)
    assert images.shape == (6, 3, 24, 24)
    assert images.dtype == np.float32
    assert 0 <= images.min()
    assert images.max() <= 1
    assert images.std() > 0.02
    if modality == "xray":
        assert np.array_equal(images[:, 0], images[:, 2])
    part = data.subset([4, 1])
    assert part.paths == [paths[4], paths[1]]
    assert np.array_equal(part.labels, data.labels[[4, 1]])


@pytest.mark.parametrize(
    "options",
    [dict(n=0), dict(n=100_001), dict(seed=-1), dict(n=2.5), dict(size=8), dict(size=4096), dict(colour="red")],
)
def test_bad_builder_arguments_raise_case_error(tmp_path, options):
    for name in DATASETS:
        with pytest.raises(CaseError):
            make(name, tmp_path / "out", **{"n": 1, **options})
    assert not (tmp_path / "out" / "labels.csv").exists()


def test_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CaseError, match="not a folder"):
        make("derm-phantom", tmp_path / "file", n=1)


def test_derm_classes_follow_the_ham10000_imbalance(tmp_path):
    n = 500
    labels = read_phantom(make("derm-phantom", tmp_path, n=n, seed=2, size=16)[0].parent).labels
    share = labels.mean(axis=0)
    tolerance = 4 * np.sqrt(derm.PRIOR * (1 - derm.PRIOR) / n) + 0.005
    assert (np.abs(share - derm.PRIOR) < tolerance).all(), dict(zip(derm.CLASSES, share.round(3)))
    assert 0.6 < share[derm.CLASSES.index("NV")] < 0.75


def test_cxr_prevalence_and_correlations_follow_the_table(tmp_path):
    rng = np.random.default_rng(0)
    draws = [cxr.draw_findings(rng) for _ in range(20_000)]
    seen = {name: np.array([d[name] for d in draws]) for name in cxr.CLASSES}
    expected: dict[str, float] = {}
    for name, (given, with_it, without_it) in cxr.FINDINGS.items():
        expected[name] = with_it if given is None else expected[given] * with_it + (1 - expected[given]) * without_it
        assert 0.03 <= expected[name] <= 0.25
        assert abs(seen[name].mean() - expected[name]) < 4 * np.sqrt(expected[name] * (1 - expected[name]) / len(draws))
    for finding, given in (
        ("Effusion", "Cardiomegaly"),
        ("Consolidation", "Infiltration"),
        ("Atelectasis", "Effusion"),
    ):
        assert seen[finding][seen[given]].mean() > 2 * seen[finding][~seen[given]].mean()
    n = 300
    labels = read_phantom(make("cxr-phantom", tmp_path, n=n, seed=4, size=16)[0].parent).labels
    p = np.array([expected[c] for c in cxr.CLASSES])
    assert (np.abs(labels.mean(axis=0) - p) < 4 * np.sqrt(p * (1 - p) / n) + 0.01).all()
    assert 0.3 < (labels.sum(axis=1) == 0).mean() < 0.8  # "No Finding" images are common, as in ChestX-ray14


# ---------------------------------------------------------------- learnability


def _derm_features(image: np.ndarray) -> np.ndarray:
    """Mean colour, spread, size and colour counts of the pixels that differ from the skin at the border."""
    x = image.astype(np.float32) / 255
    border = np.concatenate(
        [x[:3].reshape(-1, 3), x[-3:].reshape(-1, 3), x[:, :3].reshape(-1, 3), x[:, -3:].reshape(-1, 3)]
    )
    skin = np.median(border, axis=0)
    distance = np.abs(x - skin).sum(axis=-1)
    lesion = distance > 0.15
    if lesion.sum() < 5:
        lesion = distance >= np.quantile(distance, 0.9)
    px = x[lesion]
    r, g, b = px.T
    texture = np.abs(ndi.laplace(x.mean(axis=-1)))[lesion].mean()
    return np.array(
        [
            lesion.mean(),
            *px.mean(0),
            *(px.mean(0) - skin),
            *px.std(0),
            ((r - g) > 0.3).mean(),
            (b > r).mean(),
            (px.min(axis=1) > 0.75).mean(),
            (px.mean(axis=1) < 0.3).mean(),
            texture,
        ]
    )


def test_derm_classes_are_learnable_from_simple_colour_and_size_features():
    per_class, train = 60, 35
    x = np.array(
        [
            _derm_features(derm.render(np.random.default_rng([11, c, k]), name, 48))
            for c, name in enumerate(derm.CLASSES)
            for k in range(per_class)
        ]
    )
    y = np.repeat(np.arange(len(derm.CLASSES)), per_class)
    fit = np.tile(np.arange(per_class) < train, len(derm.CLASSES))
    mu, sd = x[fit].mean(0), x[fit].std(0) + 1e-6
    z = (x - mu) / sd
    centroids = np.stack([z[fit & (y == c)].mean(0) for c in range(len(derm.CLASSES))])
    predicted = np.argmin(((z[~fit][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    recall = [(predicted[y[~fit] == c] == c).mean() for c in range(len(derm.CLASSES))]
    assert np.mean(recall) > 0.35, recall  # chance is 1/7 = 0.14; measured 0.49


def _cxr_features(image: np.ndarray) -> np.ndarray:
    """Pooled brightness (16x16) and the strongest small and large blobs per 8x8 block, on a standardised image."""
    x = image.astype(np.float32) / 255
    x = (x - x.mean()) / (x.std() + 1e-6)
    n = x.shape[0]
    parts = [x.reshape(16, n // 16, 16, n // 16).mean((1, 3))]
    for small, large in ((0.7, 2.0), (2.0, 5.0)):
        blobs = ndi.gaussian_filter(x, small) - ndi.gaussian_filter(x, large)
        parts.append(blobs.reshape(8, n // 8, 8, n // 8).max((1, 3)))
    return np.concatenate([p.ravel() for p in parts])


def test_every_cxr_finding_is_learnable_by_a_linear_probe():
    """Images with one finding vs images with none, different patients: a ridge probe on pooled pixel statistics
    trained on 60 % must rank the held-out positives above the negatives."""
    count, size = 60, 64
    negatives = np.array([_cxr_features(cxr.render(np.random.default_rng([21, k]), [], size)) for k in range(count)])
    fit = count * 6 // 10
    aucs = {}
    for i, name in enumerate(cxr.CLASSES):
        positives = np.array(
            [_cxr_features(cxr.render(np.random.default_rng([22, i, k]), [name], size)) for k in range(count)]
        )
        x = np.concatenate([positives[:fit], negatives[:fit]])
        mu, sd = x.mean(0), x.std(0) + 1e-6
        a = (x - mu) / sd
        target = np.r_[np.ones(fit), -np.ones(fit)]
        weights = a.T @ np.linalg.solve(a @ a.T + 30 * np.eye(len(a)), target)
        aucs[name] = _auc((positives[fit:] - mu) / sd @ weights, (negatives[fit:] - mu) / sd @ weights)
    assert min(aucs.values()) > 0.6, aucs
    assert np.mean(list(aucs.values())) > 0.8, aucs


ZONES = {  # where each finding must change the image, as (test on the column fraction fx, row fraction fy) or "lung"
    "Atelectasis": lambda fx, fy: fy > 0.35,
    "Cardiomegaly": lambda fx, fy: (fx > 0.45) & (fy > 0.3) & (fy < 0.9),
    "Effusion": lambda fx, fy: fy > 0.5,
}


@pytest.mark.parametrize("name", cxr.CLASSES)
def test_each_cxr_finding_changes_the_image_where_it_belongs(name):
    """Same seed with and without the finding: the patient is identical, so the difference is the finding alone."""
    size = 64
    fy, fx = np.mgrid[0:size, 0:size] / size
    inside = total = 0.0
    for k in range(12):
        with_it = cxr.render(np.random.default_rng([5, k]), [name], size).astype(np.float32)
        without = cxr.render(np.random.default_rng([5, k]), [], size).astype(np.float32)
        difference = np.abs(with_it - without)
        if name in ZONES:
            zone = ZONES[name](fx, fy)
        else:
            x = (without - without.min()) / (without.max() - without.min())
            zone = ndi.binary_dilation(ndi.gaussian_filter(x, 1) < 0.45, iterations=2)
        inside += float(difference[zone].sum())
        total += float(difference.sum())
    assert total / (12 * size * size) > 0.1, "the finding barely changes the image"
    assert inside / total > 0.8, f"only {inside / total:.0%} of the change is where {name} belongs"


# ---------------------------------------------------------------- readers


def _write_csv(path, header, rows):
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def isic(tmp_path):
    images = tmp_path / "ISIC2018_Task3_Training_Input"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, cls in enumerate(("NV", "MEL", "VASC", "NV")):
        name = f"ISIC_{24306 + i:07d}"
        Image.fromarray(rng.integers(0, 255, (45, 60, 3), dtype=np.uint8)).save(images / f"{name}.jpg", quality=95)
        rows.append([name, *("1.0" if c == cls else "0.0" for c in ISIC_CLASSES)])
    return (
        _write_csv(tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv", ["image", *ISIC_CLASSES], rows),
        images,
        rows,
    )


def test_isic2018_reader(isic):
    csv_path, images, rows = isic
    data = read_isic2018(csv_path, images)
    assert data.classes == ISIC_CLASSES
    assert not data.multi_label
    assert data.modality == "dermoscopy"
    assert [p.name for p in data.paths] == [r[0] + ".jpg" for r in rows]
    assert data.labels.argmax(axis=1).tolist() == [1, 0, 6, 1]
    assert data.labels.sum() == 4
    loaded = data.load_images(size=32)
    assert loaded.shape == (4, 3, 32, 32)
    assert 0 <= loaded.min()
    assert loaded.max() <= 1


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h, r: (h[:-1], [x[:-1] for x in r]), "missing column"),
        (lambda h, r: (h + ["UNK"], [x + ["0.0"] for x in r]), "unexpected column"),
        (lambda h, r: (h, [r[0][:2] + ["yes"] + r[0][3:]] + r[1:]), "not a number"),
        (lambda h, r: (h, [r[0][:1] + ["1.0"] * 7] + r[1:]), "not one-hot"),
        (lambda h, r: (h, [r[0][:1] + ["0.0"] * 7] + r[1:]), "not one-hot"),
        (lambda h, r: (h, [r[0][:2] + ["0.5"] + r[0][3:]] + r[1:]), "not one-hot"),
        (lambda h, r: (h, r + [r[0]]), "repeated"),
        (lambda h, r: (h, r[:1] + [x[:3] for x in r[1:]]), "fields"),
        (lambda h, r: (h, []), "no data rows"),
    ],
)
def test_isic2018_reader_rejects_bad_csv(isic, edit, message):
    csv_path, images, rows = isic
    header, body = edit(["image", *ISIC_CLASSES], [list(r) for r in rows])
    _write_csv(csv_path, header, body)
    with pytest.raises(CaseError, match=message) as err:
        read_isic2018(csv_path, images)
    assert str(csv_path) in str(err.value)


def test_isic2018_reader_names_missing_files(isic, tmp_path):
    csv_path, images, rows = isic
    with pytest.raises(CaseError, match="file not found"):
        read_isic2018(tmp_path / "nope.csv", images)
    (images / f"{rows[2][0]}.jpg").unlink()
    with pytest.raises(CaseError, match=rf"1 image file\(s\).*{rows[2][0]}\.jpg"):
        read_isic2018(csv_path, images)
    with pytest.raises(CaseError, match="image folder not found"):
        read_isic2018(csv_path, tmp_path / "no-images")


CXR14_ROWS = [
    ["00000001_000.png", "Cardiomegaly", "0", "1", "58", "M", "PA", "2682", "2749", "0.143", "0.143"],
    ["00000001_001.png", "Cardiomegaly|Emphysema", "1", "1", "58", "M", "PA", "2894", "2729", "0.143", "0.143"],
    ["00000002_000.png", "No Finding", "0", "2", "81", "M", "PA", "2500", "2048", "0.171", "0.171"],
    [
        "00000003_000.png",
        "Effusion|Hernia|Pleural_Thickening",
        "0",
        "3",
        "74",
        "F",
        "AP",
        "2048",
        "2500",
        "0.168",
        "0.168",
    ],
]


@pytest.fixture
def nih(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, row in enumerate(CXR14_ROWS):
        pixels = rng.integers(0, 255, (50, 50)).astype(np.uint8)
        Image.fromarray(pixels.astype(np.uint16) * 257 if i == 1 else pixels).save(images / row[0])
    header = (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    csv_path = tmp_path / "Data_Entry_2017.csv"
    csv_path.write_text("\n".join([header] + [",".join(r) for r in CXR14_ROWS]) + "\n")
    return csv_path, images


def test_chestxray14_reader(nih, tmp_path):
    csv_path, images = nih
    data = read_chestxray14(csv_path, images)
    assert data.classes == CXR14_CLASSES
    assert data.multi_label
    assert data.modality == "xray"
    assert data.patient_ids == ["1", "1", "2", "3"]
    found = [{c for c, v in zip(data.classes, row) if v} for row in data.labels]
    assert found == [
        {"Cardiomegaly"},
        {"Cardiomegaly", "Emphysema"},
        set(),
        {"Effusion", "Hernia", "Pleural_Thickening"},
    ]
    loaded = data.load_images(size=20)
    assert loaded.shape == (4, 3, 20, 20)
    assert np.array_equal(loaded[:, 0], loaded[:, 1])
    assert 0.3 < loaded[1].mean() < 0.7  # the 16-bit image is scaled to [0, 1] like the 8-bit ones
    chosen = read_chestxray14(csv_path, images, classes=["Effusion", "Cardiomegaly"])
    assert chosen.classes == ("Effusion", "Cardiomegaly")
    assert chosen.labels.tolist() == [[0, 1], [0, 1], [0, 0], [1, 0]]
    trailing = tmp_path / "trailing.csv"  # some copies end every line with a comma
    trailing.write_text("".join(line + ",\n" for line in csv_path.read_text().splitlines()))
    assert np.array_equal(read_chestxray14(trailing, images).labels, data.labels)
    train, val, test = train_val_test(len(data), (0.5, 0.0, 0.5), seed=0, groups=data.patient_ids)
    assert {data.patient_ids[i] for i in train}.isdisjoint({data.patient_ids[i] for i in test})


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda lines: [lines[0].replace(",View Position", "")] + [",".join(r[:6] + r[7:]) for r in CXR14_ROWS],
            "missing column.*View Position",
        ),
        (lambda lines: [lines[0] + ",Extra"] + [line + ",x" for line in lines[1:]], "unexpected column.*Extra"),
        (
            lambda lines: lines[:2] + [lines[2].replace("Emphysema", "Emphysemia")] + lines[3:],
            "line 3: unknown finding.*Emphysemia",
        ),
        (lambda lines: lines[:3] + [lines[3].replace(",2,81", ",P2,81")] + lines[4:], "Patient ID 'P2'"),
        (lambda lines: lines + [lines[1]], "repeated"),
        (lambda lines: lines[:2] + ["00000009_000.png,No Finding"], "line 3 has 2 fields"),
    ],
)
def test_chestxray14_reader_rejects_bad_csv(nih, edit, message):
    csv_path, images = nih
    csv_path.write_text("\n".join(edit(csv_path.read_text().splitlines())) + "\n")
    with pytest.raises(CaseError, match=message) as err:
        read_chestxray14(csv_path, images)
    assert str(csv_path) in str(err.value)


def test_chestxray14_reader_names_missing_images_and_bad_classes(nih):
    csv_path, images = nih
    with pytest.raises(CaseError, match="distinct ChestX-ray14 findings"):
        read_chestxray14(csv_path, images, classes=["Cardiomegaly", "Pneumonitis"])
    extra = [f"{90 + i:08d}_000.png,No Finding,0,{90 + i},40,F,PA,2048,2048,0.14,0.14" for i in range(7)]
    csv_path.write_text(csv_path.read_text() + "\n".join(extra) + "\n")
    with pytest.raises(
        CaseError, match=r"7 image file\(s\) listed in Data_Entry_2017.csv are missing: 00000090_000.png.*, \.\.\."
    ) as err:
        read_chestxray14(csv_path, images)
    assert "00000096_000.png" not in str(err.value)


def test_phantom_reader_errors(tmp_path):
    with pytest.raises(CaseError, match="folder not found"):
        read_phantom(tmp_path / "missing")
    paths = make("cxr-phantom", tmp_path / "set", n=3, seed=0, size=16)
    paths[1].unlink()
    with pytest.raises(CaseError, match="cxr-00001.png"):
        read_phantom(tmp_path / "set")
    (tmp_path / "set" / "labels.csv").unlink()
    with pytest.raises(CaseError, match="labels.csv: file not found"):
        read_phantom(tmp_path / "set")


def test_labelled_set_checks_its_shape(tmp_path):
    with pytest.raises(CaseError, match="shape"):
        LabelledSet([tmp_path / "a.png"], np.zeros((2, 3)), ("a", "b", "c"), True, "xray")


# ---------------------------------------------------------------- client splits


@pytest.mark.parametrize("n_classes, n_clients", [(7, 5), (14, 8), (8, 8), (8, 5), (7, 3), (3, 6)])
def test_label_set_split_follows_fedlsm(n_classes, n_clients):
    for seed in range(25):
        sets = label_set_split(n_classes, n_clients, per_client=3, seed=seed)
        assert len(sets) == n_clients
        assert all(2 <= len(s) <= 3 and s == sorted(set(s)) for s in sets), sets
        assert set().union(*sets) == set(range(n_classes))  # round-robin dealing gives every class out
        assert sets == label_set_split(n_classes, n_clients, per_client=3, seed=seed)
    assert len({str(label_set_split(n_classes, n_clients, seed=s)) for s in range(25)}) > 1


def test_label_set_split_without_top_up_and_bad_arguments():
    sets = label_set_split(14, 2, per_client=3, seed=0)
    assert [len(s) for s in sets] == [7, 7]
    assert sorted(sets[0] + sets[1]) == list(range(14))
    with pytest.raises(CaseError):
        label_set_split(2, 3, per_client=3)


def test_erase_labels():
    multi = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32)
    erased, mask = erase_labels(multi, [0, 3], multi_label=True)
    assert mask.tolist() == [1, 0, 0, 1]
    assert erased.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]  # image 2 now reads as "No Finding"
    assert multi[0, 2] == 1  # the input is not modified
    single = np.eye(4, dtype=np.float32)[[2, 1, 2]]
    erased, mask = erase_labels(single, {1}, multi_label=False)
    assert erased.tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert mask.tolist() == [0, 1, 0, 0]
    with pytest.raises(CaseError):
        erase_labels(single, [4], multi_label=False)
    with pytest.raises(CaseError):
        erase_labels(multi, [0], multi_label=False)


def test_shard_and_train_val_test_cover_every_index_once():
    parts = shard(103, 5, seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert {len(p) for p in parts} <= {20, 21}
    assert all(np.array_equal(a, b) for a, b in zip(parts, shard(103, 5, seed=3)))
    train, val, test = train_val_test(1000, seed=1)
    assert (len(train), len(val), len(test)) == (700, 100, 200)
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(1000))
    with pytest.raises(CaseError):
        train_val_test(10, (0.5, 0.5, 0.5))


def test_dirichlet_split_covers_all_indices_once_and_skews_labels():
    y = np.random.default_rng(0).choice(7, size=2000, p=derm.PRIOR)
    parts = dirichlet_split(y, 5, alpha=1.0, seed=0, min_size=10)
    assert sorted(np.concatenate(parts).tolist()) == list(range(2000))
    assert min((len(p) for p in parts)) >= 10
    assert all(np.array_equal(a, b) for a, b in zip(parts, dirichlet_split(y, 5, alpha=1.0, seed=0, min_size=10)))

    def skew(alpha: float) -> float:  # how far client label mixes are from the global one
        shares = [np.bincount(y[p], minlength=7) / len(p) for p in dirichlet_split(y, 5, alpha=alpha, seed=1)]
        return float(np.mean([np.abs(s - np.bincount(y, minlength=7) / len(y)).sum() for s in shares]))

    assert skew(0.1) > skew(1.0) > skew(100.0)
    with pytest.raises(CaseError, match="lower min_size"):
        dirichlet_split(y[:30], 5, min_size=10)
