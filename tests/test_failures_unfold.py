"""Unfolding and algorithms off the happy path (issue 10, items 5, 6 and 9).

* The explicit per-iteration rule: ``per_iteration=`` in the pure API, DeepInverse's list rule in
  the classes; checked against hand-written loops in float64.
* DeepInverse's DEQ semantics: ``trainable_params`` with ``DEQ=`` and ``unfold=False`` are
  trainable; the gradient equals a finite difference of the loss.
* Every bad input raises a ``ValueError`` / ``TypeError`` that names the API and says the fix
  (``BAD_INPUTS`` below, plus the dtype and DEQ cases).
"""

import pytest
import torch
from dense_physics import MatrixPhysics  # shared test operator (tests/dense_physics.py)
from torch import nn

from unroll import algorithms
from unroll.algorithms import Algorithm, params_at, run
from unroll.equilibrium import DEQConfig
from unroll.models import DnCNN
from unroll.optim import ADMM, GD, HQS, L2, PGD, PnP, Tikhonov
from unroll.physics import Denoising
from unroll.unfolded import unfold, unfolded_builder

DT = torch.float64


class ChannelDenoiser(nn.Module):
    """``D(x, σ) = x − σ tanh(w ⋆ x)`` per channel (depthwise), σ broadcast against ``x``."""

    def __init__(self, channels=3):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.conv = self.conv.to(DT)
        with torch.no_grad():
            self.conv.weight.copy_(0.5 * torch.rand(channels, 1, 3, 3, generator=g, dtype=DT))

    def forward(self, x, sigma):
        return x - sigma * torch.tanh(self.conv(x))


def matrix_problem(seed=0, batch=2, hw=(4, 4)):
    g = torch.Generator().manual_seed(seed)
    n = hw[0] * hw[1]
    mat = torch.eye(n, dtype=DT) + 0.3 * torch.randn(n, n, generator=g, dtype=DT) / n**0.5
    physics = MatrixPhysics(mat, (1, *hw))
    x = torch.rand(batch, 1, *hw, generator=g, dtype=DT)
    y = physics.A(x) + 0.05 * torch.randn(batch, n, generator=g, dtype=DT)
    return physics, x, y


def pgd_tikhonov_loop(physics, y, steps, lam):
    """PGD on ½‖Ax − y‖² + λ/2‖x‖² written out: x ← (x − γ_k Aᵀ(Ax − y)) / (1 + γ_k λ)."""
    x = physics.A_adjoint(y)
    for gamma in steps:
        x = (x - gamma * physics.A_adjoint(physics.A(x) - y)) / (1 + gamma * lam)
    return x


# ------------------------------------------------------------------ per-iteration rule
def test_per_iteration_stepsize_pure_and_class_equal_hand_loop():
    physics, _, y = matrix_problem()
    steps = [0.9, 0.3, 0.6, 0.45, 0.2]  # five iterations, images 4 wide: no shape coincidence
    ref = pgd_tikhonov_loop(physics, y, steps, 0.3)
    f = unfold(algorithms.pgd(L2(), Tikhonov()), 5, per_iteration=("stepsize",))
    got = f(
        {"stepsize": torch.tensor(steps, dtype=DT), "lambda_reg": torch.tensor(0.3, dtype=DT)},
        y,
        physics,
    )
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
    model = PGD(
        unfold=True,
        prior=Tikhonov(),
        stepsize=[torch.tensor(s, dtype=DT) for s in steps],
        lambda_reg=torch.tensor(0.3, dtype=DT),
        max_iter=5,
    )
    assert model.hyper.per_iteration_names == ("stepsize",)
    torch.testing.assert_close(model(y, physics), ref, rtol=0, atol=1e-12)
    x, _ = run(
        algorithms.pgd(L2(), Tikhonov()),
        y,
        physics,
        {"stepsize": torch.tensor(steps, dtype=DT), "lambda_reg": 0.3},
        5,
        per_iteration="stepsize",
    )
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-12)


