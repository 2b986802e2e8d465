"""``macro fl train`` and ``macro fl unlearn``: a federated run that ends in calibrated weights, and a
right-to-be-forgotten request that ends in new weights plus an audit record. Both write the task's home copy
(``MACRO_HOME/models/classification/<task>``, which the tools then use) unless given an explicit ``--out``.

Training: FedLSM (or a baseline) over the task's label-set-mismatched sites; the round with the best validation
mean AUC is kept (FedLSM's model selection); a temperature is fitted on validation; test AUC and calibration error
go into the manifest. Unlearning: FCU (model-contrastive unlearning with frequency-guided fusion, then short
equal-weight post-training on the remaining sites) on the federation the manifest names; the audit record says
who asked, when, which model versions, and the metrics before and after.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from macro import weights as weights_io
from macro.artifacts import locked_file
from macro.config import Home
from macro.data.labelled import LabelledSet, read_phantom, train_val_test
from macro.errors import CaseError
from macro.federated import fcu as fcu_lib
from macro.federated import fedlsm
from macro.federated.tasks import TASKS, Federation, dataset_folder, federation
from macro.tools import ood
from macro.tools.classification.calibrate import ece, fit_temperature, probabilities
from macro.tools.classification.model import IMAGE_SIZE, SLOTS, Classifier, load_classifier, load_ood, save_classifier


def _model(fed: Federation, state) -> Classifier:
    model = fed.model_fn()
    model.load_state_dict(state)
    return model.eval()


def task_slot(task: str):
    """The weights slot of a task's classifier; an unknown task is a clear error."""
    if task not in SLOTS:
        raise CaseError(None, f"unknown task {task!r}; choose one of {', '.join(SLOTS)}")
    return SLOTS[task]


def metrics(fed: Federation, state, data) -> dict:
    """AUC / accuracy in points on a held-out or site set."""
    out = fedlsm.evaluate(_model(fed, state), data)
    return {"auc": round(out["auc"], 2), "acc": round(out["acc"], 2)}


def calibrate(fed: Federation, state) -> dict:
    """Temperature fitted on validation; ECE on test before and after."""
    model = _model(fed, state)
    val_logits = fedlsm.predict(model, fed.val.weak, len(fed.val))
    temperature = fit_temperature(val_logits, fed.val.labels, fed.multi_label)
    test_logits = fedlsm.predict(model, fed.test.weak, len(fed.test))
    return {
        "temperature": round(temperature, 4),
        "test_ece_raw": round(ece(probabilities(test_logits, fed.multi_label), fed.test.labels, fed.multi_label), 2),
        "test_ece": round(
            ece(probabilities(test_logits, fed.multi_label, temperature), fed.test.labels, fed.multi_label), 2
        ),
    }


