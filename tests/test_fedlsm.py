"""FedLSM mechanics (research/tool_methods.md §2.7's test list and more), on a tiny MLP over synthetic features."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from macro.federated.engine import ClientResult, fedavg
from macro.federated.fedlsm import (
    VARIANTS,
    ClientData,
    FedLSMConfig,
    awpa,
    class_weights,
    evaluate,
    fedlsm_client,
    label_loss,
    mean_auc,
    mix,
    pseudo_labels,
    run,
    tiers,
    uncertainty,
)
from macro.metrics import roc_auc

C, D = 6, 16


pytestmark = pytest.mark.usefixtures("one_thread")


class MLP(nn.Module):
    def __init__(self, d: int = D, hidden: int = 32, classes: int = C):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.head = nn.Linear(hidden, classes)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        f = self.body(x)
        return f, self.head(f)


def _client(
    x: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, multi_label: bool = True, seed: int = 0
) -> ClientData:
    noise = torch.Generator().manual_seed(seed)
    return ClientData(
        weak=lambda i: x[i],
        strong=lambda i: x[i] + 0.1 * torch.randn(len(i), x.shape[1], generator=noise),
        labels=labels * mask,
        label_mask=mask,
        multi_label=multi_label,
    )


def _mismatch_problem(seed: int = 0, n: int = 300, clients: int = 3, prevalence: float = 0.25):
    """3 clients with disjoint 2-class label sets over 6 findings; Gaussian features with one direction per finding
    and a per-client offset (a site shift), so reading "unlabelled" as "negative" teaches site cues."""
    g = torch.Generator().manual_seed(seed)
    directions = nn.functional.normalize(torch.randn(C, D, generator=g), dim=1) * 2.5
    offsets = torch.randn(clients, D, generator=g) * 1.5 / D**0.5

    def sample(m, site=None):
        y = (torch.rand(m, C, generator=g) < prevalence).float()
        shift = offsets[site] if site is not None else offsets[torch.randint(clients, (m,), generator=g)]
        return y @ directions + torch.randn(m, D, generator=g) + shift, y

    data = {}
    for k in range(clients):
        x, y = sample(n, k)
        mask = torch.zeros(C)
        mask[2 * k : 2 * k + 2] = 1
        data[k] = _client(x, y, mask, seed=100 + k)
    x_test, y_test = sample(1000)
    return data, _client(x_test, y_test, torch.ones(C))


def _result(client: int, state, n: int, edd) -> ClientResult:
    return ClientResult(client, state, n, {"edd": list(map(float, edd))})


def _states(k: int = 3):
    out = []
    for i in range(k):
        torch.manual_seed(i)
        m = MLP()
        m.body[1].running_mean.normal_()
        out.append({key: v.clone() for key, v in m.state_dict().items()})
    return out


def test_awpa_with_uniform_or_size_proportional_edd_is_fedavg():
    states = _states()
    equal = [_result(k, s, 50, [3.0] * C) for k, s in enumerate(states)]
    for key, value in awpa({}, equal).items():
        assert torch.allclose(value.float(), fedavg({}, equal)[key].float(), atol=1e-6), key
    sizes = [10, 30, 60]
    proportional = [_result(k, s, n, [n / 10] * C) for k, (s, n) in enumerate(zip(states, sizes))]
    for key, value in awpa({}, proportional).items():
        assert torch.allclose(value.float(), fedavg({}, proportional)[key].float(), atol=1e-6), key
    skewed = [_result(k, s, n, np.arange(C) * k) for k, (s, n) in enumerate(zip(states, sizes))]
    merged, plain = awpa({}, skewed), fedavg({}, skewed)
    assert not torch.allclose(merged["head.weight"], plain["head.weight"])
    for key in plain:
        if not key.startswith("head."):
            assert torch.equal(merged[key], plain[key]), key


def test_awpa_class_seen_by_one_client_takes_its_proxy_and_unseen_class_keeps_fedavg():
    states = _states()
    edd = np.ones((3, C))
    edd[:, 2] = [0, 7, 0]
    edd[:, 4] = 0
    results = [_result(k, s, 40 + k, edd[k]) for k, s in enumerate(states)]
    merged, plain = awpa({}, results), fedavg({}, results)
    assert torch.equal(merged["head.weight"][2], states[1]["head.weight"][2])
    assert torch.equal(merged["head.bias"][2], states[1]["head.bias"][2])
    assert torch.allclose(merged["head.weight"][4], plain["head.weight"][4])
    assert torch.isfinite(merged["head.weight"]).all()


def _round(cfg: FedLSMConfig, data: ClientData):
    """One client round from a model whose unlabelled classes' head rows are zero (teacher q = 0.5, ignored)."""
    torch.manual_seed(0)
    model = MLP()
    with torch.no_grad():
        model.head.weight[data.label_mask == 0] = 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fedlsm_client(MLP, {0: data}, cfg)(before, 0, 0)
    return before, result