def test_tensor_leading_dimension_equal_to_max_iter_is_still_shared():
    # Before: a (K,)-tensor with K = max_iter silently became per-iteration (and, with images
    # K wide, a per-column value in other places). Now a tensor is one value: here one step
    # size per image column, the same at every iteration.
    physics, _, y = matrix_problem()
    cols = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=DT)  # 4 iterations, images 4 wide
    f = unfold(algorithms.gd(L2(), Tikhonov()), 4)
    got = f({"stepsize": cols, "lambda_reg": torch.tensor(0.5, dtype=DT)}, y, physics)
    x = physics.A_adjoint(y)
    for _ in range(4):
        x = x - cols * (physics.A_adjoint(physics.A(x) - y) + 0.5 * x)
    torch.testing.assert_close(got, x, rtol=0, atol=1e-12)


def test_shared_non_scalar_g_param_equals_hand_broadcast():
    # σ of shape (3, 1, 1) (one per channel) with max_iter = 3: the old rule read it as one
    # value per iteration; DeepInverse's rule (and now unroll's) shares it.
    g = torch.Generator().manual_seed(1)
    y = torch.rand(2, 3, 5, 6, generator=g, dtype=DT)
    sigma = torch.tensor([0.1, 0.2, 0.3], dtype=DT).reshape(3, 1, 1)
    den = ChannelDenoiser()
    model = PGD(
        unfold=True,
        prior=PnP(den),
        stepsize=torch.tensor(0.7, dtype=DT),
        g_param=sigma,
        max_iter=3,
        trainable_params=["g_param"],
    )
    assert model.hyper.sigma_denoiser.shape == (3, 1, 1)
    assert model.hyper.per_iteration_names == ()
    got = model(y, Denoising())
    full = sigma.expand(2, 3, 5, 6)
    x = y.clone()
    with torch.no_grad():
        for _ in range(3):
            u = x - 0.7 * (x - y)
            x = u - full * torch.tanh(den.conv(u))
    torch.testing.assert_close(got.detach(), x, rtol=0, atol=1e-12)
    got.sum().backward()
    assert model.hyper.sigma_denoiser.grad.shape == (3, 1, 1)


def test_g_param_tensor_of_shape_1x1_and_one_element_list_are_shared():
    # DeepInverse's rules from issue 14: g_param=torch.tensor([[1.0]]) and sigma_denoiser=[0.1]
    long = HQS(unfold=True, prior=Tikhonov(), sigma_denoiser=[0.1], max_iter=1000)
    assert long.hyper.sigma_denoiser.shape == () and long.hyper.per_iteration_names == ()
    g = torch.Generator().manual_seed(2)
    y = torch.rand(1, 3, 6, 6, generator=g, dtype=DT)
    den = ChannelDenoiser()
    outs = [
        HQS(
            unfold=True,
            prior=PnP(den),
            stepsize=1.0,
            sigma_denoiser=sigma,
            max_iter=4,
            trainable_params=["sigma_denoiser"],
        ).double()(y, Denoising())
        for sigma in (0.25, torch.tensor([[0.25]]), [0.25])
    ]
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    torch.testing.assert_close(outs[2], outs[0], rtol=0, atol=0)


def test_per_iteration_prior_weights_untied_layers():
    # "prior" in per_iteration: every weight carries a leading dimension K (untied layers)
    g = torch.Generator().manual_seed(3)
    y = torch.rand(2, 3, 5, 5, generator=g, dtype=DT)
    den = ChannelDenoiser()
    weights = torch.rand(3, 3, 1, 3, 3, generator=g, dtype=DT)  # K = 3 stacked kernels
    f = unfold(algorithms.pgd(L2(), PnP(den)), 3, per_iteration=("prior", "g_param"))
    sig = torch.tensor([0.1, 0.2, 0.3], dtype=DT)
    got = f(
        {
            "stepsize": torch.tensor(0.5, dtype=DT),
            "sigma_denoiser": sig,
            "prior": {"conv.weight": weights},
        },
        y,
        Denoising(),
    )
    x = y.clone()
    for k in range(3):
        u = x - 0.5 * (x - y)
        conv = nn.functional.conv2d(u, weights[k], padding=1, groups=3)
        x = u - sig[k] * torch.tanh(conv)
    torch.testing.assert_close(got, x, rtol=0, atol=1e-12)


def test_trainable_params_as_one_string_is_one_name():
    a = PGD(unfold=True, prior=Tikhonov(), max_iter=2, trainable_params="stepsize")
    b = PGD(unfold=True, prior=Tikhonov(), max_iter=2, trainable_params=["stepsize"])
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    assert [n for n, _ in a.named_parameters()] == ["hyper.stepsize"]


