"""Shipped Step-CoT weights: ``teacher.safetensors`` and ``student.safetensors`` (fp16) plus ``manifest.json``
with each file's sha256, the label maps, the questions, the training command, seed and held-out metrics."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from macro.tools.vqa.model import Student, Teacher

WEIGHTS_DIR = Path(__file__).parent / "weights"
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


def _save(model: torch.nn.Module, path: Path) -> str:
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_models(folder: Path, teacher: Teacher, student: Student, manifest: dict) -> dict:
    """Write both models and the manifest; ``manifest`` must carry options, questions, hidden sizes and feat_dim."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        kind: {"file": name, "sha256": _save(model, folder / name), "dtype": "float16"}
        for (kind, name), model in zip(FILES.items(), (teacher, student))
    }
    manifest = {**manifest, "files": files}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def ship(folder: Path, trained: dict, report: dict, command: str) -> dict:
    """Save the teacher and student of an evaluation run (``macro.eval.vqa.run``) with its held-out figures."""
    from macro.tools.vqa.encoders import FEATURE_DIM, IMAGE_SIZE

    data = trained["data"]
    manifest = {
        "name": "stepcot-vqa",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "seed": report["protocol"]["seed"],
        "train_seed": report["protocol"]["train_seed"],
        "data": data.source,
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
    return save_models(folder, trained["teacher"], trained["student"], manifest)


def load_model(kind: str, folder: Path = WEIGHTS_DIR) -> tuple[torch.nn.Module, dict]:
    """The ``teacher`` or ``student`` (fp32, eval mode) and the manifest; ``ModelUnavailable`` names the command."""
    from safetensors.torch import load_file

    from macro.agent.local_llm import ModelUnavailable

    if kind not in FILES:
        raise ValueError(f"unknown Step-CoT model {kind!r}; expected one of {', '.join(FILES)}")
    manifest_path = Path(folder) / "manifest.json"
    if not manifest_path.is_file():
        raise ModelUnavailable(f"{folder}: no Step-CoT weights; train them with: macro train vqa")
    manifest = json.loads(manifest_path.read_text())
    n_classes = [len(o) for o in manifest["options"]]
    state = {k: v.float() for k, v in load_file(str(Path(folder) / manifest["files"][kind]["file"])).items()}
    if kind == "teacher":
        model = Teacher(manifest["feat_dim"], n_classes, state["prompts"], hidden=manifest["teacher_hidden"])
    else:
        model = Student(manifest["feat_dim"], n_classes, hidden=manifest["student_hidden"])
    model.load_state_dict(state)
    return model.eval(), manifest
