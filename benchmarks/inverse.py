"""Inverse problems: every restoration method against the exact posterior, and on digits.

    python benchmarks/inverse.py                   # both parts -> results/inverse*.{json,md,png}
    python benchmarks/inverse.py --part mixtures   # gmm8 and gmm64 against the exact posterior
    python benchmarks/inverse.py --part digits     # the shipped digits model
    python benchmarks/inverse.py --report          # rewrite the tables from the JSON

**Mixtures.** For each problem (gmm8, and gmm64 seen as a 1×8×8 image, or 4×4×4 for
colorization) and task, ``MEASUREMENTS`` truths are drawn and measured; each method draws
``PER_MEASUREMENT`` samples per measurement at NFE budgets ``NFE`` (the EDM SDE, Karras
grids to t = 0, each method's default settings), and so does the exact sampler (``heun`` on
the exact posterior score).  Scores, averaged over the measurements: sliced W2 to fresh
exact posterior samples (and the floor: two exact sets), the RMS error of the posterior
mean and the relative error of the marginal variances (unobserved directions), the share
of samples whose most likely prior component has posterior weight < 1 % (the wrong mode),
``‖A x − y‖/√m``, the network passes and the wall time.

**Digits.** The shipped digits model restores the test digits (360): the lower half
hidden, and 4×4 → 8×8 super-resolution, noise-free.  Scores: the independent digits
classifier's accuracy against the true labels (ceiling: clean digits; floor: the
measurement alone, ``A⁺ y``), PSNR, digits-FID of the restorations to the test set, the
data-consistency residual, network passes and wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from common import RESULTS, table, write_results

import sde_diffusion as sd
from sde_diffusion.analytic import eight_gaussians, high_dim_mixture
from sde_diffusion.evaluation.digits_eval import class_accuracy, digits_fid
from sde_diffusion.evaluation.metrics import sliced_wasserstein
from sde_diffusion.evaluation.problems import load_problem
from sde_diffusion.measurements import build_measurement
from sde_diffusion.plotting import save_image_grid
from sde_diffusion.restoration import Observation, RePaint, method_names
from sde_diffusion.training.data import digits

NFE = (20, 50, 100, 1000)
MEASUREMENTS = 4
PER_MEASUREMENT = 500
METHODS = ("exact", *method_names())
# (problem, task, the view measurements see, sigma_y)
MIXTURE_TASKS = (
    ("gmm8", "inpaint", (2,), 0.0),
    ("gmm8", "denoise", (2,), 1.0),
    ("gmm64", "inpaint", (1, 8, 8), 0.0),
    ("gmm64", "super-resolve", (1, 8, 8), 0.0),
    ("gmm64", "deblur", (1, 8, 8), 0.05),
    ("gmm64", "denoise", (1, 8, 8), 0.5),
    ("gmm64", "colorize", (4, 4, 4), 0.0),
)
DIGITS_TASKS = (("inpaint", 0.0), ("super-resolve", 0.0))
DIGITS_NFE = (20, 100, 1000)
# one knob each, chosen on 360 training digits at NFE 100, then run on the test digits
TUNED = {"dps": ("scale", (0.5, 1.0, 2.0, 4.0)), "mcg": ("scale", (0.5, 1.0, 2.0, 4.0)),
         "pigdm": ("data_std", (0.25, 0.5, 1.0))}  # fmt: skip


def settings(method: str, nfe: int) -> dict:
    """Steps and options that spend about ``nfe`` model calls on a grid ending at t = 0."""
    if method == "exact":
        return {"steps": (nfe + 1) // 2}  # heun: 2 calls a step, 1 on the last
    if method == "replacement":
        return {"steps": max(1, nfe // 2)}  # pc: predictor and corrector
    if method == "repaint":
        for steps in range(nfe, 0, -1):
            jump = max(1, steps // 10)
            if RePaint(jump=jump, resample=3).down_steps(steps) <= nfe:
                return {"steps": steps, "jump": jump, "resample": 3}
    if method == "daps":
        ode = 5 if nfe >= 50 else 2
        return {"steps": nfe // ode + 1, "ode_steps": ode}  # t_min -> 0 runs no ODE
    return {"steps": nfe}


def run_method(method, model, sde, mixture, op, y, sigma_y, nfe, seed) -> sd.SampleResult:
    options = settings(method, nfe)
    steps = options.pop("steps")
    if method == "exact":
        post = mixture.posterior(op, y.double(), sigma_y)
        return sd.sample(post.score_fn(sde), sde, (len(y), *op.event), "heun", steps,
                         seed=seed, to_zero=True)  # fmt: skip
    return sd.restore(model, sde, op, y, sigma_y, method, steps=steps, seed=seed, **options)


def mixture_scores(x, mixture, op, y1, sigma_y, per: int) -> dict:
    """The scores of samples ``x`` (``per`` for each row of ``y1``), averaged over rows."""
    post = mixture.posterior(op, y1.double(), sigma_y)
    gen = torch.Generator().manual_seed(99)
    exact = post.sample(per, generator=gen, dtype=torch.float64)
    again = post.sample(per, generator=gen, dtype=torch.float64)
    x = x.double().reshape(len(y1), per, -1)
    mean, var = post.mean(), post.covariance().diagonal(dim1=1, dim2=2)
    component = torch.distributions.MultivariateNormal(mixture.means, mixture.covs)
    rows = []
    for b in range(len(y1)):
        g = torch.Generator().manual_seed(b)
        free = var[b] > 1e-8 * var[b].max()
        likely = (component.log_prob(x[b][:, None]) + mixture.weights.log()).argmax(1)
        rows.append({
            "sw2": sliced_wasserstein(x[b].float(), exact[b].float(), generator=g),
            "floor": sliced_wasserstein(again[b].float(), exact[b].float(), generator=g),
            "mean_error": float((x[b].mean(0) - mean[b]).pow(2).mean().sqrt()),
            "var_error": float((x[b].var(0) - var[b])[free].norm() / var[b][free].norm()),
            "wrong_mode": float((post.weights[b][likely] < 0.01).double().mean()),
            "residual": float(Observation(op, y1[b : b + 1].double(), sigma_y)
                              .residual(x[b].reshape(-1, *op.event)).norm(dim=1).mean()
                              / math.sqrt(y1.shape[1])),
        })  # fmt: skip
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def mixtures() -> list[dict]:
    sde = sd.EDMSDE()
    mixtures_ = {"gmm8": eight_gaussians(), "gmm64": high_dim_mixture()}
    out = []
    for name, task, view, sigma_y in MIXTURE_TASKS:
        mixture = mixtures_[name]
        model = mixture.score_fn(sde)
        op = build_measurement(task, view)
        truth = mixture.sample(MEASUREMENTS, generator=torch.Generator().manual_seed(7))
        y1 = op.measure(truth.reshape(-1, *view), sigma_y, torch.Generator().manual_seed(8))
        y = y1.repeat_interleave(PER_MEASUREMENT, 0).float()
        for nfe in NFE:
            for method in METHODS:
                start = time.perf_counter()
                res = run_method(method, model, sde, mixture, op, y, sigma_y, nfe, seed=nfe)
                wall = time.perf_counter() - start
                scores = mixture_scores(res.x, mixture, op, y1, sigma_y, PER_MEASUREMENT)
                row = {"problem": name, "task": task, "sigma_y": sigma_y, "method": method,
                       "nfe_budget": nfe, "nfe": res.nfe, "passes": res.network_passes,
                       "wall": wall, **scores}  # fmt: skip
                out.append(row)
                print(f"{name} {task} {method} NFE {res.nfe}: sW2 {row['sw2']:.4f} "
                      f"(floor {row['floor']:.4f})", flush=True)  # fmt: skip
    return out


def tune_on_training_digits(problem, task: str, sigma_y: float) -> dict[str, dict]:
    """Per method in ``TUNED``: the knob value with the best class accuracy on 360 training
    digits at NFE 100 (the test digits are not looked at)."""
    train = digits("train")
    x, labels = train.x[:360], train.labels[:360]
    op = build_measurement(task, (1, 8, 8))
    y = op.measure(x, sigma_y, torch.Generator().manual_seed(4))
    chosen = {}
    for method, (knob, values) in TUNED.items():
        scores = {}
        for value in values:
            res = sd.restore(problem.model, problem.sde, op, y, sigma_y, method, steps=100,
                             seed=5, **{knob: value})  # fmt: skip
            scores[value] = class_accuracy(res.x.clamp(-1, 1), labels)
        best = max(scores, key=scores.get)
        chosen[method] = {knob: best, "train_accuracy": scores}
        print(f"tuned {method} for {task} on training digits: {knob}={best} {scores}", flush=True)
    return chosen


def digits_part() -> tuple[list[dict], dict]:
    problem = load_problem("digits")
    test = digits("test")
    x, labels = test.x, test.labels
    out, pictures = [], {}
    baseline = {"clean_accuracy": class_accuracy(x, labels), "tuned": {}}
    for task, sigma_y in DIGITS_TASKS:
        op = build_measurement(task, (1, 8, 8))
        y = op.measure(x, sigma_y, torch.Generator().manual_seed(3))
        obs = Observation(op, y, sigma_y)
        alone = obs.spectrum(y).compose(obs.reading(y), torch.zeros_like(x))
        baseline[f"{task}_measurement_accuracy"] = class_accuracy(alone, labels)
        pictures[task] = [alone[:12], x[:12]]
        tuned = tune_on_training_digits(problem, task, sigma_y)
        baseline["tuned"][task] = tuned
        runs = [(m, nfe, {}) for nfe in DIGITS_NFE for m in method_names()]
        runs += [(m, 100, {k: v for k, v in t.items() if k != "train_accuracy"})
                 for m, t in tuned.items()]  # fmt: skip
        for method, nfe, knob in runs:
            options = {**settings(method, nfe), **knob}
            steps = options.pop("steps")
            start = time.perf_counter()
            res = sd.restore(problem.model, problem.sde, op, y, sigma_y, method,
                             steps=steps, seed=nfe, **options)  # fmt: skip
            wall = time.perf_counter() - start
            r = res.x.clamp(-1, 1)
            mse = (r - x).flatten(1).pow(2).mean(1).clamp_min(1e-12)
            label = method + "".join(f" ({k} {v:g}, tuned)" for k, v in knob.items())
            row = {"task": task, "method": label, "nfe_budget": nfe, "nfe": res.nfe,
                   "passes": res.network_passes, "wall": wall,
                   "accuracy": class_accuracy(r, labels),
                   "psnr": float((10 * torch.log10(4.0 / mse)).mean()),
                   "fid": digits_fid(r, x),
                   "residual": float(obs.residual(res.x).norm(dim=1).mean())
                   / math.sqrt(y.shape[1])}  # fmt: skip
            out.append(row)
            if nfe == 100 and not knob:
                pictures[task].insert(-1, r[:12])
            print(f"digits {task} {label} NFE {res.nfe}: accuracy {row['accuracy']:.3f} "
                  f"PSNR {row['psnr']:.1f} FID {row['fid']:.1f}", flush=True)  # fmt: skip
    for task, rows in pictures.items():
        save_image_grid(torch.cat(rows), RESULTS / f"inverse_digits_{task}.png", columns=12)
    return out, baseline


def mixture_summary(rows: list[dict], nfe: int = 100) -> str:
    """Sliced W2 at ``nfe`` of every method on every task, and its ratio to the exact
    sampler's at the same NFE (which is the sampling floor plus its discretisation)."""
    tasks = [(n, t) for n, t, _, _ in MIXTURE_TASKS]
    cell = {(r["problem"], r["task"], r["method"]): r["sw2"] for r in rows
            if r["nfe_budget"] == nfe}  # fmt: skip
    body = []
    for method in METHODS:
        cells = [method]
        for n, t in tasks:
            value, exact = cell.get((n, t, method)), cell.get((n, t, "exact"))
            ratio = "" if method == "exact" or value is None else f" ({value / exact:.1f}×)"
            cells.append("–" if value is None else f"{value:.3g}{ratio}")
        body.append(cells)
    floors = {(r["problem"], r["task"]): r["floor"] for r in rows if r["method"] == "exact"}
    body.append(["floor: two exact sets", *(f"{floors[k]:.3g}" for k in tasks)])
    header = ["method"] + [f"{n} {t}" for n, t in tasks]
    return (f"Sliced W2 to exact posterior samples at NFE {nfe} (in brackets: its ratio to the "
            "exact sampler's; the last row is the distance between two exact sample sets, "
            "below which no sampler can be told from exact):\n\n"
            + table(header, body) + "\n")  # fmt: skip


