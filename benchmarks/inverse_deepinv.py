"""Side by side with DeepInverse: its DDRM, DiffPIR and DPS and ours, on the same problems.

    python benchmarks/inverse_deepinv.py   # -> results/inverse_deepinv.{json,md}

Needs ``deepinv`` (with a torchvision that loads: ``pip install deepinv torchvision``; on a
CPU-only torch build PyPI's torchvision does not load, so run it where torch is a CUDA
build, which also runs on a CPU).  The 64-D mixture seen as a 1×8×8 image, its lower half
hidden or average-pooled 2×, noise-free and with σ_y = 0.05.  Both libraries are driven by
the same exact mixture denoiser, measure the same truths, and spend the same network
evaluations; scores are those of ``benchmarks/inverse.py`` (sliced W2 to exact posterior
samples, ``PER_MEASUREMENT`` samples for each of ``MEASUREMENTS`` measurements).

How each peer is driven:

- **DDRM** (``deepinv.sampling.DDRM``, VE noise levels): the operator as a
  ``DecomposablePhysics`` from our SVD (a full orthonormal ``V``, singular values padded
  with zeros), the noise levels ``σ`` of our EDM Karras grid; ``denoiser(x, σ)`` is the
  exact ``E[x_0 | x_0 + σ n]``.
- **ddrm-told**: DeepInverse's DDRM draws its noise as ``σ z / √2`` yet tells the denoiser
  ``σ``; this row tells the denoiser the noise it drew (``σ/√2``), to show what that
  factor does.
- **DiffPIR** (``deepinv.sampling.DiffPIR``): it works on images in [0, 1] with its own DDPM
  schedule and clamps ``x̂_0`` to the image range, so the mixture is mapped affinely into
  [0, 1] (``0.5 + x/16``, no sample comes near the clamp) and back; its ``max_iter`` is the
  NFE.  Its step divides by σ_y (``ρ = λ σ_y²/σ_t²``, then ``1/ρ``): noise-free problems
  run it with σ_y = 1e-6.
- **DPS** (``deepinv.sampling.DPS``): its DDPM solver on its VP schedule with ``num_steps``
  = NFE, the same [0, 1] mapping (its denoiser output is clipped to [-1, 1] internally).
  Its step ``w ∇‖A x̂_0 − y‖`` is taken on states in [-1, 1] with ``y`` in [0, 1]: ``w =
  2/16`` is the step of our ``ζ' = 1`` in the mixture's units.
- **ΠGDM** (``PosteriorDiffusion`` with ``PiGDMDataFidelity``, its VP SDE and DDPM
  solver): its ``r_t² = σ_t²/(1 + σ_t²)`` assumes unit variance in its [-1, 1] units, which
  is ``data_std = 8`` in the mixture's; ours runs with that ``data_std`` here.
"""

from __future__ import annotations

import time

import torch
from common import table, write_results
from inverse import mixture_scores

import sde_diffusion as sd
from sde_diffusion.analytic import high_dim_mixture
from sde_diffusion.measurements import build_measurement
from sde_diffusion.timesteps import timesteps

try:  # an optional peer: torchvision may be present yet unloadable
    import deepinv as dinv
except Exception as err:  # any failure to import means "not here"
    raise SystemExit(f"deepinv is not usable here ({type(err).__name__}: {err})") from None

MEASUREMENTS = 4
PER_MEASUREMENT = 500
SCALE = 8.0  # mixture units -> [0, 1]: 0.5 + x / (2 SCALE)
CASES = (("inpaint", 0.0), ("inpaint", 0.05), ("super-resolve", 0.0), ("super-resolve", 0.05))
BUDGETS = {
    "ddrm": (20, 100),
    "ddrm-told": (20, 100),
    "diffpir": (20, 100),
    "dps": (100, 1000),
    "pigdm": (20, 100),
}


