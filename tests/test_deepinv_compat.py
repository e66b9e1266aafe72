"""DeepInverse 0.4.1 compatibility of the algorithm classes: ``params_algo=`` with its key
names, loading its ``state_dict`` keys, shared tensor hyperparameters, ``init=``,
``update_parameters``, ``has_converged``, ``g_first`` and ``anderson_acceleration``.

Checked in float64 against dense closed forms, hand-written loops and finite differences. The
DeepInverse key format is written down here (read off DeepInverse 0.4.1 models); deepinv itself
is not imported."""

import pytest
import torch
from dense_physics import MatrixPhysics  # shared test operator (tests/dense_physics.py)
from torch import nn

from unroll import algorithms
from unroll.algorithms.base import initial_state
from unroll.equilibrium import DEQConfig
from unroll.optim import ADMM, DRS, FISTA, HQS, L2, PGD, AndersonAccelerationConfig, PnP, Tikhonov
from unroll.unfolded import unfold, unfolded_builder

DT = torch.float64
LAM = 0.3


class TinyDenoiser(nn.Module):
    """``D(x, σ) = x − σ tanh(w ⋆ x + b)``."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(1, 1, 3, padding=1).to(DT)
        with torch.no_grad():
            self.conv.weight.copy_(0.5 * torch.rand(1, 1, 3, 3, generator=g, dtype=DT))
            self.conv.bias.fill_(0.1)

    def forward(self, x, sigma):
        return x - sigma * torch.tanh(self.conv(x))


def problem(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    mat = torch.eye(16, dtype=DT) + 0.3 * torch.randn(16, 16, generator=g, dtype=DT) / 4
    physics = MatrixPhysics(mat, (1, 4, 4))
    x = torch.rand(batch, 1, 4, 4, generator=g, dtype=DT)
    return physics, mat, physics.A(x)


def minimiser(mat, y, lam=LAM):
    """``argmin ½‖Ax − y‖² + λ/2 ‖x‖²`` densely: ``(AᵀA + λI)⁻¹Aᵀy``."""
    h = mat.T @ mat + lam * torch.eye(mat.shape[1], dtype=DT)
    return torch.linalg.solve(h, (y @ mat).T).T.reshape(y.shape[0], 1, 4, 4)


def t(v):
    return torch.tensor(v, dtype=DT)


# --------------------------------------------------------------------------- params_algo
def test_params_algo_with_deepinverse_keys_overrides_keywords():
    physics, mat, y = problem()
    model = PGD(
        prior=Tikhonov(),
        stepsize=123.0,  # overridden, as in DeepInverse
        params_algo={"stepsize": t(0.5), "lambda": t(LAM), "g_param": None},
        max_iter=400,
        tol=1e-12,
    )
    assert set(model.hyper.names) == {"stepsize", "lambda_reg"}
    torch.testing.assert_close(model(y, physics), minimiser(mat, y), rtol=0, atol=1e-10)
    builder = unfolded_builder(
        "PGD", params_algo={"stepsize": 0.5, "lambda": 0.1}, prior=Tikhonov(), max_iter=2
    )
    assert sorted(n for n, _ in builder.named_parameters()) == [
        "hyper.lambda_reg",
        "hyper.stepsize",
    ]  # DeepInverse's default trainable_params: lambda and stepsize


def test_tensor_hyperparameter_is_one_shared_value():
    # DeepInverse 0.4.1: g_param=torch.tensor([[1.0]]) is one shared value (its leading
    # dimension of 1 is one entry); unroll keeps it whole: a (1, 1) tensor shared by all
    model = PGD(prior=Tikhonov(), g_param=torch.tensor([[1.0]]), max_iter=5, unfold=True)
    assert model.hyper.sigma_denoiser.shape == (1, 1) and model.hyper.per_iteration_names == ()
    per_band = PGD(prior=Tikhonov(), g_param=torch.full((3, 1, 1), 0.1), max_iter=3)
    assert per_band.hyper.per_iteration_names == ()


# --------------------------------------------------------------------------- state_dict
# DeepInverse 0.4.1, unfolded_builder("PGD", params_algo={"stepsize": [1.0, 0.5, 0.25],
# "g_param": 0.1, "lambda": 2.0}, trainable_params=["stepsize", "g_param"],
# prior=PnP(denoiser), max_iter=3).state_dict() has exactly these keys (all float32, shape ()):
#   init_params_algo.g_param.0, init_params_algo.stepsize.{0,1,2},
#   params_algo.g_param.0, params_algo.stepsize.{0,1,2}, prior.0.denoiser.<weights>
# (lambda is not trainable there, so it is not saved). An untied PGD(prior=[p0, p1], ...,
# unfold=True, trainable_params=["stepsize", "lambda_reg"]) saves params_algo.lambda.0,
# params_algo.stepsize.{0,1}, the init_params_algo copies, prior.0.denoiser.*, prior.1.denoiser.*;
# a tensor g_param=torch.tensor([[1.0]]) is saved as params_algo.g_param.0 of shape (1,).
def deepinv_state_dict(stepsizes, g_param, denoisers):
    sd = {}
    for prefix in ("params_algo", "init_params_algo"):
        sd[f"{prefix}.g_param.0"] = torch.tensor(g_param)
        for k, s in enumerate(stepsizes):
            sd[f"{prefix}.stepsize.{k}"] = torch.tensor(s)
    for k, den in enumerate(denoisers):
        for name, w in den.state_dict().items():
            sd[f"prior.{k}.denoiser.{name}"] = w.float()
    return sd


def test_load_deepinverse_state_dict_of_an_unfolded_model():
    physics, _, y = problem()
    trained = TinyDenoiser(seed=7)
    sd = deepinv_state_dict([1.0, 0.5, 0.25], 0.125, [trained])
    model = unfolded_builder(
        "PGD",
        params_algo={"stepsize": [1.0, 1.0, 1.0], "g_param": 0.3, "lambda": 2.0},
        trainable_params=["stepsize", "g_param"],
        prior=PnP(TinyDenoiser(seed=0)),
        max_iter=3,
    ).double()
    copy = dict(sd)
    model.load_state_dict(sd)  # DeepInverse's keys recognised
    assert sd == copy  # not mutated
    reference = unfolded_builder(
        "PGD",
        params_algo={"stepsize": [1.0, 0.5, 0.25], "g_param": 0.125, "lambda": 2.0},
        trainable_params=["stepsize", "g_param"],
        prior=PnP(trained),
        max_iter=3,
    ).double()
    torch.testing.assert_close(model(y, physics), reference(y, physics), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.hyper.lambda_reg, t(2.0))  # not in the checkpoint: kept
    again = unfolded_builder(
        "PGD",
        params_algo={"stepsize": [1.0, 1.0, 1.0], "g_param": 0.3, "lambda": 2.0},
        trainable_params=["stepsize", "g_param"],
        prior=PnP(TinyDenoiser(seed=0)),
        max_iter=3,
    ).double()
    missing, unexpected = again.load_deepinv_state_dict(sd)
    assert missing == [] and unexpected == []
    torch.testing.assert_close(again(y, physics), reference(y, physics), rtol=0, atol=1e-6)


def test_load_deepinverse_state_dict_untied_priors_and_tensor_g_param():
    physics, _, y = problem()
    dens = [TinyDenoiser(seed=3), TinyDenoiser(seed=4)]
    sd = deepinv_state_dict([0.5, 0.25], [0.2], dens)  # g_param saved as shape (1,)
    sd["params_algo.lambda.0"] = torch.tensor(0.5)
    model = PGD(
        prior=[PnP(TinyDenoiser(seed=0)), PnP(TinyDenoiser(seed=1))],
        stepsize=[1.0, 1.0],
        g_param=torch.tensor([[1.0]], dtype=DT),
        lambda_reg=1.0,
        unfold=True,
        max_iter=2,
        trainable_params=["stepsize", "lambda_reg", "g_param"],
    ).double()
    model.load_state_dict(sd)
    reference = PGD(
        prior=[PnP(d) for d in dens],
        stepsize=[0.5, 0.25],
        g_param=torch.tensor([[0.2]], dtype=DT),
        lambda_reg=0.5,
        unfold=True,
        max_iter=2,
    ).double()
    torch.testing.assert_close(model(y, physics), reference(y, physics), rtol=0, atol=1e-6)
    assert model.hyper.sigma_denoiser.shape == (1, 1)


def test_load_deepinverse_state_dict_errors():
    model = PGD(prior=Tikhonov(), stepsize=1.0, max_iter=3, unfold=True)
    sd = {f"params_algo.stepsize.{k}": torch.tensor(1.0) for k in range(3)}
    with pytest.raises(
        ValueError,
        match="^unroll.optim.PGD.load_deepinv_state_dict: the "
        "checkpoint has 3 per-iteration values of 'stepsize'",
    ):
        model.load_deepinv_state_dict(sd)
    with pytest.raises(ValueError, match="hyperparameter 'beta'"):
        model.load_deepinv_state_dict({"params_algo.beta.0": torch.tensor(1.0)})


# --------------------------------------------------------------------------- conveniences
def test_init_forms_match_a_hand_written_loop():
    physics, mat, y = problem()
    x0 = torch.full((2, 1, 4, 4), 0.7, dtype=DT)
    model = PGD(prior=Tikhonov(), stepsize=t(0.5), lambda_reg=t(LAM), max_iter=3, unfold=True)
    x = x0
    for _ in range(3):  # PGD by hand: x ← (x − γ Aᵀ(Ax − y)) / (1 + γλ)
        x = (x - 0.5 * physics.A_adjoint(physics.A(x) - y)) / (1 + 0.5 * LAM)
    for init in (x0, (x0,), (x0, x0), {"est": (x0, x0)}, lambda y, physics: x0):
        torch.testing.assert_close(model(y, physics, init=init), x, rtol=0, atol=1e-14)
    classical = PGD(prior=Tikhonov(), stepsize=t(0.5), lambda_reg=t(LAM), max_iter=3, tol=None)
    torch.testing.assert_close(classical(y, physics, init=x0), x, rtol=0, atol=1e-14)
    custom = PGD(
        prior=Tikhonov(),
        stepsize=t(0.5),
        lambda_reg=t(LAM),
        max_iter=3,
        unfold=True,
        custom_init=lambda y, physics: x0,
    )
    torch.testing.assert_close(custom(y, physics), x, rtol=0, atol=1e-14)
    # ADMM: (x0, u0) sets the scaled dual
    state = initial_state(algorithms.admm(L2(), Tikhonov()), y, physics, {}, (x0, 2 * x0))
    assert torch.equal(state.z, x0) and torch.equal(state.u, 2 * x0)
    with pytest.raises(TypeError, match="^unroll.algorithms.initial_state: init must be"):
        model(y, physics, init="x0")


def test_update_parameters_and_has_converged():
    physics, mat, y = problem()
    model = PGD(prior=Tikhonov(), stepsize=t(0.1), lambda_reg=t(1.0), max_iter=2000, tol=1e-12)
    assert model.has_converged is False
    model.update_parameters(stepsize=0.5, **{"lambda": LAM})
    assert float(model.hyper.stepsize) == 0.5 and float(model.hyper.lambda_reg) == LAM
    torch.testing.assert_close(model(y, physics), minimiser(mat, y), rtol=0, atol=1e-10)
    assert model.has_converged is True
    short = PGD(prior=Tikhonov(), stepsize=t(0.01), max_iter=3, tol=1e-12)
    short(y, physics)
    assert short.has_converged is False
    with pytest.raises(ValueError, match="update_parameters: unknown hyperparameter 'stepsze'"):
        model.update_parameters(stepsze=1.0)
    with pytest.raises(ValueError, match="update_parameters: stepsize must be > 0"):
        model.update_parameters(stepsize=-1.0)


# --------------------------------------------------------------------------- g_first
def test_pgd_g_first_first_iterate_by_hand_and_dense_minimiser():
    physics, mat, y = problem()
    gamma = 0.5
    x0 = physics.A_adjoint(y)
    one = PGD(
        prior=Tikhonov(),
        stepsize=t(gamma),
        lambda_reg=t(LAM),
        g_first=True,
        max_iter=1,
        unfold=True,
    )
    # x1 = prox_{γf}(x0 − γλ x0) = (AᵀA + I/γ)⁻¹(Aᵀy + (1 − γλ) x0 / γ)
    h = mat.T @ mat + torch.eye(16, dtype=DT) / gamma
    rhs = y @ mat + (1 - gamma * LAM) * x0.reshape(2, -1) / gamma
    x1 = torch.linalg.solve(h, rhs.T).T.reshape(x0.shape)
    torch.testing.assert_close(one(y, physics), x1, rtol=0, atol=1e-13)
    model = PGD(
        prior=Tikhonov(),
        stepsize=t(gamma),
        lambda_reg=t(LAM),
        g_first=True,
        max_iter=2000,
        tol=1e-13,
    )
    torch.testing.assert_close(model(y, physics), minimiser(mat, y), rtol=0, atol=1e-10)


@pytest.mark.parametrize("cls", [FISTA, ADMM, DRS])
def test_g_first_converges_to_the_dense_minimiser(cls):
    physics, mat, y = problem()
    model = cls(
        prior=Tikhonov(), stepsize=t(0.5), lambda_reg=t(LAM), g_first=True, max_iter=3000, tol=1e-13
    )
    torch.testing.assert_close(model(y, physics), minimiser(mat, y), rtol=0, atol=1e-9)


def test_hqs_and_drs_g_first_steps_by_hand():
    physics, mat, y = problem()
    g, x0 = 0.5, physics.A_adjoint(y)

    def prox_f(v):
        return physics.prox_l2(v, y, g)

    hqs = HQS(
        prior=Tikhonov(), stepsize=t(g), lambda_reg=t(LAM), g_first=True, max_iter=2, unfold=True
    )
    x = x0
    for _ in range(2):  # x ← prox_{γf}(prox_{γλg}(x))
        x = prox_f(x / (1 + g * LAM))
    torch.testing.assert_close(hqs(y, physics), x, rtol=0, atol=1e-13)
    drs = DRS(
        prior=Tikhonov(),
        stepsize=t(g),
        lambda_reg=t(LAM),
        beta=t(0.7),
        g_first=True,
        max_iter=2,
        unfold=True,
    )
    z = x0
    for _ in range(2):  # x = prox_{γλg}(z), v = prox_{γf}(2x − z), z ← z + β(v − x)
        x = z / (1 + g * LAM)
        z = z + 0.7 * (prox_f(2 * x - z) - x)
    torch.testing.assert_close(drs(y, physics), x, rtol=0, atol=1e-13)


def test_g_first_needs_a_gradient_of_the_prior():
    from unroll.optim import L1Prior

    with pytest.raises(TypeError, match=r"^unroll.algorithms.pgd: prior must provide .grad"):
        algorithms.pgd(L2(), L1Prior(), g_first=True)
    from unroll.unfolded import Unfolded

    def factory(f, g):  # a custom factory without g_first
        return algorithms.pgd(f, g)

    with pytest.raises(ValueError, match="^unroll.unfolded: g_first=True is not supported"):
        Unfolded(factory, prior=Tikhonov(), params_algo={"stepsize": 1.0}, g_first=True)


# --------------------------------------------------------------------------- Anderson
def anderson_by_hand(step, x, iters, m, beta, eps):
    """Type-II Anderson written out on flat per-sample vectors (relative ridge)."""
    xs, fs = [], []
    b = x.shape[0]
    for _ in range(iters):
        fx = step(x)
        xs.append(x.reshape(b, -1))
        fs.append(fx.reshape(b, -1))
        xs, fs = xs[-m:], fs[-m:]
        out = []
        for i in range(b):
            G = torch.stack([f[i] - xx[i] for f, xx in zip(fs, xs)])  # (n, d)
            H = G @ G.T
            H = H + eps * H.diagonal().mean() * torch.eye(len(xs), dtype=DT)
            w = torch.linalg.solve(H, torch.ones(len(xs), 1, dtype=DT))[:, 0]
            a = w / w.sum()
            mix = sum(a[j] * (beta * fs[j][i] + (1 - beta) * xs[j][i]) for j in range(len(xs)))
            out.append(mix)
        x = torch.stack(out).reshape(x.shape)
    return x


def test_anderson_unfolded_matches_a_hand_written_loop_and_fd():
    physics, mat, y = problem()
    cfg = AndersonAccelerationConfig(history_size=3, beta=0.8, eps=0.05)

    def step(x, g=0.4):
        return (x - g * physics.A_adjoint(physics.A(x) - y)) / (1 + g * LAM)

    model = PGD(
        prior=Tikhonov(),
        stepsize=t(0.4),
        lambda_reg=t(LAM),
        max_iter=6,
        unfold=True,
        anderson_acceleration=cfg,
        trainable_params=["stepsize"],
    )
    ref = anderson_by_hand(step, physics.A_adjoint(y), 6, 3, 0.8, 0.05)
    torch.testing.assert_close(model(y, physics), ref, rtol=0, atol=1e-10)
    # full_backprop: the gradient is exact (finite differences)
    full = AndersonAccelerationConfig(history_size=3, beta=0.8, eps=0.05, full_backprop=True)
    f = unfold(algorithms.pgd(L2(), Tikhonov()), 6, acceleration=full)

    def loss(gamma):
        return f({"stepsize": gamma, "lambda_reg": t(LAM)}, y, physics).square().sum()

    grad = torch.func.grad(loss)(t(0.4))
    fd = (loss(t(0.4 + 1e-6)) - loss(t(0.4 - 1e-6))) / 2e-6
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-9)


def test_anderson_classical_converges_faster_to_the_dense_minimiser():
    physics, mat, y = problem()
    plain = PGD(prior=Tikhonov(), stepsize=t(0.1), lambda_reg=t(LAM), max_iter=100, tol=None)
    fast = PGD(
        prior=Tikhonov(),
        stepsize=t(0.1),
        lambda_reg=t(LAM),
        max_iter=100,
        tol=None,
        anderson_acceleration=True,
    )
    x_star = minimiser(mat, y)
    err_plain = (plain(y, physics) - x_star).abs().max()
    err_fast = (fast(y, physics) - x_star).abs().max()
    assert err_fast < 1e-6 < 1e-5 < err_plain
    assert AndersonAccelerationConfig() == AndersonAccelerationConfig(10, 0.9, 0.1, False)
    with pytest.raises(ValueError, match="AndersonAccelerationConfig: history_size"):
        AndersonAccelerationConfig(history_size=0)
    with pytest.raises(TypeError, match="^unroll.optim.PGD: anderson_acceleration must be"):
        PGD(prior=Tikhonov(), anderson_acceleration="yes")


def test_anderson_with_a_deq_configures_its_forward():
    physics, mat, y = problem()
    model = HQS(
        prior=Tikhonov(),
        stepsize=t(0.5),
        lambda_reg=t(LAM),
        max_iter=5,
        DEQ=DEQConfig(tol=1e-12, max_iter=200),
        anderson_acceleration=True,
    )
    plain = HQS(
        prior=Tikhonov(),
        stepsize=t(0.5),
        lambda_reg=t(LAM),
        max_iter=5,
        DEQ=DEQConfig(tol=1e-12, max_iter=200),
    )
    torch.testing.assert_close(model(y, physics), plain(y, physics), rtol=0, atol=1e-9)


# --------------------------------------------------------------------------- stopping keywords
def _stopping_problem():
    mat = torch.eye(6, dtype=DT)[:4] + 0.1
    y = torch.rand(2, 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    return MatrixPhysics(mat, (1, 2, 3)), y


def test_deepinverse_stopping_keywords_map_onto_tol():
    phys, y = _stopping_problem()
    common = dict(data_fidelity=L2(), prior=Tikhonov(), lambda_reg=LAM, stepsize=1.0, max_iter=3000)
    ours = PGD(tol=1e-9, **common)(y, phys)
    theirs = PGD(crit_conv="residual", thres_conv=1e-9, early_stop=True, **common)(y, phys)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=0)
    # early_stop=False runs every iteration: the same as tol=None, and closer to the solution
    every = PGD(early_stop=False, thres_conv=1e-2, **common)(y, phys)
    torch.testing.assert_close(every, PGD(tol=None, **common)(y, phys), rtol=0, atol=0)
    loose = PGD(thres_conv=1e-2, **common)(y, phys)
    A = phys.matrix
    lam = torch.tensor(LAM).item()  # the module holds its hyperparameters in the default dtype
    exact = torch.linalg.solve(A.T @ A + lam * torch.eye(6, dtype=DT), A.T @ y.T).T
    err = (every.reshape(2, 6) - exact).abs().max(), (loose.reshape(2, 6) - exact).abs().max()
    assert err[0] < 1e-10 < err[1], err


def test_deepinverse_stopping_keywords_errors():
    with pytest.raises(ValueError, match=r"^unroll.optim.PGD: crit_conv='cost' is not supported"):
        PGD(data_fidelity=L2(), prior=Tikhonov(), crit_conv="cost")
    with pytest.raises(ValueError, match=r"^unroll.optim.HQS: tol=0.001 and thres_conv=0.01"):
        HQS(data_fidelity=L2(), prior=Tikhonov(), tol=1e-3, thres_conv=1e-2)
    with pytest.raises(TypeError, match=r"^unroll.optim.DRS: early_stop must be"):
        DRS(data_fidelity=L2(), prior=Tikhonov(), early_stop="yes")


def test_data_fidelities_are_callable_under_deepinverses_names():
    from unroll.optim import L1, DataFidelity

    phys = MatrixPhysics(torch.eye(6, dtype=DT)[:4] + 0.1, (1, 2, 3))
    x = torch.rand(2, 1, 2, 3, dtype=DT)
    y = torch.rand(2, 4, dtype=DT)
    r = (x.reshape(2, 6) @ phys.matrix.T - y).abs()
    for f, ref in (
        (L2(sigma=0.5), 0.5 * (r**2).sum(1) / 0.25),
        (L1(), r.sum(1)),
        (DataFidelity(d=lambda u, v: (u - v).abs().pow(3).sum(1)), (r**3).sum(1)),
    ):
        torch.testing.assert_close(f(x, y, phys), ref, rtol=1e-14, atol=0)
        torch.testing.assert_close(f.fn(x, y, phys), ref, rtol=1e-14, atol=0)


def test_verbose_classical_solver_prints_its_iterations(capsys):
    phys, y = _stopping_problem()
    common = dict(data_fidelity=L2(), prior=Tikhonov(), lambda_reg=LAM, stepsize=1.0)
    PGD(max_iter=7, tol=None, verbose=True, **common)(y, phys)
    assert (
        capsys.readouterr().out
        == "PGD: 7 iteration(s), all max_iter iterations (no early stopping)\n"
    )
    model = PGD(max_iter=3000, tol=1e-9, verbose=True, **common)
    model(y, phys)
    assert model.has_converged
    out = capsys.readouterr().out
    assert out.startswith("PGD: ") and out.endswith(
        "every sample's relative change reached tol=1e-09\n"
    )
    PGD(max_iter=2, tol=1e-9, verbose=True, **common)(y, phys)
    assert capsys.readouterr().out == "PGD: 2 iteration(s), stopped at max_iter above tol=1e-09\n"
    PGD(max_iter=7, tol=None, **common)(y, phys)
    assert capsys.readouterr().out == ""
    with pytest.raises(TypeError, match=r"^unroll.optim.PGD: verbose must be"):
        PGD(verbose=1, **common)


def test_compressed_sensing_reports_its_dtype():
    from unroll.physics import CompressedSensing

    assert CompressedSensing(8, (1, 4, 4), dtype=torch.complex128).dtype == torch.complex128
    assert CompressedSensing(8, (1, 4, 4), dtype=DT).dtype == DT
