"""ComfyUI's samplers against their update rules, written out here in k-diffusion's units.

On Gaussian data every denoiser is exact, ``D(y, ν) = μ + s²/(s² + ν²)(y − μ)`` in scaled
units ``y = x/α``, ``ν = σ/α``, so a rule written in those units (ComfyUI's form, α = 1)
has one exact answer on any grid of ν; our solvers, written for any α, must give it on
the EDM (α = 1) and VP (α < 1) SDEs alike.
"""

import math
from itertools import pairwise

import pytest
import torch

import sde_diffusion as sd

STD = 0.6
MEANS = torch.tensor([[1.0, -0.5], [-1.5, 0.8], [0.2, 0.3]], dtype=torch.float64)  # 2: null


class GaussianClasses:
    """Class-conditional Gaussian data N(μ_c, STD² I); the label 2 is "no condition"."""

    prediction = "x0"

    def __init__(self, sde):
        self.sde = sde

    def __call__(self, x, t, cond=None):
        labels = torch.full((x.shape[0],), 2) if cond is None else cond
        return denoise(x / sd.append_dims(self.sde.alpha(t).to(x), x.ndim),
                       sd.append_dims((self.sde.sigma(t) / self.sde.alpha(t)).to(x), x.ndim),
                       MEANS[labels])  # fmt: skip


def denoise(y, nu, mu):
    return mu + STD**2 / (STD**2 + nu**2) * (y - mu)


def setup(make, steps=6):
    sde = make()
    ts = sd.timesteps(sde, steps, "karras", to_zero=True)
    nus = [math.exp(-sde.log_snr(t).item()) if t > 0 else 0.0 for t in ts.tolist()]
    x_T = sde.prior_sample((5, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 0])
    y = x_T / sde.alpha(ts[0]).item()
    return sde, ts, nus, x_T, y, labels


def d_cond(labels):
    return lambda y, nu: denoise(y, nu, MEANS[labels])


def d_null(y, nu):
    return denoise(y, nu, MEANS[2])


SDES = [sd.EDMSDE, sd.VPSDE]


def run(name, make, guidance=None, steps=6, generator=None, **options):
    sde, ts, nus, x_T, y, labels = setup(make, steps)
    model = GaussianClasses(sde)
    if guidance is not None:
        model = sd.ClassifierFreeGuidance(model, guidance, 2)
    res = sd.solve(model, sde, x_T, ts, name, cond=labels, generator=generator, **options)
    return res.x, nus, y, labels


@pytest.mark.parametrize("make", SDES)
@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_euler_cfg_pp(make, scale):
    x, nus, y, labels = run("euler_cfg_pp", make, guidance=scale)
    for s0, s1 in pairwise(nus):
        du, dc = d_null(y, s0), d_cond(labels)(y, s0)
        guided = du + scale * (dc - du)
        y = guided if s1 == 0 else guided + s1 * (y - du) / s0  # DDIM-CFG++ (Chung et al.)
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", SDES)
def test_euler_ancestral_cfg_pp_draws_its_noise_like_comfyui(make):
    x, nus, y, labels = run(
        "euler_ancestral_cfg_pp", make, guidance=1.2, generator=torch.Generator().manual_seed(5)
    )
    g = torch.Generator().manual_seed(5)
    for s0, s1 in pairwise(nus):
        du, dc = d_null(y, s0), d_cond(labels)(y, s0)
        guided = du + 1.2 * (dc - du)
        if s1 == 0:
            y = guided
            continue
        up = min(s1, (s1**2 * (s0**2 - s1**2) / s0**2) ** 0.5)
        down = (s1**2 - up**2) ** 0.5
        y = guided + down * (y - du) / s0 + up * torch.randn(y.shape, generator=g, dtype=y.dtype)
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", SDES)
def test_dpmpp_2m_cfg_pp(make):
    x, nus, y, labels = run("dpmpp_2m_cfg_pp", make, guidance=1.3)
    old = None
    for i, (s0, s1) in enumerate(pairwise(nus)):
        du, dc = d_null(y, s0), d_cond(labels)(y, s0)
        guided = du + 1.3 * (dc - du)
        if s1 == 0:
            y = guided
            break
        h = math.log(s0 / s1)
        if old is None:
            mix = -math.exp(-h) * du
        else:
            r = math.log(nus[i - 1] / s0) / h
            mix = -math.exp(-h) * du - math.expm1(-h) / (2 * r) * (guided - old)
        y = guided + mix + math.exp(-h) * y
        old = du
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


