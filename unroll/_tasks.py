"""The inverse problems of the command line: data, physics, networks and the classical baseline.

Everything here is a pure function of a :class:`~unroll._train.TrainConfig` (and a seed or a
generator): the same configuration rebuilds the same crops, operator, network and baseline,
which is what lets ``unroll eval`` and ``--resume`` reproduce a run.

* images: blur / inpainting / denoising work on real ``(B, C, H, W)`` images in ``[0, 1]``;
  MRI works on complex images stored as real ``(B, 2, H, W)`` (real and imaginary parts), whose
  magnitude is the picture (:func:`as_picture`), and PSNR / SSIM are computed on it.
* randomness: noise is drawn from explicit ``torch.Generator`` s seeded by
  :func:`stream_seed` from ``(seed, purpose, ...)``; the global RNG is never used.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple, cast

import torch
from torch import nn

PHYSICS = ("blur", "inpainting", "denoising", "mri", "mri-multicoil")
MRI_PHYSICS = ("mri", "mri-multicoil")
MODELS = ("unfolded", "varnet", "modl")
#: Per physics, the default recipe of the unfolded network (used for the settings a
#: configuration leaves unset): the algorithm, its iterations, the training epochs, the
#: initial step size γ and the initial smoothing blend α of :class:`SmoothStart`; each trains
#: in about two minutes on 2 CPU cores. Blur: one HQS iteration whose data step, with a large
#: learned γ, is a strong (Wiener-like) deconvolution that the DnCNN then cleans up — in this
#: budget 1000 steps of one iteration beat 400 of three (measured: +1.35 against +1.15 dB over
#: TV; lr 1e-3: +1.42, 1200 steps: +1.50; with the exact separable prox, 1400 / 1600 / 1800
#: steps: +1.55 / +1.62 / +1.65 on seed 0, 1600 steps in 63 s); inpainting: a smoothing
#: prior step and DRS (whose output is the data-consistent iterate) make the untrained network
#: already fill the missing pixels (identity-initialised HQS started at 10 dB and lost to TV by
#: 6 dB); denoising: one
#: iteration (a DnCNN on the measurement) is five times cheaper per step, so it gets four
#: times the epochs.
RECIPES: dict[str, dict[str, Any]] = {
    "blur": {
        "algorithm": "HQS",
        "iterations": 1,
        "epochs": 40,
        "lr": 1e-3,
        "init_stepsize": 20.0,
        "init_smoothing": 0.0,
    },
    "inpainting": {
        "algorithm": "DRS",
        "iterations": 5,
        "epochs": 10,
        "lr": 2e-3,
        "init_stepsize": 5.0,
        "init_smoothing": 1.0,
    },
    "denoising": {
        "algorithm": "HQS",
        "iterations": 1,
        "epochs": 40,
        "lr": 2e-3,
        "init_stepsize": 1.0,
        "init_smoothing": 0.0,
    },
    "mri": {
        "algorithm": "HQS",
        "iterations": 3,
        "epochs": 10,
        "lr": 2e-3,
        "init_stepsize": 5.0,
        "init_smoothing": 0.0,
    },
    "mri-multicoil": {
        "algorithm": "HQS",
        "iterations": 3,
        "epochs": 10,
        "lr": 2e-3,
        "init_stepsize": 5.0,
        "init_smoothing": 0.0,
    },
}
TASK_TITLES = {
    "blur": "Deblurring",
    "inpainting": "Inpainting",
    "denoising": "Denoising",
    "mri": "Single-coil MRI",
    "mri-multicoil": "Multi-coil MRI",
}


class Data(NamedTuple):
    """Training and held-out images of a run.

    Attributes:
        train: ``(N, C, s, s)`` training crops (MRI: ``C = 2``, real and imaginary parts).
        test: ``(M, C, t, t)`` held-out crops.
        test_names: one label per held-out crop (a file name, or ``"crop i"``).
        source: where the images come from, for reports.
        skipped: one line counting skipped files (empty when none was).
    """

    train: torch.Tensor
    test: torch.Tensor
    test_names: tuple[str, ...]
    source: str
    skipped: str


def stream_seed(*keys: Any) -> int:
    """A 63-bit seed for an explicit generator, a hash of ``keys`` (``(seed, "noise", rank,
    step)`` ...): independent streams, reproducible anywhere.

    Example:
        >>> stream_seed(0, "noise", 3) == stream_seed(0, "noise", 3) != stream_seed(1, "noise", 3)
        True
    """
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def is_mri(cfg: Any) -> bool:
    """Whether the run's physics is MRI (complex images as two real channels)."""
    return cfg.physics in MRI_PHYSICS


