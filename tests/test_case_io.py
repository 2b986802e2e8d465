"""Case I/O: every supported format loads; every kind of bad input fails with one clear CaseError."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from macro.case import load_case
from macro.cli import app
from macro.errors import CaseError

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
DICOM_SERIES = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892003" / "MR2"


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def test_nifti_3d():
    case = load_case(NIB_DATA / "anatomical.nii")
    assert case.modality == "mr"
    assert case.dims == 3
    assert case.shape == (33, 41, 25)
    assert case.spacing == (2.0, 2.0, 2.0)
    assert case.image.shape == (1, 33, 41, 25)
    assert case.image.dtype == np.float32
    assert case.id.startswith("case-")
    assert case.id == load_case(NIB_DATA / "anatomical.nii").id


def test_content_hash_ignores_location(tmp_path):
    copy = shutil.copy(NIB_DATA / "anatomical.nii", tmp_path / "elsewhere.nii")
    assert load_case(copy).id == load_case(NIB_DATA / "anatomical.nii").id


def test_dicom_file_and_modality():
    case = load_case(get_testdata_file("CT_small.dcm"))
    assert case.modality == "ct"
    assert case.dims == 2
    assert case.image.shape == (1, 128, 128)
    assert case.image.min() < -500  # rescaled to Hounsfield units


def test_dicom_series_folder_is_sorted_into_a_volume():
    case = load_case(DICOM_SERIES)
    assert case.modality == "mr"
    assert case.dims == 3
    assert case.shape[2] == len(case.paths) > 1


def test_png_with_sidecar_modality(tmp_path):
    from PIL import Image

    path = tmp_path / "cxr.png"
    Image.fromarray((np.random.default_rng(0).random((64, 48)) * 255).astype(np.uint8)).save(path)
    (tmp_path / "cxr.json").write_text('{"modality": "xray"}')
    case = load_case(path)
    assert case.modality == "xray"
    assert case.shape == (64, 48)
    assert case.channels == ("image",)
    assert load_case(path, modality="other").modality == "other"


def test_multiseq_from_folder_and_from_list(demo_folder):
    case = load_case(demo_folder)
    assert case.modality == "mri-multiseq"
    assert case.channels == ("t1", "t1ce", "t2", "flair")
    assert case.image.shape[0] == 4
    assert case.labels is not None
    files = [next(demo_folder.glob(f"*-{s}.nii.gz")) for s in ("t1n", "t1c", "t2w", "t2f")]
    listed = load_case(files)
    assert listed.modality == "mri-multiseq"
    assert listed.labels is None
    assert np.array_equal(listed.image, case.image)


def test_old_brats_names(tmp_path):
    vol = np.random.default_rng(1).random((8, 8, 8)).astype(np.float32)
    for seq in ("t1", "t1ce", "t2", "flair"):
        _nifti(tmp_path / f"BraTS20_001_{seq}.nii.gz", vol)
    _nifti(tmp_path / "BraTS20_001_seg.nii.gz", (vol > 0.9).astype(np.uint8) * 4)
    case = load_case(tmp_path)
    assert case.channels == ("t1", "t1ce", "t2", "flair")
    assert case.label_path.name == "BraTS20_001_seg.nii.gz"


def _bad_inputs(tmp: Path, demo_folder: Path) -> dict[str, tuple[Path, str]]:
    """Ten-plus kinds of bad input, each with a fragment its message must contain."""
    good = NIB_DATA / "anatomical.nii"
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp / "nope.nii.gz", "not found")
    (tmp / "empty.nii.gz").write_bytes(b"")
    cases["empty"] = (tmp / "empty.nii.gz", "empty")
    payload = gzip.compress(good.read_bytes())
    (tmp / "truncated.nii.gz").write_bytes(payload[: len(payload) // 2])
    cases["truncated"] = (tmp / "truncated.nii.gz", "truncated")
    (tmp / "corrupt.nii").write_bytes(np.random.default_rng(0).bytes(4096))
    cases["corrupt"] = (tmp / "corrupt.nii", "not a readable NIfTI")
    (tmp / "notes.txt").write_text("hello")
    cases["unsupported"] = (tmp / "notes.txt", "unsupported file type")
    cases["4d"] = (NIB_DATA / "example4d.nii.gz", "4D image")
    nan = np.ones((6, 6, 6), np.float32)
    nan[2, 2, 2] = np.nan
    cases["nan"] = (_nifti(tmp / "nan.nii.gz", nan), "NaN/inf")
    inf = np.ones((6, 6, 6), np.float32)
    inf[1, 1, 1] = np.inf
    cases["inf"] = (_nifti(tmp / "inf.nii.gz", inf), "NaN/inf")
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    header.set_data_dtype(np.uint8)
    (tmp / "huge.nii").write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 64)
    cases["absurd size"] = (tmp / "huge.nii", "implausible")
    cases["blank"] = (_nifti(tmp / "blank.nii.gz", np.zeros((6, 6, 6), np.float32)), "blank")
    cases["dicom without pixels"] = (Path(get_testdata_file("rtplan.dcm")), "an RT treatment plan, not an image")
    (tmp / "empty_dir").mkdir()
    cases["empty folder"] = (tmp / "empty_dir", "folder is empty")
    partial = tmp / "partial"
    shutil.copytree(demo_folder, partial)
    next(partial.glob("*-t2f.nii.gz")).unlink()
    cases["missing sequence"] = (partial, "lacks sequence(s) flair")
    (tmp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    cases["corrupt png"] = (tmp / "broken.png", "not a readable image")
    return cases


def test_each_bad_input_raises_one_case_error(tmp_path, demo_folder):
    for kind, (path, fragment) in _bad_inputs(tmp_path, demo_folder).items():
        with pytest.raises(CaseError) as info:
            load_case(path)
        message = str(info.value)
        assert fragment in message, (kind, message)
        assert path.name in message, (kind, message)


def test_shape_mismatch_between_sequences(tmp_path):
    files = [
        _nifti(tmp_path / f"s{i}.nii.gz", np.random.default_rng(i).random((8, 8, 8 + (i == 3))).astype(np.float32))
        for i in range(4)
    ]
    with pytest.raises(CaseError, match="co-registered"):
        load_case(files)


def test_cli_bad_inputs_exit_2_one_line_and_write_nothing(tmp_path, demo_folder, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MACRO_HOME", str(home))
    bad = _bad_inputs(tmp_path / "inputs", demo_folder) if (tmp_path / "inputs").mkdir() is None else {}
    assert len(bad) >= 10
    runner = CliRunner()
    for kind, (path, fragment) in bad.items():
        result = runner.invoke(app, ["ask", str(path), "What is the tumour volume?", "--policy", "scripted", "--json"])
        assert result.exit_code == 2, (kind, result.output, result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (kind, result.stderr)
        assert lines[0].startswith("error: "), (kind, result.stderr)
        assert fragment in lines[0], (kind, result.stderr)
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
    assert not home.exists(), "bad input must not create or write any store"


def test_cli_bad_input_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "macro.cli", "ask", str(tmp_path / "missing.nii.gz"), "hi", "--policy", "scripted"],
        capture_output=True,
        text=True,
        env={"MACRO_HOME": str(tmp_path / "h"), "PATH": ""},
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("liver_1frame.dcm", "SEG segmentation object"),
        ("rtdose.dcm", "RT dose grid"),
        ("rtstruct.dcm", "RT structure set"),
        ("test-SR.dcm", "structured report"),
        ("waveform_ecg.dcm", "ECG waveform"),
    ],
)
def test_dicom_objects_that_are_not_images_are_refused_by_name(name, what):
    path = Path(get_testdata_file(name))
    with pytest.raises(CaseError, match=what) as caught:
        load_case(path)
    assert str(path) in str(caught.value)
    assert "force=True" not in str(caught.value), "pydicom's advice is not the user's to follow"


def test_a_series_folder_keeps_its_images_and_skips_a_seg_beside_them(tmp_path):
    import shutil

    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    shutil.copy(get_testdata_file("liver_1frame.dcm"), folder / "seg.dcm")
    case = load_case(folder)
    assert case.modality == "ct"
    assert [p.name for p in case.paths] == ["ct.dcm"]


@pytest.mark.parametrize(
    "tag, value, named",
    [
        (0x00280030, "abc", "PixelSpacing"),  # DS
        (0x00280008, "1A", "NumberOfFrames"),  # IS
        (0x00281053, "x", "RescaleSlope"),  # read with the pixels
        (0x00200032, "a\\b\\c", "ImagePositionPatient"),  # geometry of a series
    ],
)
def test_a_malformed_dicom_header_is_one_clear_error(tmp_path, tag, value, named):
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = "Planted^Identifier"
    if tag not in ds:
        ds.add_new(tag, "IS" if named == "NumberOfFrames" else "DS", "1")
    ds[tag]._value = value
    files = []
    for i in range(2 if named == "ImagePositionPatient" else 1):  # positions matter only across slices
        ds.InstanceNumber = i + 1
        files.append(tmp_path / f"bad{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    source = tmp_path if len(files) > 1 else files[0]
    with pytest.raises(CaseError) as caught:
        assert load_case(source).image is None
    message = str(caught.value)
    assert "malformed DICOM header" in message and "Planted" not in message
    assert named in message
    result = CliRunner().invoke(app, ["tools", "list", "--case", str(source)])
    assert result.exit_code == 2 and "Traceback" not in result.output and "Planted" not in result.output


def _png(path: Path, width: int, height: int, extra: bytes = b"") -> Path:
    """A PNG from its chunks: the header may declare any size; the pixel data is one empty row."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    pixels = chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + extra + pixels + chunk(b"IEND", b""))
    return path


