"""Untied layers: a list of priors / data fidelities (one per iteration), DeepInverse's
``prior=[...]``; distinct registered weights that train; output equal to a hand-written loop."""

import pytest
import torch
from dense_physics import MatrixPhysics  # shared test operator (tests/dense_physics.py)
from torch import nn

from unroll import algorithms
from unroll.equilibrium import DEQConfig
from unroll.optim import HQS, L2, PGD, PnP, Tikhonov
from unroll.unfolded import unfold, unfolded_builder

DT = torch.float64


class TinyDenoiser(nn.Module):
    """``D(x, σ) = x − σ tanh(w ⋆ x)`` with its own random weights (seeded)."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False).to(DT)
        with torch.no_grad():
            self.conv.weight.copy_(0.5 * torch.rand(1, 1, 3, 3, generator=g, dtype=DT))

    def forward(self, x, sigma):
        return x - sigma * torch.tanh(self.conv(x))


def problem(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    mat = torch.eye(16, dtype=DT) + 0.3 * torch.randn(16, 16, generator=g, dtype=DT) / 4
    physics = MatrixPhysics(mat, (1, 4, 4))
    x = torch.rand(batch, 1, 4, 4, generator=g, dtype=DT)
    return physics, x, physics.A(x)


def by_hand(priors, physics, y, gammas, sigma):
    """PGD written out: ``x ← D_k(x − γ_k Aᵀ(A x − y), σ)`` with the k-th denoiser."""
    x = physics.A_adjoint(y)
    for prior, gamma in zip(priors, gammas):
        u = x - gamma * physics.A_adjoint(physics.A(x) - y)
        x = prior.denoiser(u, sigma)
    return x


def test_untied_priors_have_distinct_weights_that_train_and_match_a_loop():
    physics, x_true, y = problem()
    priors = [PnP(TinyDenoiser(seed=k)) for k in range(3)]
    model = PGD(
        prior=priors,
        stepsize=[torch.tensor(v, dtype=DT) for v in (0.5, 0.4, 0.3)],
        sigma_denoiser=torch.tensor(0.2, dtype=DT),
        unfold=True,
        max_iter=3,
        trainable_params=["stepsize"],
    )
    names = [n for n, _ in model.named_parameters()]
    assert names == [
        "prior.0.denoiser.conv.weight",
        "prior.1.denoiser.conv.weight",
        "prior.2.denoiser.conv.weight",
        "hyper.stepsize",
    ]
    torch.testing.assert_close(
        model(y, physics), by_hand(priors, physics, y, [0.5, 0.4, 0.3], 0.2), rtol=0, atol=1e-14
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = [p.denoiser.conv.weight.detach().clone() for p in priors]
    (model(y, physics) - x_true).square().sum().backward()
    grads = [p.denoiser.conv.weight.grad for p in priors]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    opt.step()
    after = [p.denoiser.conv.weight.detach() for p in priors]
    assert all(not torch.equal(a, b) for a, b in zip(after, before))  # every layer trained
    assert not torch.allclose(after[0], after[1]) and not torch.allclose(after[1], after[2])
    # the trained model is still the hand-written loop with each layer's own prior
    gammas = model.hyper.stepsize.detach().tolist()
    with torch.no_grad():
        torch.testing.assert_close(
            model(y, physics), by_hand(priors, physics, y, gammas, 0.2), rtol=0, atol=1e-14
        )


def test_untied_gradient_of_one_layer_matches_finite_differences():
    physics, x_true, y = problem(seed=1)
    priors = [PnP(TinyDenoiser(seed=10 + k)) for k in range(2)]
    model = unfolded_builder(
        "PGD", params_algo={"stepsize": 0.4, "g_param": 0.3}, prior=priors, max_iter=2
    )
    loss = lambda: (model(y, physics) - x_true).square().sum()  # noqa: E731
    loss().backward()
    w = priors[1].denoiser.conv.weight
    grad = w.grad[0, 0, 1, 2].item()
    eps = 1e-6
    with torch.no_grad():
        w[0, 0, 1, 2] += eps
        up = loss().item()
        w[0, 0, 1, 2] -= 2 * eps
        down = loss().item()
        w[0, 0, 1, 2] += eps
    assert grad == pytest.approx((up - down) / (2 * eps), rel=1e-6)


def test_untied_data_fidelities_and_tied_one_element_list():
    physics, _, y = problem()
    fids = [L2(sigma=1.0), L2(sigma=2.0)]
    half, fifth = torch.tensor(0.5, dtype=DT), torch.tensor(0.2, dtype=DT)
    model = HQS(
        data_fidelity=fids,
        prior=Tikhonov(),
        stepsize=half,
        lambda_reg=fifth,
        max_iter=2,
        unfold=True,
    )
    x = physics.A_adjoint(y)
    for f in fids:  # HQS by hand: x ← prox_{γλ g}(prox_{γ f}(x))
        x = f.prox(x, y, physics, 0.5) / (1 + 0.5 * 0.2)
    torch.testing.assert_close(model(y, physics), x, rtol=0, atol=1e-14)
    one = PGD(prior=[Tikhonov()], stepsize=0.5, max_iter=4, unfold=True)
    assert isinstance(one.prior, Tikhonov)  # a one-element list is one shared prior


def test_pure_unfold_with_a_list_of_algorithms_and_per_layer_weights():
    physics, _, y = problem()
    priors = [PnP(TinyDenoiser(seed=k)) for k in range(2)]
    layers = [algorithms.pgd(L2(), p) for p in priors]
    f = unfold(layers, 2)
    params = {
        "stepsize": torch.tensor(0.4, dtype=DT),
        "sigma_denoiser": torch.tensor(0.2, dtype=DT),
        "prior": [dict(p.denoiser.named_parameters()) for p in priors],
    }
    torch.testing.assert_close(f(params, y, physics), by_hand(priors, physics, y, [0.4, 0.4], 0.2))
    grads = torch.func.grad(lambda p: f(p, y, physics).square().sum())(params)
    assert len(grads["prior"]) == 2 and grads["prior"][0]["conv.weight"].abs().sum() > 0


def test_untied_errors():
    with pytest.raises(ValueError, match=r"^unroll.optim.PGD: prior is a list of 2 but max_iter=3"):
        PGD(prior=[Tikhonov(), Tikhonov()], max_iter=3)
    with pytest.raises(ValueError, match=r"^unroll.unfolded.unfold: 2 algorithms"):
        unfold([algorithms.pgd(L2(), Tikhonov())] * 2, 3)
    f = unfold(algorithms.pgd(L2(), Tikhonov()), 3)
    physics, _, y = problem()
    with pytest.raises(ValueError, match=r"^unroll.unfolded.unfold: params\['prior'\] holds 2"):
        f({"stepsize": 1.0, "prior": [{}, {}]}, y, physics)


def test_untied_classical_run_and_deq_use_each_layer_and_the_last():
    physics, _, y = problem()
    priors = [PnP(TinyDenoiser(seed=k)) for k in range(3)]
    half, sigma = torch.tensor(0.5, dtype=DT), torch.tensor(0.2, dtype=DT)
    classical = PGD(prior=priors, stepsize=half, sigma_denoiser=sigma, max_iter=3, tol=None)
    ref = by_hand(priors, physics, y, [0.5] * 3, 0.2)
    torch.testing.assert_close(classical(y, physics), ref, rtol=0, atol=1e-14)
    # a DEQ runs the last layer (as DeepInverse's equilibrium step)
    cfg = DEQConfig(tol=1e-12, max_iter=300)
    deq = PGD(prior=priors, stepsize=half, sigma_denoiser=sigma, max_iter=3, DEQ=cfg)
    last = PGD(prior=priors[-1], stepsize=half, sigma_denoiser=sigma, max_iter=3, DEQ=cfg)
    torch.testing.assert_close(deq(y, physics), last(y, physics), rtol=0, atol=1e-12)


def test_untied_model_under_vmap_of_grad():
    physics, x_true, y = problem()
    model = PGD(
        prior=[PnP(TinyDenoiser(seed=k)) for k in range(2)],
        stepsize=0.4,
        sigma_denoiser=0.2,
        max_iter=2,
        unfold=True,
    ).double()
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, y, x):
        return (model.apply(p, y[None], physics) - x[None]).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, y, x_true)
    loop = [torch.func.grad(loss)(params, y[i], x_true[i]) for i in range(2)]
    for name in params:
        torch.testing.assert_close(per_sample[name], torch.stack([g[name] for g in loop]))
