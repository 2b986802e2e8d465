"""Step-CoT networks and losses: graph shapes, the step-by-step memory, the student's chain, KD at T = 2 and CKA."""

from __future__ import annotations

import pytest
import torch

from macro.tools.vqa.losses import ChannelAlignment, cka, kd_loss, masked_ce
from macro.tools.vqa.model import GATLayer, Student, Teacher

CLASSES = (4, 4, 6, 7, 5, 7, 9)


def _teacher(seed: int = 0) -> Teacher:
    torch.manual_seed(seed)
    return Teacher(32, CLASSES, torch.randn(7, 384), hidden=16).eval()


def test_gat_attends_over_all_nodes_with_normalised_weights():
    layer = GATLayer(16, heads=4).eval()
    out, alpha = layer(torch.randn(3, 8, 16), return_attention=True)
    assert out.shape == (3, 8, 16)
    assert alpha.shape == (3, 4, 8, 8)
    assert (
        torch.allclose(alpha.sum(-1), torch.ones(3, 4, 8), atol=1e-6) and (alpha > 0).all()
    )  # fully connected, self-loops


def test_teacher_runs_the_graph_step_by_step_with_a_gru_memory():
    teacher = _teacher()
    trace = {}
    logits, features = teacher(torch.randn(5, 32), trace)
    assert [z.shape for z in logits] == [(5, c) for c in CLASSES]
    assert all((f.shape == (5, 16) for f in features))
    assert len(trace["attention"]) == 7
    assert all((len(step) == 2 and step[0].shape == (5, 4, 8, 8) for step in trace["attention"]))
    memories = torch.stack(trace["memory"])  # (7, B, hidden): written after every step, different each time
    assert memories.shape == (7, 5, 16)
    assert all((not torch.allclose(memories[i], memories[i + 1]) for i in range(6)))
    assert not torch.allclose(memories[0], teacher.memory0.expand(5, -1))


def test_a_teachers_earlier_answer_reaches_later_steps_only_through_the_chain():
    teacher, image = _teacher(), torch.randn(4, 32)
    before = teacher(image)[0]
    with torch.no_grad():
        teacher.cls[2].weight.add_(torch.randn_like(teacher.cls[2].weight))  # change step 3's answer only
    after = teacher(image)[0]
    assert all(torch.allclose(before[k], after[k]) for k in range(2))  # earlier steps do not see it
    assert all(not torch.allclose(before[k], after[k]) for k in range(3, 7))  # every later step does, via the memory
    with torch.no_grad():
        teacher.gru.weight_ih.zero_()  # cut the answer's way into the memory
        teacher.answer_in.weight.zero_()
        teacher.answer_in.bias.zero_()
    cut = teacher(image)[0]
    with torch.no_grad():
        teacher.cls[2].weight.mul_(3.0)
    assert torch.allclose(cut[5], teacher(image)[0][5], atol=1e-6)


def test_student_is_image_only_and_chains_its_heads():
    torch.manual_seed(0)
    student = Student(32, CLASSES, hidden=16).eval()
    image = torch.randn(4, 32)
    logits, feature = student(image)
    assert [z.shape for z in logits] == [(4, c) for c in CLASSES]
    assert feature.shape == (4, 16)
    with torch.no_grad():
        student.heads[0].weight.add_(1.0)
    changed = student(image)[0]
    assert not torch.allclose(logits[1], changed[1])
    assert torch.allclose(feature, student(image)[1])


def test_kd_is_t_squared_kl_at_t2_over_valid_rows():
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    valid = torch.tensor([True, True, False, True, True, False])
    p_t, p_s = torch.softmax(t[valid] / 2, -1), torch.softmax(s[valid] / 2, -1)
    manual = 4.0 * (p_t * (p_t.log() - p_s.log())).sum(-1).mean()
    assert torch.allclose(kd_loss(s, t, valid), manual, atol=1e-6)
    assert kd_loss(t, t, valid).abs() < 1e-06
    assert kd_loss(s, t, torch.zeros(6, dtype=torch.bool)) == 0


def test_masked_ce_ignores_invalid_steps():
    z, y = torch.randn(4, 3), torch.tensor([0, -1, 2, -1])
    assert torch.allclose(masked_ce(z, y), torch.nn.functional.cross_entropy(z[[0, 2]], y[[0, 2]]))
    assert masked_ce(z, torch.full((4,), -1)) == 0


def test_cka_measures_shared_geometry():
    torch.manual_seed(1)
    a = torch.randn(20, 8)
    rotation = torch.linalg.qr(torch.randn(8, 8))[0]
    assert torch.allclose(cka(a, a), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(cka(a, 3 * a @ rotation), torch.tensor(1.0), atol=1e-4)  # invariant to scale and rotation
    assert cka(a, torch.randn(20, 8)) < 0.6


def test_channel_alignment_weights_the_kl_by_cka_and_trains_only_p_s():
    torch.manual_seed(2)
    align = ChannelAlignment(16, 12, proj_dim=8)
    f_t, f_s = torch.randn(10, 16), torch.randn(10, 12, requires_grad=True)
    valid = torch.ones(10, dtype=torch.bool)
    loss = align(f_t, f_s, valid)
    loss.backward()
    assert loss > 0
    assert f_s.grad is not None
    assert align.p_s.weight.grad is not None
    assert align.p_t.weight.grad is None
    assert not align.p_t.weight.requires_grad
    k_t = torch.softmax(align.p_t(f_t) / 2, -1)
    k_s = torch.softmax(align.p_s(f_s) / 2, -1)
    expected = cka(k_t, k_s) * (k_t * (k_t.log() - k_s.log())).sum(-1).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert align(f_t, f_s, torch.tensor([True] + [False] * 9)) == 0  # needs two valid rows


def test_chain_prior_decoding_answers_with_a_chain_seen_in_training():
    import numpy as np

    from macro.eval.vqa import structured_decoding

    train = np.array([[0, 0]] * 5 + [[1, 1]] * 5 + [[-1, 1]])  # the invalid row is left out of the prior
    probs = [np.array([[0.6, 0.4], [0.9, 0.1]]), np.array([[0.3, 0.7], [0.6, 0.4]])]
    decoded = structured_decoding(probs, train)
    for marginal in decoded:
        assert np.allclose(marginal.sum(1), 1.0)
    # image 0: the steps disagree on their own; the stronger second step wins both under the prior (1, 1)
    assert [int(m[0].argmax()) for m in decoded] == [1, 1]
    assert [int(m[1].argmax()) for m in decoded] == [0, 0]
    assert structured_decoding(probs, np.full((3, 2), -1)) is None


@pytest.mark.slow
def test_eval_over_two_seeds_reports_intervals_and_paired_differences(tmp_path):
    from macro.eval.vqa import evaluate, markdown

    report = evaluate(tmp_path, quick=True, seeds=(0, 1), progress=False, log=lambda *_: None, n_images=150)
    student = report["over_seeds"]["methods.student.mean_step_acc"]
    baseline = report["over_seeds"]["methods.baseline.mean_step_acc"]
    assert student["seeds"] == 2 and student["ci"][0] <= student["mean"] <= student["ci"][1]
    assert report["methods"]["student"]["mean_step_acc"] == pytest.approx(student["mean"])
    gap = report["differences"]["student - baseline: mean step acc"]
    assert gap["per_seed"] == pytest.approx([s - b for s, b in zip(student["per_seed"], baseline["per_seed"])])
    assert report["provenance"]["torch_threads"] == 1 and "seed" not in report["protocol"]
    assert "student - baseline: mean step acc" in markdown(report)