def mixture_markdown(rows: list[dict]) -> str:
    text = [mixture_summary(rows)]
    for name, task, _, sigma_y in MIXTURE_TASKS:
        mine = [r for r in rows if r["problem"] == name and r["task"] == task]
        if not mine:
            continue
        floor = sum(r["floor"] for r in mine) / len(mine)
        text.append(f"### {name}, {task}, σ_y = {sigma_y:g}\n\nsliced W2 to exact posterior "
                    f"samples (floor, two exact sets: {floor:.3g}); NFE is model calls, "
                    "passes count each backward pass too.\n")  # fmt: skip
        header = ["method"] + [f"NFE {n}" for n in NFE]
        body = []
        for method in METHODS:
            cells = [method]
            for n in NFE:
                r = next((r for r in mine if r["method"] == method and r["nfe_budget"] == n), None)
                cells.append("–" if r is None else f"{r['sw2']:.3g}")
            body.append(cells)
        text.append(table(header, body))
        at = [r for r in mine if r["nfe_budget"] == 100]
        text.append("\nAt NFE 100:\n")
        text.append(table(
            ["method", "NFE", "passes", "sliced W2", "mean RMS error", "variance error",
             "wrong mode", "‖Ax − y‖/√m", "wall s"],
            [[r["method"], str(r["nfe"]), str(r["passes"]), r["sw2"], r["mean_error"],
              r["var_error"], r["wrong_mode"], r["residual"], r["wall"]] for r in at],
        ))  # fmt: skip
        text.append("")
    return "\n".join(text)


