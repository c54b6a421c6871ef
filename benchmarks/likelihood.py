"""Likelihood accuracy and cost: PF-ODE vs closed form, ELBO vs ODE, digits bits/dim.

1. 2-D eight-Gaussians ring with its exact score under VP, VE and EDM: 1,000 points of
   p_{t_min}; the PF-ODE (rk45 at 1e-6, exact divergence) against the closed-form
   log-density, and the variational bound at 100 and 1,000 steps.  NFE and wall time
   per 1,000 samples are measured directly.
2. The shipped digits model on the first 16 images of the test split (``--images``): bits/dim by the
   PF-ODE with the exact divergence and with Hutchinson (1 Rademacher probe) on the
   same dequantisation noise (a paired comparison), and by the ELBO (1,000 steps).

    python benchmarks/likelihood.py   # ~6 min on 2 cores -> benchmarks/results/likelihood.*
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from common import write_results

import sde_diffusion as sd
from sde_diffusion.evaluation.likelihood import pixel_range
from sde_diffusion.pretrained import load_pretrained
from sde_diffusion.training.data import digits


def mean_se(v: torch.Tensor) -> tuple[float, float]:
    v = v.detach().double()
    return float(v.mean()), float(v.std() / math.sqrt(len(v)))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def mixture_rows(n: int = 1000) -> list[dict]:
    gmm, rows = sd.eight_gaussians(), []
    for sde in (sd.VPSDE(), sd.VESDE(), sd.EDMSDE()):
        x = gmm.marginal(sde, sde.t_min).sample(n, generator=torch.Generator().manual_seed(1))
        x = x.double()
        exact = gmm.marginal_log_prob(sde, x, sde.t_min)
        score = gmm.score_fn(sde)
        res, wall = timed(
            lambda sde=sde, x=x, score=score: sd.likelihood_terms(
                score, sde, x, rtol=1e-6, atol=1e-6
            )
        )
        row = {
            "sde": repr(sde),
            "ode_abs_error_mean": float((res.log_likelihood - exact).abs().mean()),
            "ode_abs_error_max": float((res.log_likelihood - exact).abs().max()),
            "ode_nfe": res.nfe,
            "ode_seconds_per_1000": wall * 1000 / n,
        }
        for steps in (100, 1000):
            bound, wall = timed(
                lambda sde=sde, x=x, score=score, steps=steps: sd.elbo(
                    score, sde, x, steps=steps, generator=torch.Generator().manual_seed(2)
                )
            )
            gap, se = mean_se(exact - bound)
            row |= {
                f"elbo{steps}_gap": gap,
                f"elbo{steps}_gap_se": se,
                f"elbo{steps}_seconds_per_1000": wall * 1000 / n,
            }
        rows.append(row)
        print(json.dumps(row))
    return rows


def digits_rows(n: int) -> dict:
    model, config = load_pretrained("digits")
    model = model.double()
    data = config["data"]
    test = digits("test").x[:n].double()
    pixels = (test * data["scale"] + data["shift"]).round()
    low, high = pixel_range(data["scale"], data["shift"], data["levels"])
    common = {"levels": data["levels"], "low": low, "high": high}
    out: dict = {"images": n}
    for name, options in (
        ("hutchinson", {"divergence": "hutchinson", "probes": 1}),
        ("exact", {"divergence": "exact"}),
        ("elbo", {"estimator": "elbo", "steps": 1000}),
    ):
        counter = Counting(model)
        bpd, wall = timed(
            lambda options=options, counter=counter: sd.bits_per_dim(
                counter,
                model.sde,
                pixels,
                generator=torch.Generator().manual_seed(0),  # same dequantisation noise
                **common,
                **options,
            )
        )
        out[name] = bpd.detach()
        mean, se = mean_se(bpd)
        out[f"{name}_bpd"], out[f"{name}_se"] = mean, se
        out[f"{name}_nfe"] = counter.nfe
        out[f"{name}_seconds_per_1000"] = wall * 1000 / n
        print(name, mean, se, counter.nfe, wall)
    diff_mean, diff_se = mean_se(out["hutchinson"] - out["exact"])
    out["hutchinson_minus_exact"], out["hutchinson_minus_exact_se"] = diff_mean, diff_se
    elbo_gap, elbo_gap_se = mean_se(out["elbo"] - out["exact"])
    out["elbo_minus_exact"], out["elbo_minus_exact_se"] = elbo_gap, elbo_gap_se
    for key in ("hutchinson", "exact", "elbo"):
        del out[key]
    return out


class Counting:
    """``model`` with its calls counted (bits/dim returns the values alone)."""

    def __init__(self, model):
        self.model, self.prediction, self.nfe = model, model.prediction, 0

    def __call__(self, x, t, cond=None):
        self.nfe += 1
        return self.model(x, t, cond)


def markdown(mix: list[dict], dig: dict) -> str:
    lines = [
        "| SDE | ODE mean abs error (nats) | ODE max | ODE NFE | ODE s / 1000 | "
        "ELBO gap, 100 steps | ELBO gap, 1000 steps | ELBO-1000 s / 1000 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in mix:
        lines.append(
            f"| {r['sde']} | {r['ode_abs_error_mean']:.2e} | {r['ode_abs_error_max']:.2e} | "
            f"{r['ode_nfe']} | {r['ode_seconds_per_1000']:.2f} | "
            f"{r['elbo100_gap']:.3f} ± {r['elbo100_gap_se']:.3f} | "
            f"{r['elbo1000_gap']:.3f} ± {r['elbo1000_gap_se']:.3f} | "
            f"{r['elbo1000_seconds_per_1000']:.2f} |"
        )
    lines += [
        "",
        f"Digits (shipped U-Net, first {dig['images']} test images, 17 levels, dequantised):",
        "",
        "| estimator | bits/dim (± SE) | NFE | s / 1000 images |",
        "|---|---|---|---|",
    ]
    for name in ("exact", "hutchinson", "elbo"):
        label = {
            "exact": "PF-ODE, exact divergence",
            "hutchinson": "PF-ODE, Hutchinson (1 probe)",
            "elbo": "ELBO, 1000 steps",
        }[name]
        lines.append(
            f"| {label} | {dig[f'{name}_bpd']:.4f} ± {dig[f'{name}_se']:.4f} | "
            f"{dig[f'{name}_nfe']} | {dig[f'{name}_seconds_per_1000']:.0f} |"
        )
    lines += [
        "",
        f"Paired differences on the same images and dequantisation noise: Hutchinson − exact "
        f"{dig['hutchinson_minus_exact']:+.4f} ± {dig['hutchinson_minus_exact_se']:.4f} "
        f"bits/dim; ELBO − exact {dig['elbo_minus_exact']:+.4f} ± "
        f"{dig['elbo_minus_exact_se']:.4f} bits/dim.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16, help="digits test images")
    args = parser.parse_args()  # before the long runs: a bad flag costs nothing
    torch.manual_seed(0)
    mix = mixture_rows()
    dig = digits_rows(args.images)
    write_results("likelihood", {"mixture": mix, "digits": dig}, markdown(mix, dig))
    print(markdown(mix, dig))


if __name__ == "__main__":
    main()