def test_picture_bombs_are_refused_before_decoding(tmp_path):
    import struct
    import zlib

    huge = _png(tmp_path / "huge.png", 30000, 30000)
    text = zlib.compress(b"A" * (64 * 2**20), 9)
    ztxt = struct.pack(">I", len(text) + 9) + b"zTXt" + b"Comment\x00\x00" + text
    ztxt += struct.pack(">I", zlib.crc32(ztxt[4:]) & 0xFFFFFFFF)
    text_bomb = _png(tmp_path / "text.png", 4, 4, ztxt)
    for path, problem in ((huge, "too many pixels"), (text_bomb, "not a readable image")):
        with pytest.raises(CaseError, match=problem):
            load_case(path)
        result = CliRunner().invoke(app, ["ask", str(path), "Describe this scan", "--policy", "scripted"])
        assert result.exit_code == 2 and "Traceback" not in result.output


def test_a_comma_in_a_file_name_is_part_of_the_name(tmp_path):
    named = tmp_path / "Doe, Jane.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), named)
    result = CliRunner().invoke(app, ["tools", "list", "--case", str(named), "--json"])
    assert result.exit_code == 0, result.output
    assert "describe_scan" in result.stdout


@pytest.mark.parametrize("shape", [(64, 48), (64, 48, 1)])
def test_a_single_slice_nifti_is_a_2d_image_with_two_spacings(tmp_path, shape):
    path = tmp_path / "slice.nii.gz"
    pixels = np.random.default_rng(0).random(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(pixels, np.diag([0.5, 0.7, 3, 1])), path)
    case = load_case(path)
    assert case.shape == (64, 48) and case.spacing == pytest.approx((0.5, 0.7)) and case.dims == 2
    assert case.image.shape == (1, 64, 48)


