"""Data fidelities, priors and the convenience classes on the real physics; the seeds'
three examples with ``unroll`` in place of ``deepinv``."""

import pytest
import torch
from torch import nn

import unroll
from unroll import physics as P
from unroll.models import DnCNN
from unroll.optim import ADMM, DRS, FISTA, GD, HQS, L1, L2, PDCP, PGD, RED, L1Prior, PnP, Tikhonov
from unroll.unfolded import unfolded_builder

DT = torch.float64


def dense(op, shape):
    """The matrix of a linear map on tensors of ``shape`` (float64)."""
    n = torch.tensor(shape).prod()
    cols = [op(e.reshape(shape)).reshape(-1) for e in torch.eye(int(n), dtype=DT)]
    return torch.stack(cols, 1)


# ------------------------------------------------------------------ data fidelities, priors
def test_l2_value_grad_prox_against_dense():
    g = torch.Generator().manual_seed(0)
    physics = P.Blur(
        torch.rand(3, 3, generator=g, dtype=DT), padding="valid", max_iter=500, tol=1e-12
    )
    shape = (1, 1, 6, 6)
    a = dense(physics.A, shape)
    x, z = (torch.randn(shape, generator=g, dtype=DT) for _ in range(2))
    y = torch.randn(1, 1, 4, 4, generator=g, dtype=DT)
    f, sigma, gamma = L2(sigma=0.5), 0.5, 0.7
    r = a @ x.reshape(-1) - y.reshape(-1)
    torch.testing.assert_close(f.value(x, y, physics), (r @ r / (2 * sigma**2)).reshape(1))
    torch.testing.assert_close(f.grad(x, y, physics).reshape(-1), a.T @ r / sigma**2)
    h = a.T @ a / sigma**2 + torch.eye(36, dtype=DT) / gamma
    ref = torch.linalg.solve(h, a.T @ y.reshape(-1) / sigma**2 + z.reshape(-1) / gamma)
    torch.testing.assert_close(f.prox(z, y, physics, gamma).reshape(-1), ref, rtol=0, atol=1e-9)


def test_l1_prox_on_denoising_is_shifted_soft_threshold():
    g = torch.Generator().manual_seed(1)
    z, y = (
        torch.randn(2, 3, 4, 4, generator=g, dtype=DT),
        torch.randn(2, 3, 4, 4, generator=g, dtype=DT),
    )
    out = L1().prox(z, y, P.Denoising(), 0.3)
    d = z - y
    torch.testing.assert_close(out, y + d.sign() * (d.abs() - 0.3).clamp(min=0))


def test_priors_prox_and_grad_closed_forms():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 5, 5, generator=g, dtype=DT)
    torch.testing.assert_close(Tikhonov().prox(x, 0.5), x / 1.5)
    torch.testing.assert_close(L1Prior().prox(x, 0.5), x.sign() * (x.abs() - 0.5).clamp(min=0))
    den = nn.Conv2d(1, 1, 3, padding=1).to(DT)
    red = RED(lambda v, s: den(v))
    torch.testing.assert_close(red.grad(x, 0.1), x - den(x))
    pnp = PnP(den)  # an nn.Module denoiser called (x, sigma)
    with pytest.raises(TypeError):
        pnp.prox(x, 1.0, sigma=0.1)  # Conv2d takes no sigma: the call shape is enforced
    with pytest.raises(NotImplementedError, match="^unroll.optim.PnP: no gradient"):
        pnp.grad(x, 0.1)
    with pytest.raises(ValueError, match="^unroll.optim.L2: sigma"):
        L2(sigma=0.0)


# ------------------------------------------------------------------ classical classes
@pytest.mark.parametrize(
    "cls, extra",
    [
        (PGD, {}),
        (FISTA, {}),
        (ADMM, {"beta": 1.5}),
        (DRS, {"beta": 1.2}),
        (PDCP, {"stepsize_dual": 1.0}),
    ],
)
def test_classical_l1_denoising(cls, extra):
    g = torch.Generator().manual_seed(3)
    y = torch.randn(2, 3, 4, 4, generator=g, dtype=DT)
    model = cls(
        data_fidelity=L2(),
        prior=L1Prior(),
        stepsize=0.8,
        lambda_reg=0.25,  # exact in fp32
        max_iter=3000,
        tol=1e-13,
        **extra,
    )
    ref = y.sign() * (y.abs() - 0.25).clamp(min=0)
    torch.testing.assert_close(model(y, P.Denoising()), ref, rtol=0, atol=1e-9)