def test_erased_classes_get_no_gradient_unless_pseudo_labelled():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, D, generator=g), (torch.rand(64, C, generator=g) < 0.3).float()
    mask = torch.tensor([1.0, 1, 0, 0, 1, 0])
    data = _client(x, y, mask)
    logits = torch.randn(64, C, requires_grad=True)
    target, m = pseudo_labels(torch.full((64, C), 0.5), data.labels, mask, True, 0.85, 0.01)
    label_loss(logits, target, m, True, class_weights([data])).backward()
    assert (logits.grad[:, mask == 0] == 0).all()
    assert (logits.grad[:, mask == 1] != 0).any()

    base = dict(local_iters=3, batch_pseudo=28, batch_mix=4, lr=1e-2, weight_decay=0.0)
    for name in ("fedlsm", "fedavg_labelled"):
        before, result = _round(FedLSMConfig.variant(name, **base), data)
        assert torch.equal(result.state["head.weight"][mask == 0], before["head.weight"][mask == 0]), name
        assert not torch.equal(result.state["head.weight"][mask == 1], before["head.weight"][mask == 1]), name
    before, result = _round(FedLSMConfig.variant("fedavg", **base), data)  # missing-as-negative does push them
    assert not torch.equal(result.state["head.weight"][mask == 0], before["head.weight"][mask == 0])


def test_uncertainty_counts_only_unlabelled_classes():
    mask = torch.tensor([1.0, 1, 0, 0])
    p = torch.tensor([[0.5, 0.5, 0.999, 0.001], [0.999, 0.001, 0.5, 0.5]])
    u = uncertainty(p, mask, multi_label=True)
    assert u[0] < 0.01
    assert u[1] > 0.3
    p2 = p.clone()
    p2[:, :2] = torch.tensor([0.2, 0.9])
    assert torch.allclose(uncertainty(p2, mask, True), u)
    soft = torch.softmax(torch.randn(5, 4), 1)
    assert torch.allclose(uncertainty(soft, mask, False), -(soft * soft.log()).sum(1))


def test_tiers_are_disjoint_and_sized():
    unc = torch.arange(100.0)[torch.randperm(100, generator=torch.Generator().manual_seed(0))]
    uncertain, confident, pseudo = tiers(unc, 0.05, 0.2)
    assert len(uncertain) == 5
    assert len(confident) == 20
    assert len(pseudo) == 95
    assert unc[uncertain].min() > unc[pseudo].max() - 1e-06
    assert set(uncertain).isdisjoint(pseudo)
    assert unc[confident].max() < unc[np.setdiff1d(np.arange(100), confident)].min()
    u, c, p = tiers(unc, 7, 30)
    assert (len(u), len(c), len(p)) == (7, 30, 93)


def test_pseudo_label_thresholds():
    mask = torch.tensor([1.0, 0, 0, 0])
    q = torch.tensor([[0.1, 0.90, 0.005, 0.5], [0.9, 0.85, 0.01, 0.0101]])
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]])
    target, m = pseudo_labels(q, labels, mask, True, tau_pos=0.85, tau_neg=0.01)
    assert torch.equal(target, torch.tensor([[1.0, 1, 0, 0], [0, 1, 0, 0]]))
    assert torch.equal(m, torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 0]]))

    q = torch.tensor([[0.96, 0.02, 0.02], [0.2, 0.7, 0.1], [0.01, 0.01, 0.98]])
    labels = torch.tensor([[0.0, 0, 0], [0, 0, 0], [1, 0, 0]])
    target, m = pseudo_labels(q, labels, torch.tensor([1.0, 0, 0]), False, tau_pos=0.95, tau_neg=0.01)
    assert torch.equal(target, torch.tensor([[1.0, 0, 0], [0, 0, 0], [1, 0, 0]]))
    assert torch.equal(m[:, 0], torch.tensor([1.0, 0, 1]))


def test_ude_mixup_targets_and_masks():
    mask = torch.tensor([1.0, 0, 0])
    labels = torch.tensor([[1.0, 0, 0], [0, 0, 0]])
    t_u, m_u = pseudo_labels(torch.tensor([[0.5, 0.75, 0.3], [0.5, 0.004, 0.6]]), labels, mask, True, 0.70, 0.005)
    t_c, m_c = pseudo_labels(
        torch.tensor([[0.5, 0.90, 0.005], [0.5, 0.005, 0.5]]), labels.flip(0), mask, True, 0.85, 0.01
    )
    x_u, x_c = torch.ones(2, 4), torch.zeros(2, 4)
    x, t, m = mix(x_u, x_c, t_u, m_u, t_c, m_c, 0.3)
    assert torch.allclose(x, torch.full((2, 4), 0.3))
    assert torch.allclose(t, torch.tensor([[0.3, 1.0, 0.0], [0.7, 0.0, 0.0]]))
    assert torch.equal(m, torch.tensor([[1.0, 1, 0], [1, 1, 0]]))  # class 2: u is ignored (0.3 / 0.6) on both rows