def digits_markdown(rows: list[dict], baseline: dict) -> str:
    text = [f"Test digits: 360; the classifier's accuracy on the clean digits (ceiling) is "
            f"{100 * baseline['clean_accuracy']:.1f} %.\n"]  # fmt: skip
    for task, sigma_y in DIGITS_TASKS:
        floor = 100 * baseline[f"{task}_measurement_accuracy"]
        text.append(f"### digits, {task}, σ_y = {sigma_y:g}\n\nThe measurement alone "
                    f"(A⁺ y) is classified right {floor:.1f} % of the time.\n")  # fmt: skip
        mine = [r for r in rows if r["task"] == task]
        text.append(table(
            ["method", "NFE", "passes", "class accuracy", "PSNR dB", "digits-FID",
             "‖Ax − y‖/√m", "wall s"],
            [[r["method"], str(r["nfe"]), str(r["passes"]), f"{100 * r['accuracy']:.1f} %",
              r["psnr"], r["fid"], r["residual"], r["wall"]] for r in mine],
        ))  # fmt: skip
        text.append("")
    return "\n".join(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["mixtures", "digits", "both"], default="both")
    parser.add_argument("--report", action="store_true", help="rewrite the tables from the JSON")
    args = parser.parse_args()
    parts = ["mixtures", "digits"] if args.part == "both" else [args.part]
    for part in parts:
        name = f"inverse_{part}"
        if args.report:
            saved = json.loads((RESULTS / f"{name}.json").read_text())
        elif part == "mixtures":
            saved = {"rows": mixtures()}
        else:
            rows, baseline = digits_part()
            saved = {"rows": rows, "baseline": baseline}
        if part == "mixtures":
            text = mixture_markdown(saved["rows"])
        else:
            text = digits_markdown(saved["rows"], saved["baseline"])
        if args.report:
            (RESULTS / f"{name}.md").write_text(f"Machine: {saved['machine']}\n\n{text}")
        else:
            write_results(name, saved, text)
        print(text)


if __name__ == "__main__":
    main()