def test_user_inputs_are_not_mutated():
    params_algo = {"stepsize": [1.0, 0.5], "g_param": torch.tensor([[0.1]])}
    trainable = ["g_param"]
    before = (list(params_algo["stepsize"]), params_algo["g_param"].clone())
    model = unfolded_builder(
        "PGD", params_algo=params_algo, trainable_params=trainable, prior=Tikhonov(), max_iter=2
    )
    with torch.no_grad():
        model.hyper.sigma_denoiser.mul_(2)
    assert params_algo["stepsize"] == before[0] and trainable == ["g_param"]
    assert torch.equal(params_algo["g_param"], before[1])
    params = {"stepsize": torch.ones(3), "g_param": torch.tensor(0.1)}
    p1 = params_at(params, 1, ("stepsize",))
    assert set(params) == {"stepsize", "g_param"} and float(p1["stepsize"]) == 1.0


# ------------------------------------------------------------------ DEQ semantics (item 9)
def deq_loss(lam, physics, x_true, y, trainable=("lambda_reg",)):
    cfg = DEQConfig(max_iter=3000, tol=1e-14, max_iter_backward=3000, tol_backward=1e-14)
    model = PGD(
        prior=Tikhonov(),
        stepsize=torch.tensor(0.5, dtype=DT),
        lambda_reg=torch.tensor(lam, dtype=DT),
        DEQ=cfg,
        trainable_params=list(trainable),
    )
    return model, ((model(y, physics) - x_true) ** 2).sum()


def test_deq_without_unfold_makes_trainable_params_trainable():
    physics, x_true, y = matrix_problem(seed=5)
    model, loss = deq_loss(0.3, physics, x_true, y)
    assert [n for n, _ in model.named_parameters()] == ["hyper.lambda_reg"]
    assert "hyper.stepsize" in dict(model.named_buffers())
    loss.backward()
    eps = 1e-5
    fd = deq_loss(0.3 + eps, physics, x_true, y)[1] - deq_loss(0.3 - eps, physics, x_true, y)[1]
    fd = fd.detach() / (2 * eps)
    torch.testing.assert_close(model.hyper.lambda_reg.grad, fd, rtol=1e-6, atol=1e-10)
    # and against the closed form: x* = (AᵀA + λI)⁻¹ Aᵀy, dL/dλ = −2 (x* − x)ᵀ (AᵀA + λI)⁻¹ x*
    m = physics.matrix
    h = m.T @ m + 0.3 * torch.eye(16, dtype=DT)
    xs = torch.linalg.solve(h, (y @ m).T)
    r = xs - x_true.reshape(2, -1).T
    exact = -2 * (r * torch.linalg.solve(h, xs)).sum()
    torch.testing.assert_close(model.hyper.lambda_reg.grad, exact, rtol=1e-8, atol=1e-12)


def test_deq_true_and_default_trainable_params():
    model = PGD(prior=Tikhonov(), DEQ=True)  # DeepInverse: True → the default DEQConfig
    assert model.deq_config == DEQConfig()
    assert sorted(n for n, _ in model.named_parameters()) == ["hyper.lambda_reg", "hyper.stepsize"]
    classical = PGD(prior=Tikhonov(), DEQ=False)
    assert classical.deq_config is None and not list(classical.parameters())


# ------------------------------------------------------------------ bad inputs
def _pgd():
    return algorithms.pgd(L2(), Tikhonov())


def _y():
    return torch.rand(1, 1, 4, 4, dtype=DT)


def _call_unfold(params, per_iteration=(), max_iter=5):
    physics, _, y = matrix_problem()
    return unfold(_pgd(), max_iter, per_iteration=per_iteration)(params, y, physics)


def _call_run(params, max_iter=3, **kw):
    physics, _, y = matrix_problem()
    return run(_pgd(), y, physics, params, max_iter, **kw)


def _custom_algorithm(names):
    """s₀ = 0, s_{k+1} = s_k − m_k (s_k − y): reads a key outside the standard ones."""
    return Algorithm(
        lambda y, ph, p: torch.zeros_like(y),
        lambda s, y, ph, p: s - p["momentum"] * (s - y),
        lambda s: s,
        names,
    )