def res_reference(y, nus, d, eta=0.0, cfg=None, generator=None):
    """ComfyUI's res_multistep (Zhang et al. 2023 RES 2-step), ``cfg = (scale, d_null)``."""
    old = old_down = None
    for i, (s0, s1) in enumerate(pairwise(nus)):
        dc = d(y, s0)
        du = cfg[1](y, s0) if cfg else dc
        den = du + cfg[0] * (dc - du) if cfg else dc
        up = 0.0 if s1 == 0 else min(s1, eta * (s1**2 * (s0**2 - s1**2) / s0**2) ** 0.5)
        down = (s1**2 - up**2) ** 0.5
        if down == 0 or old is None:
            y = den + (y - du) * down / s0
        else:
            h = math.log(s0 / down)
            c2 = math.log(old_down / nus[i - 1]) / h
            phi1 = math.expm1(-h) / -h
            phi2 = (phi1 - 1) / -h
            b1, b2 = phi1 - phi2 / c2, phi2 / c2
            y = math.exp(-h) * (y + den - du) + h * (b1 * du + b2 * old)
        if up > 0:
            y = y + up * torch.randn(y.shape, generator=generator, dtype=y.dtype)
        old, old_down = du, down
    return y


RES = ["res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
       "res_multistep_ancestral_cfg_pp"]  # fmt: skip