def test_classical_gd_tikhonov_deblurring():
    g = torch.Generator().manual_seed(4)
    physics = P.Blur(torch.rand(3, 3, generator=g, dtype=DT) / 4.5, padding="valid")
    y = torch.randn(1, 1, 4, 4, generator=g, dtype=DT)
    # tensors keep their dtype (a Python 0.2 would be stored in the default float32)
    model = GD(
        prior=Tikhonov(),
        stepsize=torch.tensor(0.5, dtype=DT),
        lambda_reg=torch.tensor(0.2, dtype=DT),
        max_iter=3000,
        tol=1e-15,
    )
    a = dense(physics.A, (1, 1, 6, 6))
    ref = torch.linalg.solve(a.T @ a + 0.2 * torch.eye(36, dtype=DT), a.T @ y.reshape(-1))
    torch.testing.assert_close(model(y, physics).reshape(-1), ref, rtol=0, atol=1e-9)


def test_class_keyword_validation():
    with pytest.raises(TypeError, match="^unroll.optim.PGD: unexpected keyword 'beta'"):
        PGD(prior=Tikhonov(), beta=1.0)
    with pytest.raises(ValueError, match="^unroll.optim.HQS: pass sigma_denoiser or g_param"):
        HQS(prior=Tikhonov(), sigma_denoiser=0.1, g_param=0.1)
    with pytest.raises(ValueError, match="^unroll.optim.PGD: a prior is required"):
        PGD()


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (PGD, {"stepsize": -1.0}, "stepsize must be > 0"),
        (GD, {"stepsize": 0}, "stepsize must be > 0"),
        (FISTA, {"stepsize": torch.tensor(-0.5)}, "stepsize must be > 0"),
        (HQS, {"stepsize": [1.0, 0.0, 1.0]}, "stepsize must be > 0"),
        (ADMM, {"lambda_reg": -0.1}, "lambda_reg must be >= 0"),
        (DRS, {"sigma_denoiser": 0.0}, "sigma_denoiser must be > 0"),
        (PDCP, {"stepsize_dual": torch.tensor([1.0, -1.0, 1.0])}, "stepsize_dual must be > 0"),
        (PGD, {"stepsize": float("nan")}, "stepsize must be finite"),
    ],
)
def test_class_rejects_non_positive_hyperparameters(cls, kwargs, message):
    name = cls.__name__
    with pytest.raises(ValueError, match=f"^unroll.optim.{name}: {message}"):
        cls(prior=Tikhonov(), max_iter=3, **kwargs)


def test_class_accepts_zero_lambda_reg():
    y = torch.rand(1, 1, 4, 4, dtype=DT)
    x = PGD(prior=Tikhonov(), lambda_reg=0.0, max_iter=5)(y, P.Denoising())
    torch.testing.assert_close(x, y)


# ------------------------------------------------------------------ the LS prox setting
def test_hqs_follows_physics_implicit_backward_solver():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 1, 12, 12, generator=g, dtype=DT)
    grads, saved = {}, {}
    for implicit in (True, False):
        physics = P.Blur(
            P.gaussian_blur(1.0).to(DT),
            padding="valid",
            max_iter=60,
            tol=1e-12,
            implicit_backward_solver=implicit,
        )
        y = physics.A(x)
        model = HQS(
            unfold=True,
            prior=Tikhonov(),
            stepsize=1.0,
            lambda_reg=0.1,
            max_iter=3,
            trainable_params=["stepsize", "lambda_reg"],
        ).double()
        nbytes = [0]

        def pack(t, nbytes=nbytes):
            nbytes[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = ((model(y, physics) - x) ** 2).sum()
        loss.backward()
        grads[implicit] = torch.stack([model.hyper.stepsize.grad, model.hyper.lambda_reg.grad])
        saved[implicit] = nbytes[0]
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-7, atol=1e-10)
    assert saved[True] * 4 < saved[False]  # O(1) in the CG iterations vs storing all of them