BAD_INPUTS = {
    # unknown / misspelt parameter keys: did you mean
    "unfold misspelt key": (
        lambda: _call_unfold({"stepsize": torch.tensor(0.5), "lamda_reg": 0.1}),
        ValueError,
        ["unroll.unfolded.unfold: unknown parameter 'lamda_reg'", "did you mean 'lambda_reg'"],
    ),
    "run misspelt key": (
        lambda: _call_run({"stepsize": 0.5, "lamda_reg": 0.1}),
        ValueError,
        ["unroll.algorithms.run: unknown parameter 'lamda_reg'", "did you mean 'lambda_reg'"],
    ),
    "builder misspelt key": (
        lambda: unfolded_builder(
            "HQS", params_algo={"stepsize": 1.0, "lamda_reg": 0.1}, prior=Tikhonov()
        ),
        ValueError,
        ["unroll.unfolded: unknown parameter 'lamda_reg'", "did you mean 'lambda_reg'"],
    ),
    "builder key the algorithm does not read": (
        lambda: unfolded_builder(
            "PGD", params_algo={"stepsize": 1.0, "beta": 0.5}, prior=Tikhonov()
        ),
        ValueError,
        ["unroll.unfolded: unknown parameter 'beta'", "known: ['stepsize'"],
    ),
    "class misspelt keyword": (
        lambda: PGD(prior=Tikhonov(), lamda_reg=0.1),
        TypeError,
        ["unroll.optim.PGD: unexpected keyword 'lamda_reg'", "did you mean 'lambda_reg'"],
    ),
    "trainable_params misspelt": (
        lambda: PGD(unfold=True, prior=Tikhonov(), trainable_params=["lamda_reg"]),
        ValueError,
        [
            "unroll.optim.PGD: unknown name in trainable_params 'lamda_reg'",
            "did you mean 'lambda_reg'",
        ],
    ),
    "trainable_params not a list": (
        lambda: PGD(unfold=True, prior=Tikhonov(), trainable_params=5),
        TypeError,
        ["unroll.optim.PGD: trainable_params must be a list", "['stepsize'"],
    ),
    "trainable_params unset name": (
        lambda: HQS(unfold=True, prior=Tikhonov(), trainable_params=["g_param"]),
        ValueError,
        ["unroll.optim.HQS: trainable_params ['sigma_denoiser'] are not set", "give them a value"],
    ),
    "custom algorithm undeclared key": (
        lambda: run(_custom_algorithm(None), _y(), Denoising(), {"momentum": 0.5}, 2),
        ValueError,
        ["unroll.algorithms.run: unknown parameter 'momentum'", "known:"],
    ),
    # per_iteration: names, shapes, DEQ
    "per_iteration misspelt": (
        lambda: unfold(_pgd(), 5, per_iteration=("stepsze",)),
        ValueError,
        ["unroll.unfolded.unfold: unknown per_iteration name 'stepsze'", "did you mean 'stepsize'"],
    ),
    "per_iteration not names": (
        lambda: unfold(_pgd(), 5, per_iteration=5),
        TypeError,
        [
            "unroll.unfolded.unfold: per_iteration must be a tuple of parameter names",
            "('stepsize',)",
        ],
    ),
    "per_iteration wrong length": (
        lambda: _call_unfold({"stepsize": torch.ones(4)}, per_iteration=("stepsize",)),
        ValueError,
        [
            "unroll.unfolded.unfold: per-iteration parameter 'stepsize' needs leading "
            "dimension max_iter=5",
            "got (4,)",
            "drop 'stepsize' from per_iteration",
        ],
    ),
    "per_iteration scalar": (
        lambda: _call_run({"stepsize": 0.5}, per_iteration=("stepsize",)),
        ValueError,
        ["unroll.algorithms.run: per-iteration parameter 'stepsize'", "max_iter=3", "got float"],
    ),
    "per_iteration missing key": (
        lambda: _call_unfold({"stepsize": torch.ones(5)}, per_iteration=("lambda_reg",)),
        ValueError,
        ["unroll.unfolded.unfold: per_iteration names 'lambda_reg'", "add params['lambda_reg']"],
    ),
    "per_iteration with a DEQ": (
        lambda: unfold(_pgd(), 5, deq=DEQConfig(), per_iteration=("stepsize",)),
        ValueError,
        ["unroll.unfolded.unfold: a DEQ has one set of parameters", "per_iteration=()"],
    ),
    # (a DEQ given a per-iteration list uses its last value, as DeepInverse: tests/test_unfolded.py)
    "params_at old signature": (
        lambda: params_at({"stepsize": torch.ones(3)}, 0, 3),
        TypeError,
        ["unroll.algorithms.params_at", "('stepsize',)"],
    ),
    # DeepInverse's list rule
    "list of wrong length": (
        lambda: PGD(prior=Tikhonov(), stepsize=[1.0, 0.5, 0.2, 0.1], max_iter=5),
        ValueError,
        [
            "unroll.optim.PGD: parameter 'stepsize' has 4 per-iteration values but max_iter=5",
            "one-element list",
        ],
    ),
    "empty list": (
        lambda: PGD(prior=Tikhonov(), g_param=[], max_iter=5),
        ValueError,
        ["unroll.optim.PGD: parameter 'sigma_denoiser' has 0 per-iteration"],
    ),
    "list of unequal shapes": (
        lambda: PGD(prior=Tikhonov(), stepsize=[torch.ones(1), torch.ones(2)], max_iter=2),
        ValueError,
        [
            "unroll.optim.PGD: the per-iteration values of 'stepsize' have different shapes",
            "[(1,), (2,)]",
        ],
    ),
    "list of strings": (
        lambda: PGD(prior=Tikhonov(), stepsize=["1", "2"], max_iter=2),
        TypeError,
        ["unroll.optim.PGD: parameter 'stepsize' must be a number, a tensor"],
    ),
    "bool hyperparameter": (
        lambda: PGD(prior=Tikhonov(), lambda_reg=True),
        TypeError,
        ["unroll.optim.PGD: parameter 'lambda_reg' must be a number"],
    ),
    "params_algo not a dict": (
        lambda: unfolded_builder("PGD", params_algo=[("stepsize", 1.0)], prior=Tikhonov()),
        TypeError,
        ["unroll.unfolded: params_algo must be a dict"],
    ),
    "params not a dict": (
        lambda: _call_unfold([("stepsize", 1.0)]),
        TypeError,
        ["unroll.unfolded.unfold: params must be a dict"],
    ),
    # non-finite and non-positive values
    "stepsize inf": (
        lambda: PGD(prior=Tikhonov(), stepsize=float("inf")),
        ValueError,
        ["unroll.optim.PGD: stepsize must be finite", "stepsize=1.0"],
    ),
    "stepsize -inf": (
        lambda: GD(prior=Tikhonov(), stepsize=float("-inf")),
        ValueError,
        ["unroll.optim.GD: stepsize must be finite"],
    ),
    "stepsize inf in a list": (
        lambda: HQS(prior=Tikhonov(), stepsize=[1.0, float("inf")], max_iter=2),
        ValueError,
        ["unroll.optim.HQS: stepsize must be finite"],
    ),
    "lambda_reg inf tensor": (
        lambda: unfolded_builder(
            "PGD",
            params_algo={"stepsize": 1.0, "lambda_reg": torch.tensor(float("inf"))},
            prior=Tikhonov(),
        ),
        ValueError,
        ["unroll.unfolded: lambda_reg must be finite"],
    ),
    "beta nan": (
        lambda: ADMM(prior=Tikhonov(), beta=float("nan")),
        ValueError,
        ["unroll.optim.ADMM: beta must be finite"],
    ),
    "run stepsize inf": (
        lambda: _call_run({"stepsize": float("inf")}),
        ValueError,
        ["unroll.algorithms.run: stepsize must be finite"],
    ),
    "run stepsize negative": (
        lambda: _call_run({"stepsize": -0.5}),
        ValueError,
        ["unroll.algorithms.run: stepsize must be > 0"],
    ),
    "sigma_denoiser zero": (
        lambda: PGD(prior=Tikhonov(), sigma_denoiser=0.0),
        ValueError,
        ["unroll.optim.PGD: sigma_denoiser must be > 0"],
    ),
    # counts and tolerances
    "max_iter zero": (
        lambda: PGD(prior=Tikhonov(), max_iter=0),
        ValueError,
        ["unroll.optim.PGD: max_iter must be an int >= 1", "got 0"],
    ),
    "max_iter negative (unfold)": (
        lambda: unfold(_pgd(), -2),
        ValueError,
        ["unroll.unfolded.unfold: max_iter must be an int >= 1"],
    ),
    "max_iter bool": (
        lambda: PGD(prior=Tikhonov(), max_iter=True),
        TypeError,
        ["unroll.optim.PGD: max_iter must be an int >= 1", "a bool"],
    ),
    "max_iter bool (run)": (
        lambda: _call_run({"stepsize": 0.5}, max_iter=True),
        TypeError,
        ["unroll.algorithms.run: max_iter must be an int >= 1", "a bool"],
    ),
    "max_iter float (builder)": (
        lambda: unfolded_builder("PGD", prior=Tikhonov(), max_iter=5.0),
        TypeError,
        ["unroll.unfolded: max_iter must be an int >= 1", "float"],
    ),
    "check_every zero": (
        lambda: _call_run({"stepsize": 0.5}, tol=1e-3, check_every=0),
        ValueError,
        ["unroll.algorithms.run: check_every must be an int >= 1"],
    ),
    "check_every bool": (
        lambda: _call_run({"stepsize": 0.5}, check_every=True),
        TypeError,
        ["unroll.algorithms.run: check_every must be an int >= 1", "a bool"],
    ),
    "tol inf": (
        lambda: PGD(prior=Tikhonov(), tol=float("inf")),
        ValueError,
        ["unroll.optim.PGD: tol must be a finite number > 0 or None"],
    ),
    "run tol zero": (
        lambda: _call_run({"stepsize": 0.5}, tol=0.0),
        ValueError,
        ["unroll.algorithms.run: tol must be a finite number > 0"],
    ),
    # wrong objects
    "DEQ not a config": (
        lambda: PGD(prior=Tikhonov(), DEQ="anderson"),
        TypeError,
        ["unroll.optim.PGD: DEQ must be None, a bool or an unroll.DEQConfig"],
    ),
    "unfold deq not a config": (
        lambda: unfold(_pgd(), 3, deq={"max_iter": 5}),
        TypeError,
        ["unroll.unfolded.unfold: deq must be None or an unroll.DEQConfig"],
    ),
    "run algorithm not an Algorithm": (
        lambda: run(lambda x: x, _y(), Denoising(), {"stepsize": 1.0}, 3),
        TypeError,
        ["unroll.algorithms.run: algorithm must be an unroll.algorithms.Algorithm"],
    ),
    "y not a tensor": (
        lambda: PGD(prior=Tikhonov(), max_iter=2)([1.0, 2.0], Denoising()),
        TypeError,
        ["unroll.optim.PGD: y must be a tensor"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_clear_error(case):
    fn, error, words = BAD_INPUTS[case]
    with pytest.raises(error) as info:
        fn()
    message = str(info.value)
    assert message.startswith(words[0].split(":")[0] + ":"), message
    for w in words:
        assert w in message, f"{w!r} not in {message!r}"


def test_custom_algorithm_declares_its_keys():
    alg = _custom_algorithm(("momentum",))
    y = torch.ones(1, 2, dtype=DT)
    x, _ = run(
        alg,
        y,
        Denoising(),
        {"momentum": torch.tensor([0.5, 0.25], dtype=DT)},
        2,
        per_iteration=("momentum",),
    )
    torch.testing.assert_close(x, 0.625 * y, rtol=0, atol=1e-15)  # s₁ = y/2, s₂ = 5y/8


# ------------------------------------------------------------------ mixed precision
@pytest.mark.parametrize("form", ["module", "pure"])
def test_float32_model_on_float64_y_names_both_dtypes_and_the_fix(form):
    torch.manual_seed(0)
    model = PGD(
        unfold=True, prior=PnP(DnCNN(depth=3, nf=4)), stepsize=1.0, sigma_denoiser=0.1, max_iter=2
    )
    y = torch.rand(1, 3, 8, 8, dtype=DT)
    with pytest.raises(TypeError) as info:
        if form == "module":
            model(y, Denoising())
        else:
            model._core(model.params(DT), y, Denoising())
    message = str(info.value)
    api = "unroll.optim.PGD" if form == "module" else "unroll.unfolded.unfold"
    assert message.startswith(
        f"{api}: the model's parameters are torch.float32 but y is torch.float64"
    )
    assert "model.double()" in message and "y.to(torch.float32)" in message
    # the fix works and is exact: the same network in float64
    x64 = model.double()(y, Denoising())
    x32 = model.float()(y.float(), Denoising())
    assert x64.dtype == DT
    torch.testing.assert_close(x64.float(), x32, rtol=1e-5, atol=1e-6)
