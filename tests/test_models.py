"""Tests of unroll.models: parameter counts, shapes, forward passes against dense references,
complex MRI data, gradients and short trainings."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import central_fd  # the one finite-difference helper (tests/helpers.py)
from torch import nn

from unroll import tree
from unroll.models import (
    DnCNN,
    MoDL,
    PDNet,
    PDNet_DualBlock,
    PDNet_PrimalBlock,
    SensitivityModel,
    VarNet,
)
from unroll.models._utils import from_channels, to_channels
from unroll.models.varnet import replace_leaves

DT = torch.float64
CDT = torch.complex128


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def conv_count(cin: int, cout: int, bias: bool = True) -> int:
    return 9 * cin * cout + (cout if bias else 0)


# --------------------------------------------------------------------------- local physics
def fft2c(x):
    """Centred orthonormal 2-D FFT (written here independently of unroll)."""
    return torch.fft.fftshift(
        torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)
    )


def ifft2c(k):
    return torch.fft.fftshift(
        torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)
    )


class LocalMRI:
    """Tiny multi-coil Cartesian MRI, ``A x = M ⊙ F(S x)`` (centred orthonormal FFT), written
    here independently of unroll.physics. Without coil maps it is single-coil ``M ⊙ F x``."""

    def __init__(self, mask: torch.Tensor, coil_maps: torch.Tensor | None = None):
        self.mask = mask
        self.coil_maps = coil_maps

    def A(self, x):  # noqa: N802
        if self.coil_maps is None:
            return self.mask * fft2c(x)
        s = self.coil_maps if self.coil_maps.dim() == 4 else self.coil_maps[None]
        return self.mask * fft2c(s * x[:, None])

    def A_adjoint(self, y):  # noqa: N802
        if self.coil_maps is None:
            return ifft2c(self.mask * y)
        s = self.coil_maps if self.coil_maps.dim() == 4 else self.coil_maps[None]
        return (s.conj() * ifft2c(self.mask * y)).sum(1)

    def prox_l2(self, z, y, gamma):
        if self.coil_maps is not None:
            raise NotImplementedError
        k = (self.mask * y + fft2c(z) / gamma) / (self.mask + 1 / gamma)
        return ifft2c(k)


tree.register(
    LocalMRI,
    lambda p: ((p.mask, p.coil_maps), None),
    lambda aux, ch: LocalMRI(*ch),
)


class Denoise:
    """Identity operator on real images, ``prox_l2`` in closed form."""

    def A(self, x):  # noqa: N802
        return x

    def A_adjoint(self, y):  # noqa: N802
        return y

    def prox_l2(self, z, y, gamma):
        return (y + z / gamma) / (1 + 1 / gamma)


def dense(op, shape, dtype=CDT):
    """Dense matrix of a linear map on tensors of ``shape`` (column j = op(e_j))."""
    n = math.prod(shape)
    eye = torch.eye(n, dtype=dtype).reshape(n, *shape)
    return torch.stack([op(e[None])[0].reshape(-1) for e in eye], dim=1)


def mri_problem(h=8, coils=3, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, h, h, dtype=CDT, generator=g)
    cols = (torch.rand(h, generator=g) < 0.4).to(DT)  # Cartesian: sampled columns
    cols[h // 2 - 1 : h // 2 + 1] = 1.0
    mask = cols.expand(h, h).clone()
    maps = torch.randn(coils, h, h, dtype=CDT, generator=g)
    maps = maps / maps.abs().square().sum(0, keepdim=True).sqrt()
    physics = LocalMRI(mask, maps if coils else None)
    return x, physics, physics.A(x)


# --------------------------------------------------------------------------- DnCNN
@pytest.mark.parametrize(
    "cin,depth,nf,bias", [(3, 20, 64, True), (1, 7, 16, True), (2, 5, 8, False), (3, 2, 4, True)]
)
def test_dncnn_parameter_count(cin, depth, nf, bias):
    net = DnCNN(cin, cin, depth=depth, nf=nf, bias=bias)
    expected = conv_count(cin, nf, bias) + (depth - 2) * conv_count(nf, nf, bias)
    expected += conv_count(nf, cin, bias)
    assert count(net) == expected
    if (cin, depth, nf, bias) == (3, 20, 64, True):
        assert expected == 668_227


def test_dncnn_matches_functional_reference():
    torch.manual_seed(0)
    net = DnCNN(2, 2, depth=4, nf=6).to(DT)
    x = torch.randn(3, 2, 9, 7, dtype=DT)
    sd = net.state_dict()
    h = torch.relu(nn.functional.conv2d(x, sd["in_conv.weight"], sd["in_conv.bias"], padding=1))
    for i in range(2):
        w, b = sd[f"conv_list.{i}.weight"], sd[f"conv_list.{i}.bias"]
        h = torch.relu(nn.functional.conv2d(h, w, b, padding=1))
    ref = x + nn.functional.conv2d(h, sd["out_conv.weight"], sd["out_conv.bias"], padding=1)
    torch.testing.assert_close(net(x), ref, rtol=1e-12, atol=1e-12)


def test_dncnn_sigma_forms_and_errors():
    torch.manual_seed(0)
    net = DnCNN(1, 1, depth=3, nf=4)
    x = torch.rand(2, 1, 8, 8)
    out = net(x)
    for sigma in (0.1, torch.tensor(0.1), torch.tensor([0.1, 0.2])):
        torch.testing.assert_close(net(x, sigma), out)
    with pytest.raises(ValueError, match="DnCNN: sigma"):
        net(x, torch.ones(3))
    with pytest.raises(ValueError, match="DnCNN: expected x"):
        net(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="DnCNN: residual"):
        DnCNN(3, 1)
    with pytest.raises(ValueError, match="DnCNN: `depth`"):
        DnCNN(depth=1)


def test_dncnn_init_is_kaiming_with_zero_bias():
    torch.manual_seed(0)
    net = DnCNN(3, 3, depth=4, nf=64)
    w = net.conv_list[0].weight
    fan_in = 64 * 9
    assert abs(w.std().item() / math.sqrt(2.0 / fan_in) - 1) < 0.05
    assert all((m.bias == 0).all() for m in net.modules() if isinstance(m, nn.Conv2d))


def test_dncnn_pretrained_local_file(tmp_path):
    torch.manual_seed(0)
    net = DnCNN(1, 1, depth=3, nf=4)
    path = tmp_path / "w.pth"
    torch.save(net.state_dict(), path)
    torch.manual_seed(1)
    loaded = DnCNN(1, 1, depth=3, nf=4, pretrained=str(path))
    x = torch.rand(1, 1, 6, 6)
    torch.testing.assert_close(loaded(x), net(x))
    with pytest.raises(ValueError, match="never downloads"):
        DnCNN(pretrained="download")
    with pytest.raises(ValueError, match="does not exist"):
        DnCNN(pretrained=str(tmp_path / "missing.pth"))


def test_dncnn_gradcheck_and_vmap():
    torch.manual_seed(0)
    net = DnCNN(1, 1, depth=3, nf=3).to(DT)
    x = torch.randn(2, 1, 5, 5, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: net(t), (x,))
    params = dict(net.named_parameters())
    per_sample = torch.func.vmap(
        lambda xi: torch.func.functional_call(net, params, (xi,)), in_dims=0
    )(x.detach())
    torch.testing.assert_close(per_sample, net(x.detach()), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- layout helpers
@pytest.mark.parametrize(
    "shape,dtype",
    [((2, 5, 6), CDT), ((2, 3, 5, 6), CDT), ((2, 2, 3, 5, 6), DT), ((2, 3, 5, 6), DT)],
)
def test_channels_roundtrip(shape, dtype):
    x = torch.randn(shape, dtype=dtype)
    t, layout = to_channels(x)
    assert t.dim() == 4 and not t.is_complex() and t.shape[-2:] == x.shape[-2:]
    assert t.shape[1] == (2 if x.is_complex() else 1) * math.prod(shape[1:-2])
    torch.testing.assert_close(from_channels(t, layout), x, rtol=0, atol=0)


# --------------------------------------------------------------------------- PDNet
def test_pdnet_block_counts_and_init():
    torch.manual_seed(0)
    p, d = PDNet_PrimalBlock(), PDNet_DualBlock()
    assert count(p) == conv_count(6, 32) + conv_count(32, 32) + conv_count(32, 5) + 2
    assert count(d) == conv_count(7, 32) + conv_count(32, 32) + conv_count(32, 5) + 2
    # Xavier uniform (bound sqrt(6 / (fan_in + fan_out))), zero biases: PyTorch's default
    # (kaiming_uniform with a=sqrt(5), non-zero uniform biases) would fail both checks.
    w = p.conv_list[0].weight
    bound = math.sqrt(6.0 / (2 * 32 * 9))
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 0.05
    for block in (p, d):
        assert all((m.bias == 0).all() for m in block.modules() if isinstance(m, nn.Conv2d))


def test_pdnet_counts_shared_and_per_iteration():
    block = count(PDNet_PrimalBlock(2, 1, 3, True, 8)) + count(PDNet_DualBlock(3, 1, 3, True, 8))
    assert count(PDNet(num_iter=4, n_primal=1, n_dual=1, nf=8)) == 4 * block
    assert count(PDNet(num_iter=4, n_primal=1, n_dual=1, nf=8, shared_weights=True)) == block


def test_pdnet_forward_matches_manual_loop():
    torch.manual_seed(0)
    x, physics, y = mri_problem(coils=0)
    model = PDNet(num_iter=3, in_channels=2, meas_channels=2, nf=6).to(DT)
    out = model(y, physics)
    assert out.shape == x.shape and out.is_complex()

    # the recursion written out with complex <-> (re, im) channels by hand
    def ch(z):
        return torch.stack((z.real, z.imag), 1)

    def cx(t):
        return torch.complex(t[:, 0], t[:, 1])

    xs = torch.zeros(2, 10, 8, 8, dtype=DT)
    u = torch.zeros(2, 10, 8, 8, dtype=DT)
    for k in range(3):
        u = model.dual_blocks[k](u, ch(physics.A(cx(xs[:, :2]))), ch(y))
        xs = model.primal_blocks[k](xs, ch(physics.A_adjoint(cx(u[:, :2]))))
    torch.testing.assert_close(out, cx(xs[:, :2]), rtol=1e-12, atol=1e-12)


def test_pdnet_multicoil_and_channel_errors():
    torch.manual_seed(0)
    x, physics, y = mri_problem(coils=3)
    model = PDNet(num_iter=2, in_channels=2, meas_channels=6, nf=4).to(DT)
    assert model(y, physics).shape == x.shape
    with pytest.raises(ValueError, match="pass meas_channels=6"):
        PDNet(num_iter=2, in_channels=2, nf=4).to(DT)(y, physics)
    with pytest.raises(ValueError, match="pass in_channels=2"):
        PDNet(num_iter=1, in_channels=1, meas_channels=6, nf=4).to(DT)(y, physics)


def test_pdnet_short_training_lowers_loss():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 12, 12, dtype=DT)
    y = x + 0.2 * torch.randn_like(x)
    model = PDNet(num_iter=2, n_primal=2, n_dual=2, nf=8).to(DT)
    assert _train(model, y, Denoise(), x, steps=15, lr=3e-3) < 0.5


# --------------------------------------------------------------------------- MoDL
def modl_dense_reference(model, physics, y):
    """MoDL's two iterations with the data step as a dense solve of (AᴴA + I/γ) x = Aᴴy + z/γ."""
    a = dense(physics.A, (8, 8))
    ref = physics.A_adjoint(y)
    for k in range(2):
        z = from_channels(*_apply_real(model.denoisers[k], ref))
        g = model.stepsize[k].detach()
        lhs = a.conj().T @ a + torch.eye(64, dtype=CDT) / g
        rhs = (a.conj().T @ y.reshape(2, -1).T).T + z.reshape(2, -1) / g
        ref = torch.linalg.solve(lhs, rhs.T).T.reshape(2, 8, 8)
    return ref


