"""The U-Net: shapes on odd sizes, every norm, deep supervision, and the nnU-Net-sized setting."""

from __future__ import annotations

import pytest
import torch

from brats import MODEL_REGIONS
from model import UNet3D, widths
from params import ModelParams


@pytest.mark.parametrize("norm", ["instance", "group", "batch"])
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_output_shape_on_odd_sizes(norm, depth):
    model = UNet3D(ModelParams(base_width=4, max_width=16, depth=depth, norm=norm, deep_supervision=False))
    out = model(torch.randn(2, 4, 33, 34, 35))
    assert out.shape == (2, len(MODEL_REGIONS), 33, 34, 35)


def test_deep_supervision_outputs_only_while_training():
    model = UNet3D(ModelParams(base_width=4, max_width=16, depth=4, norm="instance", deep_supervision=True))
    outs = model(torch.randn(1, 4, 33, 34, 35))
    assert [tuple(o.shape[2:]) for o in outs] == [(33, 34, 35), (17, 17, 18), (9, 9, 9)]
    model.eval()
    assert model(torch.randn(1, 4, 33, 34, 35)).shape == (1, 4, 33, 34, 35)


def test_widths_double_up_to_the_cap():
    assert widths(ModelParams(32, 320, 6, "instance", True)) == [32, 64, 128, 256, 320, 320]
    assert widths(ModelParams(8, 64, 4, "instance", True)) == [8, 16, 32, 64]


def test_nnunet_sized_setting_has_nnunets_parameter_count():
    # nnU-Net's PlainConvUNet at 32->320, 6 stages has 31.2 M parameters (../shared/PERF.md); ours has
    # the same convolutions without conv biases (the norm removes them), so it is within 1 %.
    model = UNet3D(ModelParams(32, 320, 6, "instance", True))
    n = sum(p.numel() for p in model.parameters())
    assert 30.9e6 < n < 31.3e6, n


def test_gradients_reach_every_parameter():
    model = UNet3D(ModelParams(base_width=4, max_width=16, depth=3, norm="instance", deep_supervision=True))
    outs = model(torch.randn(1, 4, 16, 16, 16))
    sum(o.sum() for o in outs).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_channels_last_gives_the_plain_layouts_outputs_and_gradients():
    """The CPU's fast layout (runtime.memory_format) computes what the contiguous one does."""
    from runtime import memory_format
    assert memory_format("cpu") == torch.channels_last_3d and memory_format("cuda") == torch.contiguous_format
    config = ModelParams(base_width=4, max_width=16, depth=3, norm="instance", deep_supervision=True)
    torch.manual_seed(0)
    plain = UNet3D(config)
    fast = UNet3D(config).to(memory_format=torch.channels_last_3d)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 20, 24, 16)
    outs_plain = plain(x)
    outs_fast = fast(x.to(memory_format=torch.channels_last_3d))
    for a, b in zip(outs_plain, outs_fast):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    sum(o.square().sum() for o in outs_plain).backward()
    sum(o.square().sum() for o in outs_fast).backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5 * p.grad.abs().max().item(), msg=name)


def test_channels_last_instance_norm_equals_pytorchs_kernel():
    """model.InstanceNorm3d's channels-last path against torch.nn.functional.instance_norm: values and
    the gradients of the input, weight and bias."""
    from model import InstanceNorm3d
    torch.manual_seed(1)
    norm = InstanceNorm3d(6, affine=True)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-1.0, 1.0)
    x = (torch.randn(2, 6, 9, 7, 5) * 3 + 2).to(memory_format=torch.channels_last_3d).requires_grad_()
    y = norm(x)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)       # stays in the layout
    ref_x = x.detach().contiguous().requires_grad_()
    w, b = norm.weight.detach().clone().requires_grad_(), norm.bias.detach().clone().requires_grad_()
    ref = torch.nn.functional.instance_norm(ref_x, weight=w, bias=b, eps=norm.eps)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.weight.grad, w.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.bias.grad, b.grad, rtol=1e-4, atol=1e-4)
