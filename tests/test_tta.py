"""Test-time adaptation mechanics (VISTA's unit-test list in research/tool_methods.md §1.7), on a tiny UNet."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from macro.tools.segmentation.model import SegNetConfig, build_unet
from macro.tools.segmentation.tta import (
    Adapter,
    TTAConfig,
    bn_affine_params,
    dilate,
    hierarchy_fix,
    lowfreq_swap,
    patch_swap,
    quantile,
)

TINY = SegNetConfig(channels=(4, 8), strides=(2,), num_res_units=1, grid=(16, 16, 16))


def _x(seed=0):
    return torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_lowfreq_swap_identities():
    x = _x()
    assert torch.allclose(lowfreq_swap(x, 0, 1, 0.0), x)
    once = lowfreq_swap(x, 0, 2, 0.25)
    assert not torch.allclose(once, x)
    assert torch.allclose(lowfreq_swap(once, 0, 2, 0.25), x, atol=1e-4)
    assert torch.equal(once[:, [1, 3]], x[:, [1, 3]])
    phase = lambda v: torch.angle(torch.fft.fftn(v, dim=(-3, -2, -1)))  # noqa: E731
    spec_mag = torch.fft.fftn(x[:, 0], dim=(-3, -2, -1)).abs() > 1e-3
    assert torch.allclose(torch.cos(phase(once[:, 0]) - phase(x[:, 0]))[spec_mag], torch.ones(()), atol=1e-3)


def test_patch_swap_only_inside_the_uncertain_region_and_is_an_involution():
    x = _x()
    p = torch.full((1, 3, 16, 16, 16), 0.99)
    p[..., 4:6, 4:6, 4:6] = 0.5
    swapped = patch_swap(x, p, 1, 3, q=0.95, kernel=3)
    changed = (swapped != x).any(dim=1)[0]
    assert changed[5, 5, 5]
    assert not changed[12, 12, 12]
    assert torch.equal(patch_swap(swapped, p, 1, 3, 0.95, 3), x)


def test_fast_quantile_and_dilation_match_the_plain_torch_ops():
    values = torch.rand(1, 1, 9, 10, 11, generator=torch.Generator().manual_seed(2))
    for q in (0.0, 0.5, 0.95, 1.0):
        assert torch.allclose(quantile(values, q), torch.quantile(values.flatten(), q))
    mask = values > 0.97
    assert torch.equal(dilate(mask, 5), F.max_pool3d(mask.float(), 5, stride=1, padding=2) > 0)


def test_hierarchy_fix_nests_regions():
    p = torch.rand(1, 3, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    fixed = hierarchy_fix(p) >= 0.5
    assert (fixed[:, 0] <= fixed[:, 1]).all()
    assert (fixed[:, 1] <= fixed[:, 2]).all()


def _adapted(method: str):
    torch.manual_seed(0)
    model = build_unet(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = Adapter(model, TTAConfig(method=method, steps=3, lr=1e-2, dilation=3))
    probs, stats = adapter(_x(1))
    return model, before, adapter, probs, stats


def test_only_bn_affine_parameters_change():
    for method in ("tent", "vista"):
        model, before, _, probs, stats = _adapted(method)
        bn = {id(p) for p in bn_affine_params(model)}
        names_bn = {n for n, p in model.named_parameters() if id(p) in bn}
        for name, param in model.named_parameters():
            assert torch.equal(param, before[name]) != (name in names_bn), (method, name)
        assert probs.shape == (1, 3, 16, 16, 16)
        assert stats["steps"] == 3


def test_teacher_is_the_ema_of_the_student():
    torch.manual_seed(0)
    model = build_unet(TINY)
    adapter = Adapter(model, TTAConfig(method="vista", steps=1, lr=1e-2, dilation=3, ema=0.9))
    source = {n: p.clone() for n, p in model.named_parameters()}
    adapter(_x(2))
    for (name, t), s in zip(adapter.teacher.named_parameters(), model.parameters()):
        assert torch.allclose(t, 0.9 * source[name] + 0.1 * s, atol=1e-6), name


def test_stream_is_continual_unless_reset_or_episodic():
    model = build_unet(TINY)
    adapter = Adapter(model, TTAConfig(method="tent", steps=2, lr=1e-2))
    adapter(_x(1))
    after_one = [p.clone() for p in bn_affine_params(model)]
    adapter(_x(2))
    assert any(not torch.equal(a, b) for a, b in zip(after_one, bn_affine_params(model)))
    adapter.reset()
    assert all(torch.equal(p, s) for p, s in zip(model.state_dict().values(), adapter.source_state.values()))
    none = Adapter(build_unet(TINY), TTAConfig(method="none"))
    _, stats = none(_x(3))
    assert stats["steps"] == 0


def test_batch_statistics_normalise_with_the_input_and_leave_running_stats_alone():
    from macro.tools.segmentation.tta import batch_statistics

    net = torch.nn.Sequential(torch.nn.Conv3d(2, 3, 1), torch.nn.BatchNorm3d(3)).eval()
    net[1].running_mean.fill_(5.0)
    x = torch.randn(1, 2, 4, 4, 4) * 3 + 1
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad(), batch_statistics(net):
        out = net(x)
    assert torch.allclose(out.mean(dim=(0, 2, 3, 4)), net[1].bias, atol=1e-5)
    assert all((torch.equal(before[k], v) for k, v in net.state_dict().items()))
    assert not net.training
    assert not net[1].training
    with torch.no_grad(), batch_statistics(net, enabled=False):
        assert not torch.allclose(net(x).mean(dim=(0, 2, 3, 4)), net[1].bias, atol=1e-3)