def test_modl_forward_matches_dense_solves():
    torch.manual_seed(0)
    x, physics, y = mri_problem(coils=0)
    model = MoDL(num_iter=2, in_channels=2, stepsize=0.7).to(DT)
    out = model(y, physics)
    ref = modl_dense_reference(model, physics, y)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-10)


def _apply_real(net, x):
    t, layout = to_channels(x)
    return net(t), layout


def test_modl_stepsize_gradient_finite_differences():
    torch.manual_seed(0)
    _, physics, y = mri_problem(coils=0)
    model = MoDL(num_iter=2, in_channels=2, denoiser=DnCNN(2, 2, depth=3, nf=4)).to(DT)
    target = torch.randn(2, 8, 8, dtype=CDT)

    def loss(step):
        params = {"stepsize": step}
        out = torch.func.functional_call(model, params, (y, physics))
        return (out - target).abs().square().sum()

    step = model.stepsize.detach().clone()
    grad = torch.func.grad(loss)(step)
    fd = central_fd(loss, step, eps=1e-6)
    for i in range(2):
        torch.testing.assert_close(grad[i], fd[i], rtol=1e-6, atol=1e-8)


def test_modl_shared_vs_per_iteration_counts():
    den = DnCNN(2, 2, depth=3, nf=4)
    assert count(MoDL(den, num_iter=3)) == count(den) + 3
    assert count(MoDL(den, num_iter=3, shared_weights=False)) == 3 * count(den) + 3
    with pytest.raises(ValueError, match="MoDL: got 2 per-iteration"):
        MoDL([den, den], num_iter=3)


