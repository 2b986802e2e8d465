"""The memory's frozen encoder: one unit vector per case, the same one every time, for 2D pictures and 3D volumes."""

from __future__ import annotations

import numpy as np
import pytest

from macro.case import load_case
from macro.memory import encoder
from macro.memory.encoder import EMBED_DIM, case_embedding, embed_cases


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("png") / "lesion.png"
    yy, xx = np.mgrid[:96, :80]
    blob = np.exp(-((yy - 50) ** 2 + (xx - 35) ** 2) / 300.0)
    rgb = np.stack([200 - 120 * blob, 160 - 110 * blob, 140 - 90 * blob], axis=-1)
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path)
    return load_case(path)


def _fresh(case) -> np.ndarray:
    """Embed without the per-process cache, to check the computation itself is deterministic."""
    encoder._CACHE.pop(case.id, None)
    return case_embedding(case)


@pytest.mark.parametrize("which", ["picture", "demo"])
def test_embedding_is_a_deterministic_unit_vector(which, request, one_thread):
    case = request.getfixturevalue(which)
    first = _fresh(case)
    assert first.shape == (EMBED_DIM,)
    assert first.dtype == np.float32
    assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(_fresh(case), first, atol=1e-6)
    cached = case_embedding(case)
    assert cached is case_embedding(case)
    assert not cached.flags.writeable


def test_volume_views_cover_every_sequence_and_axis(demo):
    views, channels = encoder._views(demo)
    assert channels == 4
    assert demo.channels == ("t1", "t1ce", "t2", "flair")
    assert tuple(views.shape) == (4 * 3 * len(encoder.SLICE_FRACTIONS), 3, encoder.EMBED_SIZE, encoder.EMBED_SIZE)
    assert float(views.min()) >= 0.0
    assert float(views.max()) <= 1.0
    assert float(views.std()) > 0.05


def test_batch_helper_matches_single_cases_and_separates_modalities(picture, demo, one_thread):
    batch = embed_cases([picture, demo, picture])
    assert batch.shape == (3, EMBED_DIM)
    assert np.array_equal(batch[0], batch[2])
    assert np.allclose(batch[1], case_embedding(demo))
    assert float(batch[0] @ batch[1]) < 0.8  # a skin picture and a brain MRI are not neighbours


def test_single_sequence_volume_lands_near_its_multisequence_case(demo_folder, demo, picture, one_thread):
    flair = load_case(next(demo_folder.glob("*-t2f.nii.gz")))
    assert flair.dims == 3
    assert len(flair.channels) == 1
    vector = case_embedding(flair)
    assert float(vector @ case_embedding(demo)) > float(vector @ case_embedding(picture))