def train_fedlsm(
    fed: Federation, method: str = "fedlsm", rounds: int = 50, lr: float = 1e-3, progress: bool = False
) -> tuple[dict, dict]:
    """Run ``method`` (a FedLSM variant) and keep the round with the best validation mean AUC."""
    cfg = fedlsm.FedLSMConfig.variant(method, rounds=rounds, local_iters=fed.task.local_iters, lr=lr)
    best = {"val_auc": -1.0}
    start = time.perf_counter()

    def on_round(round_, state, results):
        val = fedlsm.evaluate(_model(fed, state), fed.val)["auc"]
        if val > best["val_auc"]:
            best.update(val_auc=val, round=round_, state={k: v.clone() for k, v in state.items()})

    fedlsm.run(fed.model_fn, fed.clients, cfg, init_state=fed.init_state(), on_round=on_round, progress=progress)
    info = {
        "method": method,
        "rounds": rounds,
        "best_round": best["round"],
        "val_auc": round(best["val_auc"], 2),
        "lr": lr,
        "local_iters": cfg.local_iters,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return best["state"], info


def fit_ood(data: LabelledSet, train: np.ndarray, val: np.ndarray) -> ood.Density:
    """The out-of-distribution check of a task's classifier: fitted on its training images, calibrated on val."""

    return ood.fit_on_images(lambda rows: data.load_images(IMAGE_SIZE, rows), train, val, IMAGE_SIZE)


def train_task(
    task: str,
    data_root: Path,
    out: Path | None = None,
    method: str = "fedlsm",
    rounds: int = 50,
    n_images: int | None = None,
    seed: int = 0,
    lr: float = 1e-3,
    command: str = "macro fl train",
    progress: bool = True,
) -> dict:
    fed = federation(task, data_root, "labelset", n_images, seed, progress=progress)
    state, info = train_fedlsm(fed, method, rounds, lr, progress)
    manifest = {
        "name": f"{task}-classifier",
        "task": task,
        "classes": list(fed.classes),
        "multi_label": fed.multi_label,
        "method": method,
        "created": weights_io.now(),
        "command": command,
        "seed": seed,
        "federation": fed.recipe,
        "label_sets": {str(k): v for k, v in fed.label_sets.items()},
        "train": info,
        "held_out": {"test": metrics(fed, state, fed.test)},
        **calibrate(fed, state),
        "unlearned_clients": [],
    }
    train_rows = np.concatenate(list(fed.client_images.values()))
    density = fit_ood(fed.labelled, train_rows, fed.held_out["val"])
    return save_classifier(_model(fed, state), task_slot(task).target(out), manifest, density)


def refit_ood(task: str, data_root: Path, folder: Path | None = None, out: Path | None = None) -> dict:
    """Fit the OOD check of an existing classifier (``fl train`` fits it itself) on the training images of the
    federation its manifest names, and write it with the unchanged weights (under MACRO_HOME unless ``out``)."""
    model, manifest = load_classifier(task, folder)
    recipe = manifest["federation"]
    if recipe.get("dataset") == "external":
        raise CaseError(None, f"{task}: these weights were trained on an external dataset; retrain with fl train")
    data = read_phantom(dataset_folder(data_root, TASKS[task], recipe["n_images"], recipe["seed"]))
    train, val, _ = train_val_test(len(data), seed=recipe["seed"], groups=data.patient_ids)
    return save_classifier(model, task_slot(task).target(out), manifest, fit_ood(data, train, val))


def audit_path() -> Path:
    return Home.current().ensure().root / "audit" / "unlearning.jsonl"


GENESIS = "0" * 64


def _entry_hash(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def append_audit(record: dict, path: Path | None = None) -> Path:
    """Append one request to the hash-chained log: the record carries the previous entry's hash (``prev_hash``) and
    its own (``hash``, over everything else), so editing, dropping or reordering an earlier line breaks the chain
    (:func:`check_audit`). Written under a lock and fsynced before returning."""
    path = path or audit_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked_file(path.with_name(path.name + ".lock")):
        lines = path.read_text().splitlines() if path.exists() else []
        previous = json.loads(lines[-1]).get("hash", GENESIS) if lines else GENESIS
        record = {**record, "prev_hash": previous}
        record["hash"] = _entry_hash(record)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def check_audit(path: Path | None = None) -> dict:
    """Walk the chain: ``{"entries", "ok", "problems"}``, each problem naming the line that breaks it."""
    path = path or audit_path()
    problems, previous, count = [], GENESIS, 0
    for number, line in enumerate(path.read_text().splitlines() if path.exists() else [], start=1):
        count += 1
        try:
            record = json.loads(line)
        except ValueError:
            problems.append(f"line {number}: not JSON")
            previous = None
            continue
        if record.get("hash") != _entry_hash(record):
            problems.append(f"line {number}: its content does not match its hash (edited)")
        if previous is not None and record.get("prev_hash") != previous:
            problems.append(f"line {number}: does not follow the line before it (a line was removed or reordered)")
        previous = record.get("hash")
    return {"path": str(path), "entries": count, "ok": not problems, "problems": problems}


def unlearn_task(
    task: str,
    client: int,
    data_root: Path,
    weights: Path | None = None,
    out: Path | None = None,
    requested_by: str | None = None,
    cfg: fcu_lib.FCUConfig | None = None,
    progress: bool = True,
) -> dict:
    """Forget ``client`` from the task's active model (or ``weights``) with FCU; write the new weights (under
    MACRO_HOME unless ``out`` says otherwise) and an audit record."""
    folder = weights or task_slot(task).active()
    model, manifest = load_classifier(task, folder)
    recipe = manifest["federation"]
    if not 0 <= client < recipe["n_clients"]:
        raise CaseError(None, f"client must be in 0..{recipe['n_clients'] - 1} for task {task}, got {client}")
    if client in manifest.get("unlearned_clients", []):
        raise CaseError(None, f"client {client} was already unlearned from this model ({folder})")
    fed = federation(task, data_root, recipe["split"], recipe["n_images"], recipe["seed"], progress=progress)
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    remaining = [k for k in fed.clients if k != client and k not in manifest.get("unlearned_clients", [])]
    cfg = cfg or fcu_lib.FCUConfig(lr=1e-3, post_rounds=2, post_iters=fed.task.local_iters, post_lr=1e-3)

    def snapshot(state) -> dict:
        return {
            "forgotten": metrics(fed, state, fed.site_eval([client])),
            "others": metrics(fed, state, fed.site_eval(remaining)),
            "test": metrics(fed, state, fed.test),
        }

    before = snapshot(trained)
    final, _, stats = fcu_lib.fcu(
        fed.model_fn, fed.init_state(), trained, {k: fed.clients[k] for k in [client, *remaining]}, client, cfg
    )
    after = snapshot(final)
    new = {
        **manifest,
        "created": weights_io.now(),
        "unlearned_clients": sorted([*manifest.get("unlearned_clients", []), client]),
        "previous_sha256": manifest["sha256"],
        "held_out": {"test": after["test"]},
        **calibrate(fed, final),
    }
    target = task_slot(task).target(out)
    record = {
        "event": "client-unlearning",
        "task": task,
        "client": client,
        "requested_by": requested_by or getpass.getuser(),
        "model_before": manifest["sha256"],
        "method": "FCU",
        "config": dataclasses.asdict(cfg),
        "seconds": round(stats["seconds"], 1),
        "metrics_before": before,
        "metrics_after": after,
        "weights": weights_io.portable(target),
    }

    def log(staged: dict) -> None:  # the record names the new model before the manifest puts it in use
        record.update(when=staged["created"], model_after=staged["sha256"])
        record["audit_log"] = str(append_audit(record))

    save_classifier(_model(fed, final), target, new, load_ood(task, folder), before_commit=log)  # trunk unchanged
    return record