def test_modl_short_training_lowers_loss():
    torch.manual_seed(0)
    x, physics, y = mri_problem(coils=0, batch=4)
    model = MoDL(DnCNN(2, 2, depth=3, nf=8), num_iter=2).to(DT)
    assert _train(model, y, physics, x, steps=10, lr=1e-2) < 0.5


# --------------------------------------------------------------------------- VarNet
def test_varnet_image_mode_matches_dense_reference():
    torch.manual_seed(0)
    x, physics, y = mri_problem(coils=3)
    model = VarNet(DnCNN(2, 2, depth=3, nf=4), num_cascades=3, shared_weights=False).to(DT)
    with torch.no_grad():
        model.dc_weight.copy_(torch.tensor([0.5, 1.0, 1.5]))
    out = model(y, physics)
    a = dense(physics.A, (8, 8))
    xk = (a.conj().T @ y.reshape(2, -1).T).T
    for t in range(3):
        dc = (a.conj().T @ (a @ xk.T - y.reshape(2, -1).T)).T
        d = from_channels(*_apply_real(model.denoisers[t], xk.reshape(2, 8, 8))).reshape(2, -1)
        xk = xk - model.dc_weight[t].detach() * dc - (xk - d)
    torch.testing.assert_close(out, xk.reshape(2, 8, 8), rtol=1e-10, atol=1e-10)