def model_channels(cfg: Any) -> int:
    """Real channels of the images the network sees: 2 for MRI, else ``cfg.channels``."""
    return 2 if is_mri(cfg) else cfg.channels


#: Side of the held-out crops of the bundled photographs when ``test_crop_size`` is unset:
#: larger than the training crops, for a figure one can judge (the network is convolutional).
BUNDLED_TEST_SIZE = 96


def held_out_size(cfg: Any) -> int:
    """Side of the held-out crops: ``cfg.test_crop_size``; unset, :data:`BUNDLED_TEST_SIZE`
    (at least ``crop_size``) for the bundled photographs, else ``cfg.crop_size``."""
    if cfg.test_crop_size:
        return cfg.test_crop_size
    bundled = not cfg.data and not is_mri(cfg)
    return max(cfg.crop_size, BUNDLED_TEST_SIZE) if bundled else cfg.crop_size


# --------------------------------------------------------------------------- physics
def make_physics(cfg: Any, device: torch.device | str = "cpu", size: int | None = None):
    """The forward operator of ``cfg`` for ``size × size`` images, with its Gaussian noise model.

    Args:
        cfg: the run's configuration.
        device: where its tensors live.
        size: image side (inpainting and MRI masks and coil maps depend on it); default
            ``cfg.crop_size``.

    Returns:
        A physics object (``physics(x)`` adds noise with the global RNG; the pipeline draws its
        noise with :func:`measure` instead).
    """
    from unroll import data
    from unroll import physics as P

    size = int(size or cfg.crop_size)
    noise = P.GaussianNoise(cfg.noise)
    implicit = cfg.backward == "implicit"
    settings: dict[str, Any] = dict(
        noise_model=noise, max_iter=cfg.cg_iters, tol=cfg.cg_tol, implicit_backward_solver=implicit
    )
    if cfg.physics == "blur":
        kernel = P.gaussian_blur(cfg.blur_sigma).to(device)
        return P.Blur(kernel, padding="replicate", **settings)
    if cfg.physics == "inpainting":
        gen = torch.Generator().manual_seed(cfg.seed + 12345)
        mask = (torch.rand((size, size), generator=gen) > 0.5).to(torch.get_default_dtype())
        return P.Inpainting(mask.expand(cfg.channels, size, size).to(device), noise_model=noise)
    if cfg.physics == "denoising":
        return P.Denoising(noise_model=noise)
    mask = data.cartesian_mask(size, cfg.acceleration, cfg.center_fraction, seed=cfg.seed).to(
        device
    )
    if cfg.physics == "mri":
        return P.MRI(mask, **settings)
    maps = data.coil_maps(cfg.coils, size).to(device)
    return P.MultiCoilMRI(mask, maps, **settings)


