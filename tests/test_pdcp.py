"""Chambolle–Pock with an explicit operator ``K`` / ``K_adjoint`` (DeepInverse's ``PDCP(K=...)``)
against dense solves, the TV prox and finite differences (float64)."""

import pytest
import torch

from unroll.algorithms import PDHGState, pdhg, run
from unroll.optim import L2, L12Prior, Tikhonov, tv_prox
from unroll.optim.prior import grad_adjoint, image_gradient
from unroll.physics import Denoising

DT = torch.float64
H, W = 5, 6
N = H * W


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def K(x):  # noqa: N802 - (B, C, H, W) -> (B, 2, C, H, W): forward differences, batch first
    return image_gradient(x).movedim(0, 1)


def K_adjoint(u):  # noqa: N802
    return grad_adjoint(u.movedim(1, 0))


def dense_gradient():
    """The forward-difference matrix (2N × N) on H × W images, Neumann boundary, written
    from its definition (independently of ``image_gradient``)."""
    d = torch.zeros(2, H, W, H, W, dtype=DT)
    for i in range(H):
        for j in range(W):
            if i + 1 < H:
                d[0, i, j, i + 1, j], d[0, i, j, i, j] = 1.0, -1.0
            if j + 1 < W:
                d[1, i, j, i, j + 1], d[1, i, j, i, j] = 1.0, -1.0
    return d.reshape(2 * N, N)


def test_the_k_pair_is_adjoint_and_matches_the_dense_gradient():
    x, u = rand(3, 1, H, W), rand(3, 2, 1, H, W, seed=1)
    torch.testing.assert_close((K(x) * u).sum(), (x * K_adjoint(u)).sum(), rtol=1e-13, atol=0)
    mat = dense_gradient()
    torch.testing.assert_close(K(x).reshape(3, -1), x.reshape(3, -1) @ mat.T, rtol=0, atol=1e-14)
    torch.testing.assert_close(
        K_adjoint(u).reshape(3, 1, H, W), (u.reshape(3, -1) @ mat).reshape(3, 1, H, W)
    )


def test_quadratic_prior_on_kx_converges_to_the_dense_minimiser():
    # min ½‖x − y‖² + λ/2 ‖Kx‖²  ⇔  (I + λ KᵀK) x = y
    y = rand(2, 1, H, W)
    lam = 0.7
    alg = pdhg(L2(), Tikhonov(), K=K, K_adjoint=K_adjoint, g_first=True)
    params = {"stepsize": 0.3, "stepsize_dual": 0.3, "lambda_reg": lam}
    x, info = run(alg, y, Denoising(), params, 5000, tol=1e-14)
    mat = dense_gradient()
    ref = torch.linalg.solve(torch.eye(N, dtype=DT) + lam * mat.T @ mat, y.reshape(2, N).T).T
    torch.testing.assert_close(x.reshape(2, N), ref, rtol=0, atol=1e-10)
    assert bool(info.converged.all())


def test_isotropic_tv_by_group_l1_on_kx_matches_tv_prox():
    # min ½‖x − y‖² + λ Σ_i ‖(Kx)_i‖₂ is the TV prox of y
    y = rand(1, 1, H, W)
    lam = 0.3
    alg = pdhg(L2(), L12Prior(l2_axis=1), K=K, K_adjoint=K_adjoint, g_first=True)
    params = {"stepsize": 0.3, "stepsize_dual": 0.3, "lambda_reg": lam}
    x, _ = run(alg, y, Denoising(), params, 20000, tol=1e-15, check_every=100)
    ref = tv_prox(y, lam, n_it_max=200000, tol=1e-13).x
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-7)


def test_data_term_on_kx_converges_to_the_dense_minimiser():
    # K given, g_first=False: min f(Kx) + λ g(x) = ½‖Mx − y‖² + λ/2 ‖x‖²  (M square, so that
    # x₀ = Aᵀy has the shape of x)
    mat = rand(N, N, seed=3) / N**0.5
    op = lambda x: (x.reshape(x.shape[0], -1) @ mat.T).reshape(x.shape)  # noqa: E731
    op_t = lambda u: (u.reshape(u.shape[0], -1) @ mat).reshape(u.shape)  # noqa: E731
    y = rand(2, 1, H, W, seed=4)
    lam = 0.4
    norm = float(torch.linalg.matrix_norm(mat, ord=2))
    params = {"stepsize": 0.9 / norm, "stepsize_dual": 0.9 / norm, "lambda_reg": lam}
    x, _ = run(pdhg(L2(), Tikhonov(), K=op, K_adjoint=op_t), y, Denoising(), params, 6000)
    ref = torch.linalg.solve(mat.T @ mat + lam * torch.eye(N, dtype=DT), (y.reshape(2, N) @ mat).T)
    torch.testing.assert_close(x.reshape(2, N), ref.T, rtol=0, atol=1e-10)