def physics_from(op, sigma_y: float, dtype=torch.float64):
    """Our operator as DeepInverse's ``DecomposablePhysics`` on flat samples: ``x̄ = Vᵀx``
    with ``V`` completed to an orthonormal basis, singular values padded with zeros, and
    the measurement as ``[Uᵀ y, 0]``."""
    u, s, v = op.svd(dtype)
    d, r = v.shape
    rest = torch.randn(d, d - r, generator=torch.Generator().manual_seed(0), dtype=dtype)
    q, _ = torch.linalg.qr(torch.cat([v, rest], 1))
    full = torch.cat([v, q[:, r:]], 1)  # V itself, then an orthonormal basis of its complement
    mask = torch.cat([s, torch.zeros(d - r, dtype=dtype)])[None]
    physics = dinv.physics.DecomposablePhysics(
        U=lambda x: x,
        U_adjoint=lambda x: x,
        V=lambda c: c @ full.T.to(c),
        V_adjoint=lambda x: x.flatten(1) @ full.to(x),
        mask=mask,
        noise_model=dinv.physics.GaussianNoise(sigma=sigma_y),
    )
    pad = lambda y: torch.cat([y @ u, torch.zeros(len(y), d - r, dtype=dtype)], 1)  # noqa: E731
    return physics, pad


def exact_denoiser(mixture, sde, scale: float = 1.0, unit: bool = False):
    """``E[x_0 | x_0 + σ n]`` of the mixture; with ``unit``, in [0, 1] image units."""
    sde = sd.EDMSDE(sigma_max=1e6)  # the peers' noise levels reach past our T = 80

    def denoise(x, sigma):
        flat = x.reshape(len(x), -1).double()
        sigma = float(torch.as_tensor(sigma).flatten()[0])
        if unit:
            flat, sigma = (flat - 0.5) * 2 * scale, sigma * 2 * scale
        if sigma <= 0:
            out = flat
        else:
            out = mixture.denoise(sde, flat, torch.tensor(sigma, dtype=torch.float64))
        if unit:
            out = 0.5 + out / (2 * scale)
        return out.reshape(x.shape).to(x.dtype)

    return denoise


def peer(method, mixture, sde, op, y, sigma_y, nfe, seed):
    """Samples from DeepInverse's ``method`` in mixture units, and the NFE it spent."""
    physics, pad = physics_from(op, sigma_y)
    calls = {"n": 0}
    torch.manual_seed(seed)

    def counted(fn):
        def wrapped(x, sigma, *args, **kwargs):
            calls["n"] += 1
            return fn(x, sigma)

        return wrapped

    if method.startswith("ddrm"):
        grid = timesteps(sde, nfe - 1, "karras", to_zero=True)
        sigmas = [float(sde.sigma(t) / sde.alpha(t)) for t in grid]
        exact = exact_denoiser(mixture, sde)
        told = 2**-0.5 if method == "ddrm-told" else 1.0  # the noise it draws: σ z / √2

        def denoiser(x, sigma):
            return exact(x, sigma * told)

        model = dinv.sampling.DDRM(counted(denoiser), sigmas=sigmas)
        x = model(pad(y.double()), physics)
    else:
        physics01 = physics  # DiffPIR divides by σ_y: noise-free runs as σ_y = 1e-6
        level = max(sigma_y / (2 * SCALE), 1e-6 if method == "diffpir" else 0.0)
        physics01.noise_model = dinv.physics.GaussianNoise(sigma=level)
        y01 = physics.A(torch.full((1, op.dim), 0.5, dtype=torch.float64)) + pad(y.double()) / (
            2 * SCALE
        )
        denoiser = counted(exact_denoiser(mixture, sde, SCALE, unit=True))
        if method == "diffpir":
            model = dinv.sampling.DiffPIR(denoiser, dinv.optim.data_fidelity.L2(), sigma=level,
                                          max_iter=nfe)  # fmt: skip
            x01 = model(y01, physics01)
        elif method == "dps":
            # its step ζ ∇‖r‖ is taken in [-1, 1] units on a residual in [0, 1] units: ζ = 2/SCALE
            # moves the mixture's x by ∇‖r‖ as our ζ' = 1 does
            model = dinv.sampling.DPS(_Denoiser(denoiser), num_steps=nfe, weight=2 / SCALE)
            x01 = model(y01, physics01, x_init=None)
        else:  # pigdm: its data fidelity in the posterior-diffusion framework, DDPM steps
            solver = dinv.sampling.DDPMSolver(
                timesteps=torch.linspace(1, 0, nfe, dtype=torch.float64)
            )
            model = dinv.sampling.PosteriorDiffusion(
                data_fidelity=dinv.sampling.PiGDMDataFidelity(),
                denoiser=_Denoiser(denoiser),
                sde=dinv.sampling.VariancePreservingDiffusion(dtype=torch.float64),
                solver=solver,
            )
            x01 = model(y01, physics01)
        x = (x01 - 0.5) * 2 * SCALE
    return x.reshape(len(y), -1), calls["n"]