def test_varnet_e2e_mode_matches_dense_reference():
    torch.manual_seed(0)
    x, physics, y = mri_problem(coils=3)
    model = VarNet(DnCNN(2, 2, depth=3, nf=4), num_cascades=2, mode="e2e-varnet").to(DT)
    out = model(y, physics)
    mask_before = physics.mask.clone()
    full = LocalMRI(torch.ones(8, 8, dtype=DT), physics.coil_maps)
    af = dense(full.A, (8, 8))  # (3*64, 64)
    m = physics.mask.expand(3, 8, 8).reshape(-1)
    k = y.reshape(2, -1)
    for t in range(2):
        xi = (af.conj().T @ k.T).T
        d = from_channels(*_apply_real(model.denoisers[t], xi.reshape(2, 8, 8))).reshape(2, -1)
        k = k - model.dc_weight[t].detach() * m * (k - y.reshape(2, -1)) - (af @ (xi - d).T).T
    ref = (af.conj().T @ k.T).T.reshape(2, 8, 8)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(physics.mask, mask_before, rtol=0, atol=0)  # not modified


def test_varnet_shared_counts_and_errors():
    den = DnCNN(2, 2, depth=3, nf=4)
    assert count(VarNet(den, num_cascades=5)) == count(den) + 5
    assert count(VarNet(den, num_cascades=5, shared_weights=False)) == 5 * count(den) + 5
    default = VarNet(num_cascades=2)
    assert count(default) == count(DnCNN(2, 2, depth=7)) + 2
    with pytest.raises(ValueError, match="VarNet: mode"):
        VarNet(mode="unet")
    _, physics, y = mri_problem(coils=0)
    with pytest.raises(ValueError, match="sensitivity_model needs multi-coil"):
        VarNet(num_cascades=1, sensitivity_model=SensitivityModel()).to(DT)(y, Denoise())


def test_sensitivity_model_normalised_and_low_frequency():
    torch.manual_seed(0)
    x, physics, y = mri_problem(h=16, coils=4)
    sens = SensitivityModel(DnCNN(2, 2, depth=3, nf=4)).to(DT)
    s = sens(y, physics)
    assert s.shape == (2, 4, 16, 16) and s.is_complex()
    torch.testing.assert_close(s.abs().square().sum(1), torch.ones(2, 16, 16, dtype=DT))
    # the ACS region found from the mask is the contiguous central band of sampled columns
    acs = sens._acs_mask(physics, y)
    cols = physics.mask[0]
    c = 8
    lo, hi = c, c
    while lo > 0 and cols[lo - 1] == 1:
        lo -= 1
    while hi < 15 and cols[hi + 1] == 1:
        hi += 1
    expected = torch.zeros(16, 16, dtype=DT)
    expected[:, lo : hi + 1] = 1
    torch.testing.assert_close(acs.expand(16, 16), expected)


