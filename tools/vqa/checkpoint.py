"""Step-CoT weights: the teacher and the student (fp16 safetensors) with a manifest holding each file's sha256, the
label maps, the questions, the training command, seed and held-out metrics (through :mod:`macro.weights`), and the
out-of-distribution check on the image feature both models read (:mod:`macro.tools.ood`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from macro import weights
from macro.tools import ood
from macro.tools.vqa.data import StepData, load_folder, phantom_folder
from macro.tools.vqa.model import Student, Teacher

SLOT = weights.slot("vqa", Path(__file__).parent / "weights", "macro train vqa")
DEVIATIONS = [
    "frozen ImageNet EfficientNet-Lite0 (128 px, 1600-d global + 2x2 pooled features) instead of CLIP ViT-B/32 (512-d)",
    "frozen all-MiniLM-L6-v2 (384-d, projected) instead of BERT-base [CLS] (768-d); prompt = question + options",
    "teacher hidden 128 (4 heads x 32) instead of 768, for 2 CPU cores; student hidden 512 as in the notes",
    "learning rates 1e-3 (teacher) and 2e-3 (student) instead of 5e-5 and 1e-4 (random init, a few thousand images)",
    "stage B 20 epochs instead of 40 (validation peaked earlier); best-validation checkpoint as in the notes",
    "one P_s/P_t pair shared by the seven steps; teacher targets computed in eval mode",
    "trained on stepcot-phantom (seeded synthetic radiographs in the Step-CoT schema), not the real release",
]
FILES = {"teacher": "teacher.safetensors", "student": "student.safetensors"}


def fit_ood(data: StepData) -> ood.Density:
    """The out-of-distribution check: fitted on the training images, calibrated on the validation images."""
    from macro.data.labelled import _load_rgb
    from macro.tools.vqa.encoders import IMAGE_SIZE

    files = data.files["train"] + data.files["val"]
    n_train = len(data.files["train"])
    return ood.fit_on_images(
        lambda rows: np.stack([_load_rgb(files[i], IMAGE_SIZE) for i in rows]),
        np.arange(n_train),
        np.arange(n_train, len(files)),
        IMAGE_SIZE,
    )


def save_models(folder: Path, teacher: Teacher, student: Student, manifest: dict, density: ood.Density) -> dict:
    """Write both models, the OOD check and the manifest; ``manifest`` must carry options, questions, hidden sizes
    and feat_dim."""
    tensors = {FILES["teacher"]: teacher.state_dict(), FILES["student"]: student.state_dict()}
    tensors[ood.FILE] = density.tensors()
    info = {**manifest.get("ood", {}), **density.info(), "feature": ood.describe(manifest["image_size"])}
    return weights.save_tensors(folder, tensors, {**manifest, "ood": info})


def ship(folder: Path, trained: dict, report: dict, command: str) -> dict:
    """Save the teacher and student of an evaluation run (``macro.eval.vqa.run``) with its held-out figures."""
    from macro.tools.vqa.encoders import FEATURE_DIM, IMAGE_SIZE

    data = trained["data"]
    manifest = {
        "name": "stepcot-vqa",
        "command": command,
        "seed": report["protocol"]["seed"],
        "train_seed": report["protocol"]["train_seed"],
        "data": {**data.source, "folder": weights.portable(data.source["folder"])},
        "options": [list(o) for o in data.options],
        "questions": list(data.questions),
        "feat_dim": FEATURE_DIM,
        "image_size": IMAGE_SIZE,
        "teacher_hidden": trained["teacher"].text_proj.out_features,
        "student_hidden": trained["student"].img_proj[0].out_features,
        "encoders": {
            "image": "efficientnet-lite0 (ImageNet), stem + 16 MBConv blocks frozen; "
            "global + 2x2 mean pooling of the 320-ch map",
            "text": "all-MiniLM-L6-v2 (frozen; step prompts embedded once, stored in the teacher as 'prompts')",
        },
        "held_out": {"split": "test", **report["methods"]},
        "protocol": report["protocol"],
        "deviations": DEVIATIONS,
    }
    return save_models(folder, trained["teacher"], trained["student"], manifest, fit_ood(data))


def load_model(kind: str, folder: Path | None = None) -> tuple[torch.nn.Module, dict]:
    """The ``teacher`` or ``student`` (fp32, eval mode) and the manifest; the active copy unless ``folder`` is given."""
    if kind not in FILES:
        raise ValueError(f"unknown Step-CoT model {kind!r}; expected one of {', '.join(FILES)}")
    manifest, states = weights.load_tensors(folder or SLOT.active(), SLOT.regenerate, (FILES[kind],))
    state = states[FILES[kind]]
    n_classes = [len(o) for o in manifest["options"]]
    if kind == "teacher":
        model = Teacher(manifest["feat_dim"], n_classes, state["prompts"], hidden=manifest["teacher_hidden"])
    else:
        model = Student(manifest["feat_dim"], n_classes, hidden=manifest["student_hidden"])
    model.load_state_dict(state)
    return model.eval(), manifest


def load_ood(folder: Path | None = None) -> ood.Density | None:
    """The out-of-distribution check, or None for weights made before it existed."""
    return ood.load(folder or SLOT.active(), SLOT.regenerate)


def refit_ood(data_root: Path, folder: Path | None = None, out: Path | None = None) -> dict:
    """Fit the OOD check of existing weights (``macro train vqa`` fits it itself) on the phantom their manifest
    names, and write it with the unchanged models (under MACRO_HOME unless ``out``)."""
    teacher, manifest = load_model("teacher", folder)
    student, _ = load_model("student", folder)
    protocol = manifest["protocol"]
    data = load_folder(phantom_folder(data_root, protocol["n_images"], protocol["seed"]))
    return save_models(SLOT.target(out), teacher, student, manifest, fit_ood(data))