# ------------------------------------------------------------------ the seeds' examples
def test_seed_example_pgd_pnp_dncnn_denoising():
    torch.manual_seed(0)
    model = PGD(
        unfold=True,
        data_fidelity=unroll.optim.L2(),
        prior=unroll.optim.PnP(unroll.models.DnCNN()),
        stepsize=1.0,
        sigma_denoiser=0.1,
        lambda_reg=1,
        max_iter=5,
        trainable_params=["stepsize", "sigma_denoiser", "lambda_reg"],
    )
    x = torch.randn(1, 3, 16, 16)
    physics = unroll.physics.Denoising()
    y = physics(x)
    x_hat = model(y, physics)
    # Denoising: ∇f(x) = x − y; with stepsize 1 each iteration is D(y): five times the same
    torch.testing.assert_close(x_hat, model.prior.denoiser(y, 0.1))
    learnable = {n for n, p in model.named_parameters() if p.requires_grad}
    dncnn = {"prior.denoiser." + n for n, _ in model.prior.denoiser.named_parameters()}
    assert learnable == {"hyper.stepsize", "hyper.sigma_denoiser", "hyper.lambda_reg"} | dncnn


@pytest.mark.parametrize("builder", ["unfolded_builder", "HQS"])
def test_seed_example_hqs_blur(builder):
    torch.manual_seed(0)
    if builder == "unfolded_builder":
        model = unroll.unfolded.unfolded_builder(
            iteration="HQS",
            data_fidelity=unroll.optim.L2(),
            prior=unroll.optim.PnP(unroll.models.DnCNN()),
            params_algo={"stepsize": 1.0, "g_param": 1.0},
            trainable_params=["stepsize", "g_param"],
        )
    else:
        model = HQS(
            unfold=True,
            data_fidelity=unroll.optim.L2(),
            prior=unroll.optim.PnP(unroll.models.DnCNN()),
            stepsize=1.0,
            sigma_denoiser=1.0,
            trainable_params=["stepsize", "sigma_denoiser"],
            max_iter=3,
        )
    x = torch.randn(1, 3, 16, 16)
    physics = unroll.physics.Blur(
        filter=torch.ones(1, 1, 3, 3) / 9.0, implicit_backward_solver=True, max_iter=50
    )
    y = physics(x)
    x_hat = model(y, physics)
    # reference: the same iterations written out by hand
    ref = physics.A_adjoint(y)
    for _ in range(model.max_iter):
        ref = model.prior.denoiser(physics.prox_l2(ref, y, 1.0), 1.0)
    torch.testing.assert_close(x_hat, ref)
    x_hat.sum().backward()
    assert model.hyper.stepsize.grad is not None and model.hyper.sigma_denoiser.grad is None


