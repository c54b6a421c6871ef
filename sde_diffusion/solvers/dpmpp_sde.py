"""DPM-Solver++ SDE: the two-stage stochastic solver (k-diffusion's ``sample_dpmpp_sde``)."""

from __future__ import annotations

from itertools import pairwise

import torch

from ..errors import ArgumentError
from .registry import register_solver
from .stochastic import EtaSolver, ancestral_split


@register_solver(
    "dpmpp_sde",
    aliases=("dpmpp_sde_gpu",),  # ComfyUI: its GPU noise
    kind="sde",
    order=1.0,
    nfe_per_step=2,
    stochastic=True,
    reference="Lu et al. 2022, SDE-DPM-Solver++; Karras et al. 2022 (k-diffusion sample_dpmpp_sde)",
)
class DPMSolverPPSDE(EtaSolver):
    """Two ancestral DPM-Solver++ stages per step, in scaled units σ̃ = σ/α, λ = −log σ̃.

    With ``h = λ_s − λ_t`` and the stage point ``λ_m = λ_t + r h``: stage 1 steps x to
    ``σ_down`` of (σ̃_t → σ̃_m) with x̂_0(t) and adds its σ_up noise (the Brownian
    increment of t → m); stage 2 takes ``D = (1 − 1/(2r)) x̂_0(t) + 1/(2r) x̂_0(m)``
    and steps x from t to σ_down of (σ̃_t → σ̃_s), adding that split's σ_up noise
    (the increment of t → s, made of the increments of t → m and m → s, so the two noises
    are correlated as on one Brownian path, whatever the noise source).  ``eta`` in [0, 1]
    scales the noise (0: a deterministic second-order single-step solver).  2 NFE per
    step; a step to t = 0 returns x̂_0.
    """

    def __init__(self, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5):
        super().__init__(eta, s_noise)
        if not 0.0 < r <= 1.0:
            raise ArgumentError(f"r must lie in (0, 1], got {r!r}")
        self.r = float(r)

    def _ancestral(self, x, x0, c0, c_to, z):
        """x from t0 to t_to with x̂_0 = x0: exponential step to σ_down, then σ_up·z."""
        sig0 = c0.sigma / c0.alpha
        down, up = ancestral_split(sig0, c_to.sigma / c_to.alpha, self.eta)
        y = torch.add(x * (down / c0.sigma), x0, alpha=1 - down / sig0)  # 1 − e^{−h}
        x = y * c_to.alpha
        if z is None or up == 0.0:
            return x
        return torch.add(x, z, alpha=c_to.alpha * up * self.s_noise)

    def init(self, process, grid, x, noise):
        """``t0 -> t_m``, the stage points ``λ_t + r h``, computed together."""
        steps = [(t0, t1) for t0, t1 in pairwise(grid) if t1 > 0.0]
        lam = [(process.at(t0).log_snr, process.at(t1).log_snr) for t0, t1 in steps]
        mids = process.times_at_log_snr([a + self.r * (b - a) for a, b in lam])
        return dict(zip([t0 for t0, _ in steps], mids, strict=True))

    def step(self, process, t0, t1, x, state, noise):
        x0 = process.denoise(x, t0)
        if t1 == 0.0:
            return x0, state
        c0, c1 = process.at(t0), process.at(t1)
        t_mid = state[t0]
        z_mid = z_step = None
        if self.stochastic:  # one Brownian path: the step's increment contains the stage's
            z_mid, z_rest = noise(x, t0, t_mid), noise(x, t_mid, t1)
            a, b = abs(t_mid - t0), abs(t1 - t_mid)
            z_step = torch.add(z_mid * (a / (a + b)) ** 0.5, z_rest, alpha=(b / (a + b)) ** 0.5)
        x_mid = self._ancestral(x, x0, c0, process.at(t_mid), z_mid)
        x0_mid = process.denoise(x_mid, t_mid)
        fac = 1 / (2 * self.r)
        d = torch.add(x0 * (1 - fac), x0_mid, alpha=fac)
        return self._ancestral(x, d, c0, c1, z_step), state