@pytest.mark.parametrize("bad, problem", [(np.nan, "NaN or infinite"), (-3.0, "not label integers")])
def test_a_reference_segmentation_with_nan_or_negative_labels_is_refused(demo_folder, tmp_path, bad, problem):
    folder = tmp_path / "case"
    shutil.copytree(demo_folder, folder)
    seg = next(folder.glob("*seg.nii.gz"))
    img = nib.load(seg)
    labels = np.asarray(img.dataobj, dtype=np.float32)
    labels[0, 0, 0] = bad
    nib.save(nib.Nifti1Image(labels, img.affine), seg)
    with pytest.raises(CaseError, match=problem):
        assert load_case(folder).labels is None


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(monkeypatch):
    from macro.tools.registry import Registry

    def broken(*args, **kwargs):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(Registry, "default", broken)
    result = CliRunner().invoke(app, ["tools", "list"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip() == (
        "internal error: RuntimeError: planted bug (rerun with macro --debug for the traceback)"
    )
    debug = CliRunner().invoke(app, ["--debug", "tools", "list"])
    assert isinstance(debug.exception, RuntimeError)


# VmHWM, not ru_maxrss: a child started by vfork + exec inherits the parent's high-water mark in ru_maxrss.
PEAK_SCRIPT = """
import sys
from macro.case import load_case
case = load_case(sys.argv[1])
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(case.image.shape, int(peak.split()[1]) // 1024)
"""


def test_volume_bombs_are_refused_from_the_header_and_the_largest_allowed_decodes_in_bounded_memory(tmp_path):
    """A 1.7 MB .nii.gz declaring 2048x2048x95 and a 6.6 MB RLE DICOM declaring 1024x1024x200 are refused before any
    voxel is read; a scaled 512x512x500 volume (at the limit) decodes with a peak under 1 GB (float32 result, the
    stored array, the interpreter)."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless

    big = np.zeros((2048, 2048, 95), np.uint8)
    big[5, 5, 5] = 9
    nib.save(nib.Nifti1Image(big, np.eye(4)), tmp_path / "big.nii.gz")
    del big
    with pytest.raises(CaseError, match=r"398,458,880 voxels, over the limit of 134,217,728; crop or downsample"):
        load_case(tmp_path / "big.nii.gz", check=False)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    frames = np.zeros((200, 1024, 1024), np.uint16)
    frames[:, 10:50, 10:50] = 100
    ds.Rows, ds.Columns, ds.NumberOfFrames = 1024, 1024, 200
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData, ds.file_meta.TransferSyntaxUID = frames.tobytes(), ExplicitVRLittleEndian
    ds.compress(RLELossless, frames)
    ds.save_as(tmp_path / "rle.dcm")
    del frames, ds
    with pytest.raises(CaseError, match=r"209,715,200 voxels, over the limit"):
        load_case(tmp_path / "rle.dcm", check=False)

    cube = np.zeros((512, 512, 500), np.uint8)
    cube[100:200, 100:200, 100:200] = 50
    scaled = nib.Nifti1Image(cube, np.eye(4))
    scaled.header.set_slope_inter(2.0, 1.0)
    nib.save(scaled, tmp_path / "cube.nii.gz")
    del cube, scaled
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "cube.nii.gz")], capture_output=True, text=True, check=True
    )
    shape, peak_mb = out.stdout.rsplit(maxsplit=1)
    assert shape == "(1, 512, 512, 500)" and int(peak_mb) < 1024, out.stdout


@pytest.mark.parametrize("size", [24, 17])
def test_a_nifti_extension_size_that_does_not_fit_is_a_damaged_header(tmp_path, size):
    """nibabel reads such a file with a warning and a guess; MACRO refuses it, naming the extension."""
    import struct

    img = nib.Nifti1Image((np.arange(512).reshape(8, 8, 8) % 50).astype(np.int16), np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"sixteen bytes..."))
    nib.save(img, tmp_path / "good.nii")
    assert load_case(tmp_path / "good.nii").shape == (8, 8, 8)
    data = bytearray((tmp_path / "good.nii").read_bytes())
    data[352:356] = struct.pack("<i", size)
    (tmp_path / "bad.nii").write_bytes(bytes(data))
    with pytest.raises(CaseError, match=f"extension at byte 352 declares {size} bytes"):
        load_case(tmp_path / "bad.nii")