class _Denoiser(dinv.models.Denoiser):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, sigma, *args, **kwargs):
        return self.fn(x, sigma)


def main() -> None:
    sde, mixture = sd.EDMSDE(), high_dim_mixture()
    model = mixture.score_fn(sde)
    rows = []
    for task, sigma_y in CASES:
        op = build_measurement(task, (1, 8, 8))
        truth = mixture.sample(MEASUREMENTS, generator=torch.Generator().manual_seed(7))
        y1 = op.measure(truth.reshape(-1, 1, 8, 8), sigma_y, torch.Generator().manual_seed(8))
        y = y1.repeat_interleave(PER_MEASUREMENT, 0)
        for method, budgets in BUDGETS.items():
            for nfe in budgets:
                start = time.perf_counter()
                x, spent = peer(method, mixture, sde, op, y, sigma_y, nfe, seed=nfe)
                wall = time.perf_counter() - start
                if bool(torch.isfinite(x).all()):
                    scores = mixture_scores(x, mixture, op, y1, sigma_y, PER_MEASUREMENT)
                else:  # reported, not hidden: a row of dashes and the reason
                    keys = ("sw2", "floor", "mean_error", "var_error", "wrong_mode", "residual")
                    scores = {**dict.fromkeys(keys, float("nan")), "failed": "NaN output"}
                theirs = {"wall": wall, "nfe": spent, **scores}
                steps = nfe if method in ("dps", "pigdm") else nfe - 1  # theirs call at σ = 0
                start = time.perf_counter()
                ours_name = method.removesuffix("-told")
                # ΠGDM's r_t² assumes unit variance in the peer's [-1, 1] units: s_d = SCALE
                same = {"data_std": SCALE} if method == "pigdm" else {}
                res = sd.restore(model, sde, op, y.float(), sigma_y, ours_name, steps=steps,
                                 seed=nfe, **same)  # fmt: skip
                wall = time.perf_counter() - start
                scores = mixture_scores(res.x, mixture, op, y1, sigma_y, PER_MEASUREMENT)
                ours = {"wall": wall, "nfe": res.nfe, **scores}
                rows.append({"task": task, "sigma_y": sigma_y, "method": method, "nfe": nfe,
                             "deepinv": theirs, "ours": ours})  # fmt: skip
                print(task, sigma_y, method, nfe, f"deepinv {theirs['sw2']:.4f} ({spent} NFE) "
                      f"ours {ours['sw2']:.4f} ({res.nfe} NFE)", flush=True)  # fmt: skip
    text = markdown(rows)
    write_results("inverse_deepinv", {"deepinv": dinv.__version__, "rows": rows}, text)
    print(text)


def markdown(rows: list[dict]) -> str:
    return (
        f"gmm64 as 1×8×8, {MEASUREMENTS} measurements × {PER_MEASUREMENT} samples; sliced W2 "
        "to exact posterior samples (floor: two exact sets), mean RMS error, wrong-mode share.\n\n"
        + table(
            [
                "task",
                "σ_y",
                "method",
                "NFE (ours / deepinv)",
                "sW2 ours",
                "sW2 deepinv",
                "ratio",
                "floor",
                "mean err ours",
                "mean err deepinv",
                "wrong mode ours / deepinv",
            ],
            [
                [
                    r["task"],
                    f"{r['sigma_y']:g}",
                    r["method"],
                    f"{r['ours']['nfe']} / {r['deepinv']['nfe']}",
                    r["ours"]["sw2"],
                    r["deepinv"]["sw2"],
                    r["ours"]["sw2"] / r["deepinv"]["sw2"],
                    r["ours"]["floor"],
                    r["ours"]["mean_error"],
                    r["deepinv"]["mean_error"],
                    f"{r['ours']['wrong_mode']:.3f} / {r['deepinv']['wrong_mode']:.3f}",
                ]
                for r in rows
            ],
        )
    )


if __name__ == "__main__":
    main()