def test_seed_example_constant_memory_training():
    """The constant-memory example at toy size: both modes' gradients agree, implicit saves
    less for backward, and a few Adam steps lower the loss."""
    dtype = torch.float64
    physics = unroll.physics.Blur(
        filter=unroll.physics.gaussian_blur(sigma=(2.5, 2.5)).to(dtype),
        padding="valid",
        noise_model=unroll.physics.GaussianNoise(sigma=0.1),
        max_iter=100,
        tol=1e-8,
        implicit_backward_solver=False,
    )
    max_iter = 3
    params_algo = {"stepsize": [1] * max_iter, "g_param": [0.01] * max_iter}
    trainable_params = ["g_param", "stepsize"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 24, generator=g, dtype=dtype)
    y = physics.A(x) + 0.1 * torch.randn(physics.A(x).shape, generator=g, dtype=dtype)
    results = {}
    for implicit in (False, True):
        physics.implicit_backward_solver = implicit
        torch.manual_seed(42)
        prior = PnP(denoiser=DnCNN(depth=3, nf=8, pretrained=None).to(dtype))
        model = unfolded_builder(
            iteration="HQS",
            params_algo=params_algo.copy(),
            trainable_params=trainable_params,
            data_fidelity=L2(),
            max_iter=max_iter,
            prior=prior,
        ).to(dtype)
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-8)
        losses, first_grads = [], None
        for _ in range(4):
            optimizer.zero_grad()
            x_hat = model(physics=physics, y=y)
            loss = torch.nn.functional.mse_loss(x_hat, x)
            losses.append(loss.item())
            loss.backward()
            if first_grads is None:  # DnCNN ignores sigma: g_param gets no gradient
                first_grads = [p.grad for p in model.parameters() if p.grad is not None]
                first_grads = [t.clone() for t in first_grads]
            optimizer.step()
        results[implicit] = (losses, first_grads)
    assert params_algo == {"stepsize": [1] * 3, "g_param": [0.01] * 3}
    assert len(results[False][1]) == len(results[True][1]) > 2
    for a, b in zip(results[False][1], results[True][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    for implicit in (False, True):
        losses = results[implicit][0]
        assert losses[-1] < losses[0]


@pytest.mark.parametrize("cls", [HQS, ADMM, DRS, PGD])
def test_deq_on_blur_matches_unrolled_to_convergence(cls):
    """DEQ= on the real CG-prox physics (nested implicit solves) vs 300 unrolled iterations."""
    from unroll.equilibrium import DEQConfig

    g = torch.Generator().manual_seed(6)
    physics = P.Blur(
        torch.rand(3, 3, generator=g, dtype=DT) / 4.5, padding="valid", max_iter=200, tol=1e-13
    )
    x = torch.rand(2, 1, 6, 6, generator=g, dtype=DT)
    y = physics.A(x) + 0.05 * torch.randn(2, 1, 4, 4, generator=g, dtype=DT)
    grads = []
    for deq in (
        None,
        DEQConfig(max_iter=1000, tol=1e-13, max_iter_backward=1000, tol_backward=1e-13),
    ):
        model = cls(
            unfold=True,
            prior=Tikhonov(),
            stepsize=torch.tensor(0.7, dtype=DT),
            lambda_reg=torch.tensor(0.3, dtype=DT),
            max_iter=300,
            DEQ=deq,
            trainable_params=["stepsize", "lambda_reg"],
        )
        loss = ((model(y, physics) - x) ** 2).sum()
        grads.append(torch.stack(torch.autograd.grad(loss, list(model.parameters()))))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-10)


def test_vmap_over_a_batch_of_blur_physics():
    """One HQS network applied to a batch of blur operators (CG prox) with vmap, kernel
    gradients included, equals a Python loop over the operators."""
    from unroll import tree

    g = torch.Generator().manual_seed(7)
    kernels = torch.rand(3, 1, 1, 3, 3, generator=g, dtype=DT)
    phys = [P.Blur(k, padding="valid", max_iter=100, tol=1e-12) for k in kernels]
    ys = torch.stack([p.A(torch.rand(1, 1, 6, 6, generator=g, dtype=DT)) for p in phys])
    stacked = tree.map(lambda *leaves: torch.stack(leaves), *phys)
    model = unfolded_builder(
        "HQS",
        params_algo={
            "stepsize": torch.tensor(0.5, dtype=DT),
            "lambda_reg": torch.tensor(0.2, dtype=DT),
        },
        prior=Tikhonov(),
        max_iter=3,
    )
    params = {n: p.detach() for n, p in model.named_parameters()}

    def single(physics, y):
        return model.apply(params, y, physics)

    def loss(physics, y):
        return single(physics, y).square().sum()

    torch.testing.assert_close(
        torch.func.vmap(single)(stacked, ys), torch.stack([single(p, y) for p, y in zip(phys, ys)])
    )
    batched = torch.func.vmap(torch.func.grad(loss))(stacked, ys).filter
    looped = torch.stack([torch.func.grad(loss)(p, y).filter for p, y in zip(phys, ys)])
    torch.testing.assert_close(batched, looped)