def test_replace_leaves_copies_physics():
    _, physics, _ = mri_problem(coils=3)
    new_maps = torch.ones_like(physics.coil_maps)
    other = replace_leaves(physics, coil_maps=new_maps)
    assert other.coil_maps is new_maps and physics.coil_maps is not new_maps
    assert other.mask is physics.mask


def test_varnet_dc_weight_gradient_finite_differences():
    torch.manual_seed(0)
    _, physics, y = mri_problem(coils=3)
    model = VarNet(DnCNN(2, 2, depth=3, nf=4), num_cascades=2, mode="e2e-varnet").to(DT)
    target = torch.randn(2, 8, 8, dtype=CDT)

    def loss(w):
        out = torch.func.functional_call(model, {"dc_weight": w}, (y, physics))
        return (out - target).abs().square().sum()

    w = model.dc_weight.detach().clone()
    grad = torch.func.grad(loss)(w)
    fd = central_fd(loss, w, eps=1e-6)
    for i in range(2):
        torch.testing.assert_close(grad[i], fd[i], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("mode", ["varnet", "e2e-varnet"])
def test_varnet_short_training_complex_mri(mode):
    torch.manual_seed(0)
    x, physics, y = mri_problem(h=12, coils=3, batch=4)
    model = VarNet(
        DnCNN(2, 2, depth=3, nf=8),
        num_cascades=2,
        mode=mode,
        sensitivity_model=SensitivityModel(DnCNN(2, 2, depth=3, nf=4)),
    ).to(DT)
    assert _train(model, y, physics, x, steps=10, lr=1e-2) < 0.8


# --------------------------------------------------------------------------- training helper
def _train(model, y, physics, x, steps, lr):
    """Run Adam on the MSE; return final loss / initial loss."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(y, physics) - x).abs().square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        final = (model(y, physics) - x).abs().square().mean().item()
    assert math.isfinite(final)
    return final / losses[0]


# --------------------------------------------------------------------------- unroll.physics
def _real(z):
    return torch.stack((z.real, z.imag), dim=1)


def _unroll_mri(physics, **settings):
    from unroll.physics import MRI, MultiCoilMRI

    if physics.coil_maps is None:
        return MRI(physics.mask, **settings)
    return MultiCoilMRI(physics.mask, physics.coil_maps, **settings)


@pytest.mark.parametrize("name", ["varnet", "e2e-varnet", "pdnet"])
def test_models_on_unroll_multicoil_mri_complex_and_real_layouts(name):
    torch.manual_seed(0)
    x, local, y = mri_problem(h=12, coils=3)
    physics = _unroll_mri(local)
    if name == "pdnet":
        model = PDNet(num_iter=2, in_channels=2, meas_channels=6, nf=4)
    else:
        model = VarNet(
            DnCNN(2, 2, depth=3, nf=4),
            num_cascades=2,
            mode=name,
            sensitivity_model=SensitivityModel(DnCNN(2, 2, depth=3, nf=4)),
        )
    model = model.to(DT)
    ref = model(y, local)
    out = model(y, physics)
    assert out.shape == x.shape and out.is_complex()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # (real, imag) in dimension 1: k-space (B, 2, N, H, W) -> image (B, 2, H, W)
    out_real = model(_real(y), physics)
    torch.testing.assert_close(out_real, _real(ref), rtol=1e-10, atol=1e-10)


def test_modl_on_unroll_mri_closed_form_and_multicoil_cg():
    torch.manual_seed(0)
    x, local, y = mri_problem(h=8, coils=0)
    model = MoDL(DnCNN(2, 2, depth=3, nf=4), num_iter=2, stepsize=0.5).to(DT)
    torch.testing.assert_close(
        model(y, _unroll_mri(local)), model(y, local), rtol=1e-10, atol=1e-10
    )
    # multi-coil: prox_l2 by CG inside unroll.physics, against dense solves
    x, local, y = mri_problem(h=8, coils=3)
    physics = _unroll_mri(local, max_iter=300, tol=1e-13)
    out = model(y, physics)
    ref = modl_dense_reference(model, physics, y)
    torch.testing.assert_close(out.detach(), ref, rtol=1e-8, atol=1e-9)


def test_modl_trains_through_unroll_multicoil_prox():
    torch.manual_seed(0)
    x, local, y = mri_problem(h=8, coils=3, batch=4)
    physics = _unroll_mri(local, max_iter=50, tol=1e-8)
    model = MoDL(DnCNN(2, 2, depth=3, nf=8), num_iter=2).to(DT)
    assert _train(model, y, physics, x, steps=8, lr=1e-2) < 0.7