def measure(physics: Any, x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Noisy measurements ``A x + σ ε`` with ``ε`` drawn from ``gen`` (a CPU generator).

    Args:
        physics: the operator.
        x: images.
        sigma: noise standard deviation.
        gen: the generator of the noise.

    Returns:
        ``y``, shaped like ``physics.A(x)``.
    """
    with torch.no_grad():
        y = physics.A(x)
        eps = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    return y + sigma * eps.to(y.device)


# --------------------------------------------------------------------------- networks
class SmoothStart(nn.Module):
    r"""A residual denoiser that starts as a Gaussian smoothing: ``D(x) = x + α (G_s * x − x)
    + f(x)``, with ``f`` a DnCNN residual whose last layer starts at zero and ``α`` learnable.

    With ``α = 0`` the untrained network is the plain algorithm (data consistency only); with
    ``α = 1`` its prior step smooths, so that an untrained unfolded network already fills
    missing pixels (inpainting) instead of leaving them at zero.

    Args:
        net: the DnCNN (``net(x)`` returns ``x + f(x)``).
        channels: channels of ``x``.
        alpha: initial blend ``α``.
        width: standard deviation of the Gaussian ``G_s`` in pixels.

    Example:
        >>> from unroll.models import DnCNN
        >>> net = DnCNN(1, 1, depth=2, nf=4); _ = torch.nn.init.zeros_(net.out_conv.weight)
        >>> d = SmoothStart(net, 1, alpha=1.0)
        >>> x = torch.zeros(1, 1, 9, 9); x[..., 4, 4] = 1.0
        >>> out = d(x).detach()
        >>> bool(out[..., 4, 4] < 0.5), round(float(out.sum()), 4)  # spread, mass kept
        (True, 1.0)
    """

    def __init__(
        self, net: nn.Module, channels: int, alpha: float = 0.0, width: float = 1.0
    ) -> None:
        super().__init__()
        from unroll.physics import gaussian_blur

        self.net = net
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        kernel = gaussian_blur(width)
        self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape[-2:]).clone())

    def forward(self, x: torch.Tensor, sigma: Any = None) -> torch.Tensor:
        """Denoise ``x`` (``(B, C, H, W)``); ``sigma`` is passed on to the DnCNN."""
        kernel = self.get_buffer("kernel")
        pad = (kernel.shape[-1] // 2,) * 2 + (kernel.shape[-2] // 2,) * 2
        smooth = nn.functional.conv2d(
            nn.functional.pad(x, pad, mode="replicate"), kernel, groups=x.shape[1]
        )
        return self.net(x, sigma) + self.alpha * (smooth - x)


def make_model(cfg: Any) -> nn.Module:
    """The network of ``cfg.model``: an unfolded ``cfg.algorithm`` with a DnCNN prior,
    VarNet, or MoDL (the same DnCNN as their regulariser), called ``model(y, physics)``.

    The DnCNN's last layer starts at zero, so the untrained network is the plain algorithm
    with a Gaussian smoothing of weight ``α`` as its prior step (:class:`SmoothStart`), and
    step size ``γ`` (the configuration's ``init_stepsize`` / ``init_smoothing``).
    """
    from unroll import optim
    from unroll.equilibrium import DEQConfig
    from unroll.models import DnCNN, MoDL, VarNet

    c = model_channels(cfg)
    net = DnCNN(in_channels=c, out_channels=c, depth=cfg.depth, nf=cfg.nf)
    nn.init.zeros_(net.out_conv.weight)
    gamma, alpha = cfg.init_stepsize, cfg.init_smoothing
    denoiser = SmoothStart(net, c, alpha)
    if cfg.model == "varnet":
        return VarNet(denoiser, num_cascades=cfg.iterations, mode="varnet", in_channels=c)
    if cfg.model == "modl":
        return MoDL(
            denoiser,
            num_iter=cfg.iterations,
            in_channels=c,
            stepsize=gamma,
            sigma_denoiser=cfg.noise,
        )
    cls = getattr(optim, cfg.algorithm.upper())
    extra = {"beta": 1.0} if cfg.algorithm.upper() in ("ADMM", "DRS") else {}
    deq = DEQConfig(max_iter=max(30, cfg.iterations), tol=1e-4) if cfg.deq else None
    stepsize = gamma if cfg.deq else [gamma] * cfg.iterations
    return cls(
        unfold=True,
        data_fidelity=optim.L2(),
        prior=optim.PnP(denoiser),
        stepsize=stepsize,
        sigma_denoiser=cfg.noise,
        lambda_reg=1.0,
        max_iter=cfg.iterations,
        trainable_params=["stepsize"],
        DEQ=deq,
        **extra,
    )


def recipe_value(physics: str, name: str) -> Any:
    """The default of setting ``name`` for ``physics`` (see :data:`RECIPES`)."""
    return RECIPES.get(physics, RECIPES["blur"])[name]


def learned_scalars(model: nn.Module) -> dict[str, list[float]]:
    """The network's learned step sizes / data-consistency weights, for reports."""
    names = ("hyper.stepsize", "dc_weight", "stepsize")
    return {
        n: p.detach().cpu().flatten().tolist() for n, p in model.named_parameters() if n in names
    }


# --------------------------------------------------------------------------- classical
def classical_model(lam: float | torch.Tensor, iterations: int = 100):
    """TV-regularised FISTA with weight ``lam`` (a classical solver, early stopping at 1e-5;
    a ``(B, 1, 1, 1)`` tensor ``lam`` gives each sample its own weight)."""
    from unroll import optim

    # an inexact inner prox by design (a fixed count of 20 dual steps, as in FISTA-TV
    # practice): tol=0 asks for exactly that count, so it is not reported as unconverged
    return optim.FISTA(
        data_fidelity=optim.L2(),
        prior=optim.TVPrior(n_it_max=20, tol=0),
        stepsize=1.0,
        lambda_reg=lam,
        max_iter=iterations,
        unfold=False,
        tol=1e-5,
    )


#: Training crops the classical weight is tuned on: 16 crops gave weights a factor 2 apart
#: for two draws of crops (0.0053 and 0.0106 on the demo), 0.26 dB apart on held-out crops;
#: each crop costs about 1.5 s of the demo's time (nine weights, 100 FISTA iterations).
TUNING_CROPS = 32
#: Crops of the coarse stage of :func:`tune_classical` (seven weights a factor 2 apart).
COARSE_CROPS = 8


def lambda_grid(noise: float) -> list[float]:
    """The TV weights tried when tuning: ``noise × 2^k``, ``k = −5 … 1`` (seven values)."""
    return [noise * 2.0**k for k in range(-5, 2)]


def classical_scores(
    cfg: Any, lams: list[float], x: torch.Tensor, y: torch.Tensor, physics: Any
) -> list[float]:
    """Mean PSNR of TV-FISTA on ``(x, y)`` for each weight in ``lams``, all in one batched run
    (each sample converges on its own, so the scores equal separate runs').

    Args:
        cfg: the run's configuration (for MRI pictures).
        lams: the weights.
        x: ground truth ``(B, ...)``.
        y: measurements of ``x``.
        physics: their operator.

    Returns:
        One mean PSNR per weight.
    """
    from unroll import metrics

    b = x.shape[0]
    lam = torch.tensor(lams, dtype=x.dtype, device=x.device).repeat_interleave(b)
    lam = lam.reshape(-1, *([1] * (x.dim() - 1)))
    y_all = y.repeat(len(lams), *([1] * (y.dim() - 1)))
    with torch.no_grad():
        x_hat = classical_model(lam, cfg.classical_iters)(y_all, physics)
    psnr = metrics.psnr(
        as_picture(x_hat, cfg), as_picture(x, cfg).repeat(len(lams), *([1] * (x.dim() - 1)))
    )
    return psnr.reshape(len(lams), b).mean(1).tolist()


def tune_classical(cfg: Any, x_train: torch.Tensor, physics: Any) -> float:
    """The TV weight of :func:`classical_model` with the best mean PSNR on training crops.

    Two stages, each one batched run: the seven weights of :func:`lambda_grid` on the first
    :data:`COARSE_CROPS` crops, then the best of them and its neighbours at a factor √2 on
    the first :data:`TUNING_CROPS` crops.

    Args:
        cfg: the run's configuration (noise level, seed, physics kind).
        x_train: training crops.
        physics: the operator for their size.

    Returns:
        The chosen weight.
    """
    x = x_train[:TUNING_CROPS]
    y = measure(physics, x, cfg.noise, torch.Generator().manual_seed(stream_seed(cfg.seed, "tune")))
    grid = lambda_grid(cfg.noise)
    coarse = classical_scores(cfg, grid, x[:COARSE_CROPS], y[:COARSE_CROPS], physics)
    best = grid[max(range(len(grid)), key=coarse.__getitem__)]
    finer = [best * 2**-0.5, best, best * 2**0.5]
    scores = classical_scores(cfg, finer, x, y, physics)
    return finer[max(range(len(finer)), key=scores.__getitem__)]


def classical(cfg: Any, x_train: torch.Tensor, physics: Any, gen_seed: int | None = None):
    """TV-FISTA with its weight tuned on training crops (:func:`tune_classical`).

    Returns:
        ``(reconstruct, best_lambda)`` with ``reconstruct(y, physics) -> x``.
    """
    del gen_seed  # the tuning noise comes from its own stream
    lam = tune_classical(cfg, x_train, physics)
    model = classical_model(lam, cfg.classical_iters)

    def reconstruct(y: torch.Tensor, phys: Any = physics) -> torch.Tensor:
        with torch.no_grad():
            return model(y, phys)

    return reconstruct, lam


# --------------------------------------------------------------------------- pictures
def as_picture(x: torch.Tensor, cfg: Any) -> torch.Tensor:
    """Images as pictures in ``[0, 1]``: clamped, or for MRI the magnitude ``(B, 1, H, W)``."""
    if is_mri(cfg):
        x = (x[:, :1].square() + x[:, 1:2].square()).sqrt()
    return x.clamp(0, 1)


def measurement_picture(y: torch.Tensor, physics: Any, cfg: Any) -> torch.Tensor:
    """The measurement as a picture: ``y`` itself, or ``Aᵀy`` (MRI: zero-filled) otherwise."""
    with torch.no_grad():
        img = y if not is_mri(cfg) and y.dim() == 4 else physics.A_adjoint(y)
    return as_picture(img, cfg)


def to_mri_images(x: torch.Tensor) -> torch.Tensor:
    """Magnitude images ``(B, 1, H, W)`` as complex images with zero phase, ``(B, 2, H, W)``."""
    return torch.cat((x, torch.zeros_like(x)), dim=1)


def describe(cfg: Any) -> str:
    """A one-line description of the task, e.g. ``"Deblurring: Gaussian blur σ=1.5, noise
    σ=0.03"``."""
    kind = TASK_TITLES[cfg.physics]
    if cfg.physics == "blur":
        what = f"Gaussian blur σ={cfg.blur_sigma:g} px"
    elif cfg.physics == "inpainting":
        what = "50% of pixels missing"
    elif cfg.physics == "denoising":
        what = "additive Gaussian noise"
    else:
        coils = f", {cfg.coils} coils" if cfg.physics == "mri-multicoil" else ""
        what = (
            f"{cfg.acceleration}× Cartesian undersampling ({cfg.center_fraction:g} centre){coils}"
        )
    return f"{kind}: {what}, noise σ={cfg.noise:g}"


# --------------------------------------------------------------------------- data
def make_data(cfg: Any) -> Data:
    """The training and held-out crops of a run (deterministic given ``cfg``).

    Without ``cfg.data``: scikit-image's bundled photographs, split by image (blur,
    inpainting, denoising), or :func:`unroll.data.mri_phantoms` with disjoint seeds (MRI).
    With ``cfg.data`` (a folder of images, or of fastMRI ``.h5`` files for MRI): random crops of
    its images; the held-out crops come from ``cfg.val_data`` or from a held-out share
    ``cfg.val_fraction`` of the files (never from a training file).
    """
    from unroll import data

    size = held_out_size(cfg)
    if cfg.data:
        return _folder_data(cfg, size)
    if is_mri(cfg):
        train = data.mri_phantoms(cfg.num_train, cfg.crop_size, seed=cfg.seed)
        test = data.mri_phantoms(cfg.num_test, size, seed=cfg.seed + 100_003)
        return Data(
            to_mri_images(train),
            to_mri_images(test),
            tuple(f"phantom {i}" for i in range(cfg.num_test)),
            "synthetic phantoms (unroll.data.mri_phantoms)",
            "",
        )
    train = data.natural_image_crops(
        "train", cfg.num_train, cfg.crop_size, channels=cfg.channels, seed=cfg.seed, flip=True
    )
    test = data.natural_image_crops(
        "test", cfg.num_test, size, channels=cfg.channels, seed=cfg.seed + 1
    )
    names = ", ".join(data.image_names("test", cfg.channels))
    return Data(
        train,
        test,
        tuple(f"crop {i}" for i in range(cfg.num_test)),
        f"scikit-image's bundled images (held out: {names})",
        "",
    )


def read_folder(cfg: Any, root: str, size: int | None):
    """The images of a ``--data`` / ``--val-data`` folder (fastMRI files for MRI) as a
    centre-crop :class:`~unroll.data.CropDataset` (all images at least ``size``)."""
    from unroll import data

    if is_mri(cfg):
        return data.FastMRISlices(root, crop_size=size)
    return data.ImageFolder(root, crop_size=size, channels=cfg.channels, warn=False)


def _folder_data(cfg: Any, size: int) -> Data:
    from unroll import data

    need = max(cfg.crop_size, size)
    full = read_folder(cfg, cfg.data, need)
    skipped = [full.skip_message()]
    if cfg.val_data:
        val = read_folder(cfg, cfg.val_data, size)
        skipped.append(val.skip_message())
        train_images, val_images, val_names = full.images, val.images, val.names
    else:
        groups = sorted({_file_of(n) for n in full.names})
        _, held = data.split_files(cast(Any, groups), cfg.val_fraction, cfg.seed)
        held_set = set(held)
        keep = [_file_of(n) not in held_set for n in full.names]
        train_images = [im for im, k in zip(full.images, keep) if k]
        val_images = [im for im, k in zip(full.images, keep) if not k]
        val_names = [n for n, k in zip(full.names, keep) if not k]
    train = data.CropDataset(
        train_images,
        ["train"] * len(train_images),
        crop_size=cfg.crop_size,
        num_crops=cfg.num_train,
        seed=cfg.seed,
        flip=True,
    ).stack()
    test = data.CropDataset(
        val_images, val_names, crop_size=size, num_crops=cfg.num_test, seed=cfg.seed + 1
    ).stack()
    if is_mri(cfg):
        train, test = to_mri_images(train), to_mri_images(test)
    held_from = cfg.val_data or f"{len(set(map(_file_of, val_names)))} held-out files"
    return Data(
        train,
        test,
        tuple(f"crop {i}" for i in range(cfg.num_test)),
        f"{cfg.data} (held out: {held_from})",
        " ".join(s for s in skipped if s),
    )


def eval_data(cfg: Any, root: str, size: int) -> tuple[torch.Tensor, tuple[str, ...], str]:
    """One centre crop of every image of ``root`` (``unroll eval --data``).

    Returns:
        ``(images, names, skipped_line)``.
    """
    ds = read_folder(cfg, root, size)
    x = ds.stack()
    return (to_mri_images(x) if is_mri(cfg) else x), tuple(ds.names), ds.skip_message()


def _file_of(name: str) -> str:
    return name.split(" [slice ", 1)[0]
