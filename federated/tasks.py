"""Federated tasks end to end: labelled images -> sites -> cached backbone views -> FedLSM / FCU -> shipped weights.

Why one module: ``macro fl train``, ``macro fl unlearn`` and ``macro eval federated`` must build the *same*
federation (which images each site holds, which classes it labels), or an unlearning request would not name the
data that trained the model. A federation is fully determined by (task, n_images, seed, split), recorded in the
weights manifest, and rebuilt from it.

Tasks (sites and local iterations as in the papers' runs; images and rounds scaled for 2 CPU cores):

====  ============  ======================  =====  ============  =============================================
task  dataset       classes                 sites  local iters   split
====  ============  ======================  =====  ============  =============================================
derm  derm-phantom  7 ISIC 2018, softmax    5      30            ``labelset``: equal shards, each site labels
cxr   cxr-phantom   8 CXR14 findings,       8      10            2-3 classes (FedLSM's rule); ``dirichlet``:
                    sigmoid                                      Dirichlet(1.0) label skew, full labels (FCU)
====  ============  ======================  =====  ============  =============================================

Images are split 70/10/20 into train/val/test; the sites share the train part; val fits the calibration
temperature; test gives the reported AUC. A real dataset (ISIC 2018 CSV, ChestX-ray14 ``Data_Entry_2017.csv``)
can stand in for the phantom through :func:`macro.data.labelled.read_isic2018` / ``read_chestxray14``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from macro import imagenet
from macro.data.labelled import (
    LabelledSet,
    dirichlet_split,
    erase_labels,
    label_set_split,
    read_phantom,
    shard,
    train_val_test,
)
from macro.errors import CaseError
from macro.federated.fedlsm import ClientData
from macro.tools.classification.model import IMAGE_SIZE, Classifier, FeatureBank


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str
    n_images: int
    n_clients: int
    local_iters: int
    per_client: int = 3


TASKS = {
    "derm": Task("derm", "derm-phantom", n_images=3000, n_clients=5, local_iters=30),
    "cxr": Task("cxr", "cxr-phantom", n_images=4000, n_clients=8, local_iters=10),
}


@dataclass
class Federation:
    """Everything a run needs: per-site data views, held-out sets, and how to make a fresh model."""

    task: Task
    clients: dict[int, ClientData]
    val: ClientData
    test: ClientData
    client_images: dict[int, np.ndarray]  # indices into the labelled set, per site
    label_sets: dict[int, list[int]]
    template: Classifier
    bank: FeatureBank
    labelled: LabelledSet
    recipe: dict = field(default_factory=dict)
    held_out: dict[str, np.ndarray] = field(default_factory=dict)  # "val" and "test" indices into the labelled set

    @property
    def classes(self) -> tuple[str, ...]:
        return self.labelled.classes

    @property
    def multi_label(self) -> bool:
        return self.labelled.multi_label

    def model_fn(self) -> Classifier:
        return copy.deepcopy(self.template)

    def init_state(self) -> dict[str, torch.Tensor]:
        """The pre-federation starting point: ImageNet top, fresh seeded head (also FCU's downgraded model)."""
        return {k: v.detach().clone() for k, v in self.template.state_dict().items()}

    def site_eval(self, clients) -> ClientData:
        """The training images of ``clients`` with their full labels, on the plain view (FCU's forgotten and
        remembered sets)."""
        rows = np.concatenate([self.client_images[k] for k in clients])
        return _client_data(
            self.bank,
            rows,
            self.labelled.labels[rows],
            np.ones(len(self.classes), np.float32),
            self.multi_label,
            fixed=True,
        )


def dataset_folder(data_root: Path, task: Task, n_images: int, seed: int) -> Path:
    """The task's phantom images, built on first use (an unfinished folder has no labels.csv and is rebuilt)."""
    from macro.data import make

    folder = Path(data_root) / task.dataset / f"seed{seed}-n{n_images}"
    if not (folder / "labels.csv").is_file():
        make(task.dataset, folder, n=n_images, seed=seed)
    return folder


def _view(bank: FeatureBank, rows: np.ndarray, fixed: bool) -> tuple[Callable, Callable]:
    """View functions over a subset of the bank: local indices -> trunk maps of those images."""
    rows = np.asarray(rows)
    if fixed:
        return (lambda idx: bank.view(0, rows[idx])), (lambda idx: bank.view(0, rows[idx]))
    return (lambda idx: bank.weak(rows[idx])), (lambda idx: bank.strong(rows[idx]))


def _client_data(
    bank: FeatureBank, rows: np.ndarray, labels: np.ndarray, mask: np.ndarray, multi_label: bool, fixed: bool = False
) -> ClientData:
    weak, strong = _view(bank, rows, fixed)
    return ClientData(weak, strong, torch.from_numpy(labels), torch.from_numpy(mask), multi_label)


def federation(
    task_name: str,
    data_root: Path,
    split: str = "labelset",
    n_images: int | None = None,
    seed: int = 0,
    labelled: LabelledSet | None = None,
    n_strong: int = 2,
    progress: bool = False,
) -> Federation:
    """Build a task's federation. ``labelled`` replaces the phantom with a real dataset."""
    from tqdm import tqdm

    if task_name not in TASKS:
        raise CaseError(None, f"unknown task {task_name!r}; choose one of {', '.join(TASKS)}")
    if split not in ("labelset", "dirichlet"):
        raise CaseError(None, f"unknown split {split!r}; choose labelset or dirichlet")
    task = TASKS[task_name]
    n_images = n_images or task.n_images
    data = labelled if labelled is not None else read_phantom(dataset_folder(data_root, task, n_images, seed))
    if split == "dirichlet" and data.multi_label:
        raise CaseError(None, "the Dirichlet label split needs a single-label task (derm)")
    train, val, test = train_val_test(len(data), seed=seed, groups=data.patient_ids)
    trunk, backbone = imagenet.trunk(), imagenet.backbone()  # both built before seeding: the head's init is the seed's
    torch.manual_seed(seed)
    template = Classifier(len(data.classes), backbone)
    bar = tqdm(
        total=len(data) * (2 + n_strong), desc=f"{task.name}: backbone views", disable=not progress, mininterval=5
    )
    bank = FeatureBank(trunk, _ImageLoader(data), n_strong=n_strong, seed=seed, progress=bar.update)
    bar.close()
    full = np.ones(len(data.classes), dtype=np.float32)
    if split == "labelset":
        parts = [train[p] for p in shard(len(train), task.n_clients, seed)]
        sets = label_set_split(len(data.classes), task.n_clients, task.per_client, seed)
    else:
        parts = [train[p] for p in dirichlet_split(data.labels[train].argmax(1), task.n_clients, alpha=1.0, seed=seed)]
        sets = [list(range(len(data.classes)))] * task.n_clients
    clients, label_sets = {}, {}
    for k, (rows, chosen) in enumerate(zip(parts, sets)):
        erased, mask = (
            erase_labels(data.labels[rows], chosen, data.multi_label)
            if split == "labelset"
            else (data.labels[rows], full)
        )
        clients[k] = _client_data(bank, rows, erased, mask, data.multi_label)
        label_sets[k] = list(chosen)
    recipe = {
        "task": task.name,
        "dataset": task.dataset if labelled is None else "external",
        "n_images": len(data),
        "seed": seed,
        "split": split,
        "n_clients": task.n_clients,
        "image_size": IMAGE_SIZE,
        "n_strong": n_strong,
    }
    return Federation(
        task,
        clients,
        _client_data(bank, val, data.labels[val], full, data.multi_label, fixed=True),
        _client_data(bank, test, data.labels[test], full, data.multi_label, fixed=True),
        dict(enumerate(parts)),
        label_sets,
        template,
        bank,
        data,
        recipe,
        {"val": val, "test": test},
    )


class _ImageLoader:
    """Array-like over a labelled set's images at the network size, loaded lazily in the bank's batches."""

    def __init__(self, data: LabelledSet):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: slice) -> np.ndarray:
        return self.data.load_images(IMAGE_SIZE, np.arange(len(self.data))[item])