@pytest.mark.parametrize("make", SDES)
@pytest.mark.parametrize("name", RES)
def test_res_multistep(make, name):
    cfg = name.endswith("cfg_pp")
    eta = 1.0 if "ancestral" in name else 0.0
    x, nus, y, labels = run(name, make, guidance=1.4 if cfg else None,
                            generator=torch.Generator().manual_seed(7))  # fmt: skip
    g = torch.Generator().manual_seed(7)
    expected = res_reference(y, nus, d_cond(labels), eta, (1.4, d_null) if cfg else None, g)
    if not cfg:  # no guidance wrapper: the model is called without the null branch
        expected = res_reference(
            y, nus, d_cond(labels), eta, None, torch.Generator().manual_seed(7)
        )
    torch.testing.assert_close(x, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", SDES)
@pytest.mark.parametrize("cfg", [False, True], ids=["plain", "cfg_pp"])
def test_gradient_estimation(make, cfg):
    name = "gradient_estimation_cfg_pp" if cfg else "gradient_estimation"
    x, nus, y, labels = run(name, make, guidance=1.5 if cfg else None)
    old = None
    for s0, s1 in pairwise(nus):
        dc = d_cond(labels)(y, s0)
        du = d_null(y, s0) if cfg else dc
        den = du + 1.5 * (dc - du) if cfg else dc
        d = (y - du) / s0
        if s1 == 0:
            y = den
            break
        y = den + d * s1 if cfg else y + d * (s1 - s0)
        if old is not None:
            y = y + (2.0 - 1) * (d - old) * (s1 - s0)
        old = d
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", SDES)
def test_heunpp2(make):
    x, nus, y, labels = run("heunpp2", make)
    d_of = d_cond(labels)

    def direction(y_at, nu):
        return (y_at - d_of(y_at, nu)) / nu

    end = nus[-1]
    for i in range(len(nus) - 1):
        s0, s1 = nus[i], nus[i + 1]
        d, dt = direction(y, s0), s1 - s0
        if s1 == end:
            y = y + d * dt
        elif nus[i + 2] == end:
            d2 = direction(y + d * dt, s1)
            w2 = s1 / (2 * nus[0])
            y = y + ((1 - w2) * d + w2 * d2) * dt
        else:
            y2 = y + d * dt
            d2 = direction(y2, s1)
            d3 = direction(y2 + d2 * (nus[i + 2] - s1), nus[i + 2])
            w2, w3 = s1 / (3 * nus[0]), nus[i + 2] / (3 * nus[0])
            y = y + ((1 - w2 - w3) * d + w2 * d2 + w3 * d3) * dt
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", SDES)
@pytest.mark.parametrize("steps", [5, 6, 7])  # budgets 4, 5, 6: every tail of the order list
def test_dpm_fast(make, steps):
    x, nus, y, labels = run("dpm_fast", make, steps=steps)
    d_of = d_cond(labels)

    def eps(y_at, t):  # t = −log σ (k-diffusion's DPM-Solver time)
        return (y_at - d_of(y_at, math.exp(-t))) / math.exp(-t)

    nfe = steps - 1  # the last evaluation is the final x̂_0
    m = nfe // 3 + 1
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    t_start, t_end = -math.log(nus[0]), -math.log(nus[-2])
    ts = [t_start + (t_end - t_start) * i / len(orders) for i in range(len(orders) + 1)]
    for order, t, t_next in zip(orders, ts, ts[1:], strict=False):
        h, e = t_next - t, eps(y, t)
        sig = math.exp(-t_next)
        if order == 1:
            y = y - sig * math.expm1(h) * e
        elif order == 2:
            s1 = t + h / 2
            e1 = eps(y - math.exp(-s1) * math.expm1(h / 2) * e, s1)
            y = y - sig * math.expm1(h) * e - sig / (2 * 0.5) * math.expm1(h) * (e1 - e)
        else:
            r1, r2 = 1 / 3, 2 / 3
            s1, s2 = t + r1 * h, t + r2 * h
            e1 = eps(y - math.exp(-s1) * math.expm1(r1 * h) * e, s1)
            phi = math.expm1(r2 * h) / (r2 * h) - 1
            u2 = y - math.exp(-s2) * (math.expm1(r2 * h) * e + (r2 / r1) * phi * (e1 - e))
            e2 = eps(u2, s2)
            y = y - sig * math.expm1(h) * e - sig / r2 * (math.expm1(h) / h - 1) * (e2 - e)
    y = d_of(y, nus[-2])  # the budget's last evaluation: the step to t = 0
    torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("make", SDES)
def test_er_sde_without_noise(make):
    x, nus, y, labels = run("er_sde", make, s_noise=0.0)
    d_of = d_cond(labels)

    def f(nu):
        return nu * (math.exp(nu**0.3) + 10)

    history = []  # (x̂_0, ν, D_1)
    for s0, s1 in pairwise(nus):
        den = d_of(y, s0)
        if s1 == 0:
            y = den
            break
        r = f(s1) / f(s0)
        new = r * y + (1 - r) * den
        d1 = None
        if history:
            dt = s1 - s0
            pos = [s1 + k * (s0 - s1) / 200 for k in range(200)]
            s = sum(1 / f(p) for p in pos) * (s0 - s1) / 200
            d1 = (den - history[0][0]) / (s0 - history[0][1])
            new = new + (dt + s * f(s1)) * d1
            if history[0][2] is not None:
                s_u = sum((p - s0) / f(p) for p in pos) * (s0 - s1) / 200
                d2 = (d1 - history[0][2]) / ((s0 - history[1][1]) / 2)
                new = new + (dt**2 / 2 + s_u * f(s1)) * d2
        history = [(den, s0, d1), *history[:1]]
        y = new
    torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("make", SDES)
@pytest.mark.parametrize(
    ("name", "solver_type", "r"),
    [("seeds_2", "phi_1", 0.5), ("seeds_2", "phi_2", 0.5), ("exp_heun_2_x0", "phi_2", 1.0)],
)
def test_seeds_2_deterministic(make, name, solver_type, r):
    options = {"eta": 0.0, "solver_type": solver_type} if name == "seeds_2" else {}
    x, nus, y, labels = run(name, make, **options)
    d_of = d_cond(labels)
    for s0, s1 in pairwise(nus):
        den = d_of(y, s0)
        if s1 == 0:
            y = den
            break
        h = math.log(s0 / s1)  # λ = −log ν
        s_mid = s0 * math.exp(-r * h)
        u = s_mid / s0 * y - math.expm1(-r * h) * den
        d2 = d_of(u, s_mid)
        if solver_type == "phi_1":
            y = s1 / s0 * y - math.expm1(-h) * (den + (d2 - den) / (2 * r))
        else:
            b2 = (math.expm1(-h) + h) / -h / r
            y = s1 / s0 * y - ((math.expm1(-h) - b2) * den + b2 * d2)
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", SDES)
def test_seeds_3_deterministic(make):
    x, nus, y, labels = run("seeds_3", make, eta=0.0)
    d_of = d_cond(labels)

    def phi2(z):
        return (math.expm1(z) - z) / z

    for s0, s1 in pairwise(nus):
        den = d_of(y, s0)
        if s1 == 0:
            y = den
            break
        h = math.log(s0 / s1)
        n1, n2 = s0 * math.exp(-h / 3), s0 * math.exp(-2 * h / 3)
        d2 = d_of(n1 / s0 * y - math.expm1(-h / 3) * den, n1)
        a2 = 2 * phi2(-2 * h / 3)
        d3 = d_of(n2 / s0 * y - ((math.expm1(-2 * h / 3) - a2) * den + a2 * d2), n2)
        b3 = phi2(-h) / (2 / 3)
        y = s1 / s0 * y - ((math.expm1(-h) - b3) * den + b3 * d3)
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", SDES)
def test_lcm_and_ddpm_draw_like_comfyui(make):
    x, nus, y0, labels = run("lcm", make, generator=torch.Generator().manual_seed(2))
    g, y = torch.Generator().manual_seed(2), y0
    sde = make()
    for s0, s1 in pairwise(nus):
        y = d_cond(labels)(y, s0)
        if s1 > 0:  # re-noised at ν_s, in VP units: α_s x̂_0 + σ_s z, scaled by 1/α_s
            y = y + s1 * torch.randn(y.shape, generator=g, dtype=y.dtype)
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
    # ComfyUI's DDPM step (in VP units, ᾱ = 1/(1 + ν²)) is our ancestral step
    x, nus, y, labels = run("ddpm", make, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    for s0, s1 in pairwise(nus):
        eps = (y - d_cond(labels)(y, s0)) / s0
        a_bar, a_prev = 1 / (s0**2 + 1), 1 / (s1**2 + 1)
        alpha = a_bar / a_prev
        v = y / math.sqrt(1 + s0**2)
        mu = (v - (1 - alpha) * eps / math.sqrt(1 - a_bar)) / math.sqrt(alpha)
        if s1 > 0:
            std = math.sqrt((1 - alpha) * (1 - a_prev) / (1 - a_bar))
            mu = mu + std * torch.randn(y.shape, generator=g, dtype=y.dtype)
            y = mu * math.sqrt(1 + s1**2)
        else:
            y = mu
    torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)
    assert sde.T > 0


@pytest.mark.parametrize("make", SDES)
def test_dpmpp_2s_ancestral_cfg_pp(make):
    x, nus, y, labels = run(
        "dpmpp_2s_ancestral_cfg_pp", make, guidance=1.2, generator=torch.Generator().manual_seed(8)
    )
    g = torch.Generator().manual_seed(8)
    for s0, s1 in pairwise(nus):
        du, dc = d_null(y, s0), d_cond(labels)(y, s0)
        guided = du + 1.2 * (dc - du)
        if s1 == 0:
            y = guided
            break
        up = min(s1, (s1**2 * (s0**2 - s1**2) / s0**2) ** 0.5)
        down = (s1**2 - up**2) ** 0.5
        h = math.log(s0 / down)
        s_mid = s0 * math.exp(-h / 2)
        u = s_mid / s0 * y - math.expm1(-h / 2) * du
        du_mid = d_null(u, s_mid)  # the second call's unconditional branch
        y = down / s0 * y - math.expm1(-h) * du_mid
        y = y + up * torch.randn(y.shape, generator=g, dtype=y.dtype) + (guided - du)
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", SDES)
def test_seeds_2_chains_its_noise_along_one_path(make):
    x, nus, y, labels = run("seeds_2", make, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(9)
    d_of = d_cond(labels)

    def z():
        return torch.randn(y.shape, generator=g, dtype=y.dtype)

    for s0, s1 in pairwise(nus):  # ComfyUI's sample_seeds_2 (η = 1, r = 1/2, φ_1), α = 1
        den = d_of(y, s0)
        if s1 == 0:
            y = den
            break
        h = math.log(s0 / s1)
        s_mid = s0 * math.exp(-h / 2)
        x2 = s_mid / s0 * math.exp(-h / 2) * y - math.expm1(-h) * den
        noise = math.sqrt(-math.expm1(-h)) * z()
        x2 = x2 + noise * s_mid
        d2 = d_of(x2, s_mid)
        y = s1 / s0 * math.exp(-h) * y - math.expm1(-2 * h) * (den + (d2 - den))
        seg = -h / 2
        noise = noise * math.exp(seg) + math.sqrt(-math.expm1(2 * seg)) * z()
        y = y + noise * s1
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("make", SDES)
def test_er_sde_noise(make):
    x, nus, y, labels = run("er_sde", make, max_stage=1, generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(6)

    def f(nu):
        return nu * (math.exp(nu**0.3) + 10)

    for s0, s1 in pairwise(nus):  # stage 1 only: x_s = r x + (1 − r) x̂_0 + noise
        den = d_cond(labels)(y, s0)
        if s1 == 0:
            y = den
            break
        r = f(s1) / f(s0)
        std = math.sqrt(max(s1**2 - s0**2 * r**2, 0.0))
        y = r * y + (1 - r) * den + std * torch.randn(y.shape, generator=g, dtype=y.dtype)
    torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