def test_class_weights_from_partial_labels():
    a = _client(
        torch.zeros(4, D), torch.tensor([[1.0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]), torch.tensor([1.0, 1, 0])
    )
    b = _client(torch.zeros(3, D), torch.tensor([[1.0, 0, 1], [0, 0, 0], [0, 0, 0]]), torch.tensor([1.0, 0, 1]))
    w = class_weights([a, b])
    assert torch.allclose(w, torch.tensor([5 / 2, 2 / 2, 2 / 1]))  # class 2 counts only b, where it is labelled


def test_auc_matches_pairwise_count():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 200) / 5.0  # many ties
    positive = rng.random(200) < 0.3
    pos, neg = scores[positive], scores[~positive]
    brute = np.mean([(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)])
    assert roc_auc(scores, positive) == pytest.approx(brute, abs=1e-12)
    assert np.isnan(roc_auc(scores, np.zeros(200)))

    s = rng.random((50, 3))
    t = (rng.random((50, 3)) < 0.4).astype(float)
    t[:, 1] = 0
    mean, per_class = mean_auc(s, t)
    assert per_class[1] is None
    assert mean == pytest.approx((per_class[0] + per_class[2]) / 2)
    ids = rng.integers(0, 3, 50)
    assert mean_auc(s, ids) == mean_auc(s, np.eye(3)[ids])


def test_edd_counts_true_positives_and_optimizer_state_persists():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, D, generator=g), (torch.rand(32, C, generator=g) < 0.3).float()
    data = {0: _client(x, y, torch.tensor([1.0, 1, 1, 0, 0, 0]))}
    cfg = FedLSMConfig.variant("fedavg_labelled", local_iters=2, batch_pseudo=28, batch_mix=4)
    states: dict = {}
    fn = fedlsm_client(MLP, data, cfg, optimizer_states=states)
    torch.manual_seed(0)
    result = fn(MLP().state_dict(), 0, 0)
    assert result.stats["edd"] == (2 * data[0].labels.sum(0)).tolist()  # each iteration's batch is the whole client
    first = next(iter(states[0]["state"].values()))["step"].item()
    fn(result.state, 0, 1)
    assert next(iter(states[0]["state"].values()))["step"].item() == first + 2


def test_variants_switch_components():
    assert set(VARIANTS) == {"fedavg", "fedavg_labelled", "pl", "pl_ude", "fedlsm"}
    full = FedLSMConfig.variant("fedlsm", rounds=3)
    assert full.pseudo_label
    assert full.ude
    assert full.awpa
    assert full.rounds == 3
    assert FedLSMConfig.variant("fedavg").missing_as_negative
    assert FedLSMConfig().pos_threshold(True) == 0.85
    assert FedLSMConfig().pos_threshold(False) == 0.95
    with pytest.raises(ValueError):
        FedLSMConfig.variant("fedprox")


def test_fedlsm_beats_missing_as_negative_fedavg_under_label_set_mismatch():
    data, test = _mismatch_problem()
    auc = {}
    for name in ("fedavg", "fedavg_labelled", "fedlsm"):
        cfg = FedLSMConfig.variant(name, rounds=6, local_iters=10, batch_pseudo=28, batch_mix=4, lr=1e-2)
        model = MLP()
        model.load_state_dict(run(MLP, data, cfg))
        auc[name] = evaluate(model, test)["auc"]
    assert auc["fedlsm"] > auc["fedavg"] + 2, auc
    assert auc["fedlsm"] > auc["fedavg_labelled"], auc


def test_single_label_runs_and_its_two_fedavg_baselines_coincide():
    def problem():
        """Fresh clients each time: their strong views draw from per-client noise generators."""
        g = torch.Generator().manual_seed(3)
        centres = torch.randn(4, D, generator=g) * 2
        data = {}
        for k in range(2):
            ids = torch.randint(4, (120,), generator=g)
            mask = torch.zeros(4)
            mask[2 * k : 2 * k + 2] = 1
            data[k] = _client(
                centres[ids] + torch.randn(120, D, generator=g), F.one_hot(ids, 4).float(), mask, False, seed=k
            )
        ids = torch.randint(4, (400,), generator=g)
        return data, _client(
            centres[ids] + torch.randn(400, D, generator=g), F.one_hot(ids, 4).float(), torch.ones(4), False
        )

    base = dict(rounds=3, local_iters=5, batch_pseudo=28, batch_mix=4, lr=1e-2)
    make = lambda: MLP(classes=4)  # noqa: E731
    states = {
        name: run(make, problem()[0], FedLSMConfig.variant(name, **base))
        for name in ("fedavg", "fedavg_labelled", "fedlsm")
    }
    assert all(torch.equal(states["fedavg"][k], states["fedavg_labelled"][k]) for k in states["fedavg"])
    model = make()
    model.load_state_dict(states["fedlsm"])
    assert evaluate(model, problem()[1])["auc"] > 90