def test_identity_k_gives_the_same_minimiser_as_the_default_splitting():
    y = rand(2, 1, H, W, seed=5)
    params = {"stepsize": 0.5, "stepsize_dual": 0.5, "lambda_reg": 0.6}
    default, _ = run(pdhg(L2(), Tikhonov()), y, Denoising(), params, 400)
    identity, _ = run(pdhg(L2(), Tikhonov(), g_first=True), y, Denoising(), params, 400)
    torch.testing.assert_close(default, y / 1.6, rtol=0, atol=1e-12)
    torch.testing.assert_close(identity, y / 1.6, rtol=0, atol=1e-12)


def test_dual_is_shaped_like_kx_and_inputs_are_not_mutated():
    y = rand(2, 1, H, W)
    y0 = y.clone()
    alg = pdhg(L2(), Tikhonov(), K=K, K_adjoint=K_adjoint, g_first=True)
    state = alg.init(y, Denoising(), {"stepsize": 0.3})
    assert isinstance(state, PDHGState) and state.u.shape == (2, 2, 1, H, W)
    alg.step(state, y, Denoising(), {"stepsize": 0.3, "stepsize_dual": 0.3})
    assert torch.equal(y, y0)


def test_hypergradients_match_finite_differences():
    y = rand(1, 1, H, W)
    target = rand(1, 1, H, W, seed=7)
    alg = pdhg(L2(), L12Prior(l2_axis=1), K=K, K_adjoint=K_adjoint, g_first=True)

    def loss(lam, tau, y):
        params = {"stepsize": tau, "stepsize_dual": 0.3, "lambda_reg": lam}
        x, _ = run(alg, y, Denoising(), params, 25)
        return (x - target).square().sum()

    args = (torch.tensor(0.3, dtype=DT), torch.tensor(0.25, dtype=DT), y)
    grads = torch.func.grad(loss, argnums=(0, 1, 2))(*args)
    h = 1e-6
    for i, g in enumerate(grads):
        direction = rand(*args[i].shape, seed=20 + i) if args[i].dim() else torch.ones((), dtype=DT)
        plus = [a + h * direction if j == i else a for j, a in enumerate(args)]
        minus = [a - h * direction if j == i else a for j, a in enumerate(args)]
        fd = (loss(*plus) - loss(*minus)) / (2 * h)
        torch.testing.assert_close((g * direction).sum(), fd, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"K": K}, ValueError, "pass both K and K_adjoint"),
        ({"K_adjoint": K_adjoint}, ValueError, "pass both K and K_adjoint"),
        ({"K": 2.0, "K_adjoint": K_adjoint}, TypeError, "K must be a callable"),
        ({"g_first": 1}, TypeError, "g_first must be a bool"),
    ],
)
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=r"^unroll\.algorithms\.pdhg: " + match):
        pdhg(L2(), Tikhonov(), **kwargs)


def test_k_path_needs_the_data_fidelity_prox():
    class MeasurementOnly:
        def d_prox(self, u, y, gamma):
            return u

    with pytest.raises(TypeError, match=r"^unroll\.algorithms\.pdhg: data_fidelity must provide"):
        pdhg(MeasurementOnly(), Tikhonov(), K=K, K_adjoint=K_adjoint)


# ------------------------------------------------------------------ the unroll.optim classes
def test_pdcp_class_takes_k_as_keywords_or_in_params_algo_and_reaches_the_closed_form():
    """min ½‖Kx − y‖² + (λ/2)‖x‖² with K = 2·I: x* = 2y / (4 + λ)."""
    from unroll.optim import PDCP

    y = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    double = lambda x: 2 * x  # noqa: E731
    common = dict(data_fidelity=L2(), prior=Tikhonov(), max_iter=2000, tol=None)
    by_keyword = PDCP(K=double, K_adjoint=double, stepsize=0.2, stepsize_dual=0.2,
                      lambda_reg=0.5, **common)  # fmt: skip
    in_params = PDCP(
        params_algo={"stepsize": 0.2, "stepsize_dual": 0.2, "lambda": 0.5, "K": double,
                     "K_adjoint": double},
        **common,
    )  # fmt: skip
    a, b = by_keyword(y, Denoising()), in_params(y, Denoising())
    torch.testing.assert_close(a, 2 * y / 4.5, rtol=0, atol=1e-12)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="^unroll.optim.PDCP: K given both"):
        PDCP(K=double, params_algo={"K": lambda x: 3 * x}, **common)
