"""Unfolded networks and DEQs: gradients (finite differences, unrolled-to-convergence),
trainable parameters, per-iteration vs shared parameters, the pure form and vmap."""

import pytest
import torch
from dense_physics import MatrixPhysics  # shared test operator (tests/dense_physics.py)
from helpers import algorithm_names, algorithm_spec, central_fd  # shared tables
from torch import nn

from unroll import algorithms, tree
from unroll.equilibrium import DEQConfig
from unroll.optim import L2, PnP, Tikhonov
from unroll.unfolded import Unfolded, unfold, unfolded_builder

DT = torch.float64
NAMES = algorithm_names()


class TinyDenoiser(nn.Module):
    """``D(x, σ) = x − σ tanh(w ⋆ x)``: smooth, contractive for small σ·‖w‖."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False).to(DT)
        with torch.no_grad():
            self.conv.weight.copy_(0.5 * torch.rand(1, 1, 3, 3, generator=g, dtype=DT))

    def forward(self, x, sigma):
        return x - sigma * torch.tanh(self.conv(x))


class TinyRED(PnP):
    """RED-style gradient from the tiny denoiser (for GD)."""

    def grad(self, x, sigma=None, weights=None):
        return x - self.denoise(x, sigma, weights)


def problem(seed=0, batch=2, hw=(4, 4)):
    """A well-conditioned square operator (``AᵀA`` eigenvalues in about [0.4, 1.8]): every
    algorithm below is then a contraction with the parameters of :func:`base_params`."""
    g = torch.Generator().manual_seed(seed)
    n = m = hw[0] * hw[1]
    mat = torch.eye(n, dtype=DT) + 0.3 * torch.randn(m, n, generator=g, dtype=DT) / n**0.5
    physics = MatrixPhysics(mat, (1, *hw))
    x = torch.rand(batch, 1, *hw, generator=g, dtype=DT)
    y = physics.A(x) + 0.05 * torch.randn(batch, m, generator=g, dtype=DT)
    return physics, x, y


def base_params(name):
    p = {"stepsize": 0.4, "lambda_reg": 0.3, "sigma_denoiser": 0.2}
    if name == "pdhg":
        p["stepsize_dual"] = 0.8
    return p


def prior_for(name):
    needs_grad = algorithm_spec(name).prior_grad  # GD, MD: the prior's gradient
    return TinyRED(TinyDenoiser()) if needs_grad else PnP(TinyDenoiser())


def to_tensors(params):
    return {k: torch.tensor(v, dtype=DT) for k, v in params.items()}


# ------------------------------------------------------------------ finite differences
@pytest.mark.parametrize("name", NAMES)
def test_unrolled_gradient_matches_finite_differences(name):
    physics, x_true, y = problem()
    prior = prior_for(name)
    alg = getattr(algorithms, name)(L2(), prior)
    k = 4
    f = unfold(alg, k, per_iteration=("stepsize",))
    params = to_tensors(base_params(name))
    params["stepsize"] = torch.linspace(0.3, 0.5, k, dtype=DT)  # per-iteration
    params["prior"] = {n: p.detach() for n, p in prior.weights().items()}

    def loss(p):
        return ((f(p, y, physics) - x_true) ** 2).sum()

    grads = torch.func.grad(loss)(params)
    flat, spec = tree.flatten(params)
    gflat = tree.leaves(grads)
    g = torch.Generator().manual_seed(1)
    for i, leaf in enumerate(flat):
        d = torch.randn(leaf.shape, generator=g, dtype=DT)
        # one leaf at a time: the direction is d on leaf i, zero elsewhere
        direction = tree.unflatten(
            spec, [d if j == i else torch.zeros_like(v) for j, v in enumerate(flat)]
        )
        fd = central_fd(loss, params, direction, eps=1e-6)
        torch.testing.assert_close((gflat[i] * d).sum(), fd, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ DEQ vs unrolled
@pytest.mark.parametrize("name", NAMES)
def test_deq_gradient_matches_unrolled_to_convergence(name):
    physics, x_true, y = problem(seed=2)
    grads = []
    for deq in (
        None,
        DEQConfig(max_iter=2000, tol=1e-13, max_iter_backward=2000, tol_backward=1e-13),
    ):
        torch.manual_seed(0)
        model = unfolded_builder(
            name.upper(),
            params_algo=base_params(name),
            data_fidelity=L2(),
            prior=prior_for(name),
            max_iter=600 if deq is None else 1,
            DEQ=deq,
            trainable_params=list(base_params(name)),
        )
        loss = ((model(y, physics) - x_true) ** 2).sum()
        g = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        # a PnP prior ignores γλ: lambda_reg is unused (None) unrolled, zero through the DEQ
        grads.append(
            {
                n: torch.zeros_like(p) if gi is None else gi
                for (n, p), gi in zip(model.named_parameters(), g)
            }
        )
    unrolled, implicit = grads
    for key in unrolled:
        torch.testing.assert_close(implicit[key], unrolled[key], rtol=1e-6, atol=1e-9)


def test_deq_jacobian_free_is_one_step_at_the_fixed_point():
    physics, x_true, y = problem(seed=4)
    prior = PnP(TinyDenoiser())
    alg = algorithms.hqs(L2(), prior)
    params = to_tensors(base_params("hqs"))
    params["prior"] = {n: p.detach() for n, p in prior.weights().items()}
    cfg = DEQConfig(jacobian_free=True, max_iter=2000, tol=1e-13)
    f = unfold(alg, 1, deq=cfg)
    star = unfold(alg, 1, deq=DEQConfig(max_iter=2000, tol=1e-13))(params, y, physics)

    def jfb_loss(p):  # the gradient of one application of the step at the detached fixed point
        state = algorithms.HQSState(star.detach())
        return ((alg.output(alg.step(state, y, physics, p)) - x_true) ** 2).sum()

    got = torch.func.grad(lambda p: ((f(p, y, physics) - x_true) ** 2).sum())(params)
    want = torch.func.grad(jfb_loss)(params)
    for a, b in zip(tree.leaves(got), tree.leaves(want)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_deq_anderson_matches_plain_iteration():
    physics, x_true, y = problem(seed=3)
    out = {}
    for label, cfg in {
        "plain": DEQConfig(max_iter=2000, tol=1e-12, max_iter_backward=2000, tol_backward=1e-12),
        "anderson": DEQConfig(
            anderson_acceleration_forward=True,
            anderson_acceleration_backward=True,
            max_iter=500,
            tol=1e-12,
            max_iter_backward=500,
            tol_backward=1e-12,
        ),
    }.items():
        model = unfolded_builder(
            "ADMM",
            params_algo=base_params("admm"),
            prior=prior_for("admm"),
            DEQ=cfg,
            trainable_params=["stepsize", "lambda_reg"],
        )
        x = model(y, physics)
        loss = ((x - x_true) ** 2).sum()
        out[label] = (x.detach(), torch.autograd.grad(loss, model.hyper.lambda_reg)[0])
    torch.testing.assert_close(out["anderson"][0], out["plain"][0], rtol=0, atol=1e-9)
    torch.testing.assert_close(out["anderson"][1], out["plain"][1], rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ parameters
def test_trainable_params_exact_and_user_inputs_untouched():
    trainable = ("stepsize", "g_param")
    trainable_list = list(trainable)
    params_algo = {"stepsize": 1.0, "g_param": [0.1, 0.2, 0.3], "lambda_reg": 2.0}
    snapshot = dict(params_algo)
    model = unfolded_builder(
        "HQS",
        params_algo=params_algo,
        trainable_params=trainable_list,
        prior=PnP(TinyDenoiser()),
        max_iter=3,
    )
    assert trainable_list == list(trainable) and params_algo == snapshot
    learnable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert learnable == {"hyper.stepsize", "hyper.sigma_denoiser", "prior.denoiser.conv.weight"}
    buffers = dict(model.named_buffers())
    assert set(buffers) == {"hyper.lambda_reg"} and float(buffers["hyper.lambda_reg"]) == 2.0
    assert model.hyper.sigma_denoiser.shape == (3,)
    with pytest.raises(ValueError, match="^unroll.unfolded: trainable_params \\['lambda_reg'\\]"):
        unfolded_builder(
            "PGD", params_algo={"stepsize": 1.0}, trainable_params=["lambda_reg"], prior=Tikhonov()
        )
    with pytest.raises(ValueError, match="^unroll.unfolded: unknown name in trainable_params"):
        unfolded_builder(
            "PGD", params_algo={"stepsize": 1.0}, trainable_params=["beta"], prior=Tikhonov()
        )  # PGD has no relaxation
    with pytest.raises(ValueError, match="^unroll.unfolded: unknown parameter 'lamda'"):
        unfolded_builder("PGD", params_algo={"stepsize": 1.0, "lamda": 1.0}, prior=Tikhonov())
    with pytest.raises(ValueError, match="^unroll.unfolded: parameter 'stepsize' has 2"):
        unfolded_builder("PGD", params_algo={"stepsize": [1.0, 2.0]}, prior=Tikhonov(), max_iter=3)
    with pytest.raises(ValueError, match="^unroll.unfolded: unknown iteration"):
        unfolded_builder("NOPE", params_algo={"stepsize": 1.0}, prior=Tikhonov())


@pytest.mark.parametrize(
    ("params_algo", "message"),
    [
        ({"stepsize": 0.0}, "stepsize must be > 0"),
        ({"stepsize": [1.0, -1.0, 1.0]}, "stepsize must be > 0"),
        ({"stepsize": torch.tensor([1.0, 1.0, 0.0])}, "stepsize must be > 0"),
        ({"stepsize": 1.0, "g_param": -0.1}, "g_param must be > 0"),
        ({"stepsize": 1.0, "lambda_reg": torch.tensor(-1.0)}, "lambda_reg must be >= 0"),
        ({"stepsize": 1.0, "stepsize_dual": [0.5, 0.0, 0.5]}, "stepsize_dual must be > 0"),
    ],
)
def test_builder_rejects_non_positive_hyperparameters(params_algo, message):
    with pytest.raises(ValueError, match=f"^unroll.unfolded: {message}"):
        unfolded_builder("PDCP", params_algo=params_algo, prior=Tikhonov(), max_iter=3)


def test_tensor_is_one_shared_value_and_list_length_is_checked():
    # DeepInverse's rule: a tensor is one value whatever its shape; only lists are per-iteration
    model = unfolded_builder(
        "PGD", params_algo={"stepsize": torch.ones(3)}, prior=Tikhonov(), max_iter=3
    )
    assert model.hyper.stepsize.shape == (3,) and model.hyper.per_iteration_names == ()
    with pytest.raises(ValueError, match="^unroll.unfolded: parameter 'stepsize' has 2 per-"):
        unfolded_builder("PGD", params_algo={"stepsize": [1.0, 1.0]}, prior=Tikhonov(), max_iter=3)
    model = unfolded_builder(
        "PGD", params_algo={"stepsize": list(torch.ones(3))}, prior=Tikhonov(), max_iter=3
    )
    assert model.hyper.stepsize.shape == (3,) and model.hyper.per_iteration_names == ("stepsize",)


def test_run_rejects_non_positive_stepsize():
    alg = algorithms.gd(L2(), Tikhonov())
    y = torch.ones(1, 1, 2, 2, dtype=DT)
    physics = MatrixPhysics(torch.eye(4, dtype=DT), (1, 2, 2))
    with pytest.raises(ValueError, match="^unroll.algorithms.run: stepsize must be > 0"):
        algorithms.run(alg, y, physics, {"stepsize": -1.0}, 3)


def test_parameter_dtype_follows_input():
    model = unfolded_builder(
        "PGD", params_algo={"stepsize": torch.tensor(0.5, dtype=DT)}, prior=Tikhonov(), max_iter=2
    )
    assert model.hyper.stepsize.dtype == DT  # not forced to float32
    model32 = unfolded_builder(
        "PGD", params_algo={"stepsize": 0.5, "lambda_reg": 0.3}, prior=Tikhonov(), max_iter=2
    )
    physics, _, y = problem()
    out = model32(y, physics)  # float32 parameters, float64 data: computed in float64
    assert out.dtype == DT
    ref = unfold(algorithms.pgd(L2(), Tikhonov()), 2)(
        {"stepsize": torch.tensor(0.5, dtype=DT), "lambda_reg": torch.tensor(0.3, dtype=DT)},
        y,
        physics,
    )
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)  # float32-rounded parameters
    out.sum().backward()
    assert model32.hyper.stepsize.grad.dtype == torch.float32


def test_per_iteration_vs_shared():
    physics, x_true, y = problem()
    k = 3
    shared = unfolded_builder(
        "PGD", params_algo={"stepsize": 0.4, "g_param": 0.2}, prior=PnP(TinyDenoiser()), max_iter=k
    ).double()
    per_it = unfolded_builder(
        "PGD",
        params_algo={"stepsize": [0.4] * k, "g_param": 0.2},
        prior=PnP(TinyDenoiser()),
        max_iter=k,
    ).double()
    xs, xp = shared(y, physics), per_it(y, physics)
    torch.testing.assert_close(xs, xp, rtol=0, atol=0)
    ((xs - x_true) ** 2).sum().backward()
    ((xp - x_true) ** 2).sum().backward()
    # the shared gradient is the sum of the per-iteration gradients
    torch.testing.assert_close(shared.hyper.stepsize.grad, per_it.hyper.stepsize.grad.sum())
    assert per_it.hyper.stepsize.grad.shape == (k,)
    assert not torch.allclose(per_it.hyper.stepsize.grad[0], per_it.hyper.stepsize.grad[-1])


def test_pure_apply_matches_module_and_backward():
    physics, x_true, y = problem()
    model = unfolded_builder(
        "DRS",
        params_algo={"stepsize": 0.5, "g_param": 0.1},
        trainable_params=["stepsize", "g_param"],
        prior=PnP(TinyDenoiser()),
        max_iter=3,
    ).double()
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p):
        return ((model.apply(p, y, physics) - x_true) ** 2).sum()

    g_func = torch.func.grad(loss)(params)
    ((model(y, physics) - x_true) ** 2).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(g_func[n], p.grad)


def test_vmap_over_a_batch_of_physics():
    phys = [problem(seed=s)[0] for s in range(3)]
    ys = torch.stack([problem(seed=s)[2][0] for s in range(3)])
    stacked = MatrixPhysics(torch.stack([p.matrix for p in phys]), phys[0].shape)
    model = unfolded_builder(
        "HQS", params_algo={"stepsize": 0.5, "g_param": 0.1}, prior=PnP(TinyDenoiser()), max_iter=3
    ).double()
    params = dict(model.named_parameters())

    def single(physics, y):
        return model.apply(params, y[None], physics)[0]

    batched = torch.func.vmap(single)(stacked, ys)
    looped = torch.stack([single(p, y) for p, y in zip(phys, ys)])
    torch.testing.assert_close(batched, looped)
    # and per-physics gradients of the kernel-like leaves
    gb = torch.func.vmap(torch.func.grad(lambda ph, y: single(ph, y).square().sum()))(stacked, ys)
    gl = torch.stack(
        [
            torch.func.grad(lambda ph, y: single(ph, y).square().sum())(p, y).matrix
            for p, y in zip(phys, ys)
        ]
    )
    torch.testing.assert_close(gb.matrix, gl)


def test_deq_with_per_iteration_lists_uses_the_last_value():
    # DeepInverse accepts per-iteration lists in a DEQ; its equilibrium step uses the last ones
    physics, _, y = problem()
    cfg = DEQConfig(tol=1e-12, max_iter=500, tol_backward=1e-12, max_iter_backward=500)
    kw = dict(prior=Tikhonov(), max_iter=2, DEQ=cfg, trainable_params=["stepsize"])
    listed = unfolded_builder("HQS", params_algo={"stepsize": [0.1, 0.2]}, **kw).double()
    last = unfolded_builder("HQS", params_algo={"stepsize": 0.2}, **kw).double()
    out, ref = listed(y, physics), last(y, physics)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    out.sum().backward()
    ref.sum().backward()
    grad = listed.hyper.stepsize.grad
    assert grad.shape == (2,) and grad[0] == 0
    torch.testing.assert_close(grad[1], last.hyper.stepsize.grad)


def test_unfolded_is_a_module_with_unfold_false_classical_run():
    physics, _, y = problem()
    model = Unfolded(
        "PGD",
        prior=Tikhonov(),
        params_algo={"stepsize": 0.3, "lambda_reg": 0.5},
        trainable_params=["stepsize"],
        max_iter=5000,
        unfold=False,
        tol=1e-12,
    )
    assert not any(True for _ in model.parameters())
    x = model(y, physics)
    m = physics.matrix
    ref = torch.linalg.solve(m.T @ m + 0.5 * torch.eye(16, dtype=DT), (y @ m).T).T
    torch.testing.assert_close(x.reshape(2, -1), ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["HQS", "ADMM", "DRS"])
def test_deq_with_cg_prox_under_torch_func_grad(name):
    # The step calls Blur's CG prox, itself an implicit layer: torch.func.grad of the pure
    # form must equal .backward() (the nested implicit rules run inside each other).
    from unroll import physics as P

    torch.manual_seed(3)
    ph = P.Blur(torch.rand(3, 3, dtype=torch.float64) / 4, padding="valid", tol=1e-11, max_iter=300)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    y = ph.A(x)
    params = {"stepsize": 1.0, "lambda_reg": 0.5}
    if name != "HQS":
        params["beta"] = 1.0
    model = unfolded_builder(
        name,
        params_algo=params,
        prior=Tikhonov(),
        trainable_params=["stepsize", "lambda_reg"],
        DEQ=DEQConfig(max_iter=500, tol=1e-11, tol_backward=1e-11, max_iter_backward=500),
    ).double()
    ((model(y, ph) - x) ** 2).sum().backward()
    ref = {n: p.grad for n, p in model.named_parameters()}
    params = {n: p.detach() for n, p in model.named_parameters()}
    got = torch.func.grad(lambda p: ((model.apply(p, y, ph) - x) ** 2).sum())(params)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-8, atol=1e-10)


def test_vmap_over_per_iteration_stepsizes():
    # a batch of K-long step-size schedules: vmap sees each (K,) schedule; equals a loop
    physics, x_true, y = problem()
    f = unfold(algorithms.pgd(L2(), Tikhonov()), 3, per_iteration="stepsize")
    schedules = torch.tensor([[0.2, 0.4, 0.6], [0.5, 0.5, 0.5], [0.9, 0.1, 0.3]], dtype=DT)

    def loss(steps):
        return ((f({"stepsize": steps, "lambda_reg": 0.3}, y, physics) - x_true) ** 2).sum()

    batched = torch.func.vmap(torch.func.grad(loss))(schedules)
    looped = torch.stack([torch.func.grad(loss)(s) for s in schedules])
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-12)
    assert batched.shape == (3, 3)
