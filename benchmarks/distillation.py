"""Few-step students against their teacher at equal NFE.

    python benchmarks/distillation.py --train     # the students (sdediff commands below)
    python benchmarks/distillation.py             # score them: results/distillation.md
    python benchmarks/distillation.py --quick     # a short check of the script
    python benchmarks/distillation.py --ship 2    # the 2-step CD student becomes digits-fast

Students of the shipped ``digits`` and ``moons`` models: progressive distillation (64
DDIM steps of the teacher halved round by round down to 1: the rounds' students sample in
32 ... 1 steps), consistency distillation (Heun as the teacher's ODE step) and consistency
training (no teacher), and a guided student of ``digits-cond``.  Each is scored at NFE 1,
2, 4 and 8 (digits-FID of 1000 samples to the test split; moons: sliced W2 of 4096 samples
to a fresh draw) beside the teacher with its best deterministic solver at the same NFE, on
the Karras or log-SNR grid or a grid tuned for it (``sd.tune_timesteps``, method
``search``), and beside the teacher at 50 NFE (Heun, 25 Karras steps).  Training cost:
steps, wall time (from each run's metrics log) and teacher evaluations per sample.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from common import RESULTS, machine, table, write_results

import sde_diffusion as sd
from sde_diffusion.evaluation.benchmark import steps_for_nfe
from sde_diffusion.evaluation.digits_eval import class_accuracy
from sde_diffusion.evaluation.problems import load_problem
from sde_diffusion.plotting import save_image_grid
from sde_diffusion.training import load_score_model
from sde_diffusion.training.checkpoint import load_checkpoint, save_checkpoint
from sde_diffusion.training.consistency import consistency_times
from sde_diffusion.training.distillation import GuidedStudent
from sde_diffusion.training.log import metrics_path, read_metrics

STUDENTS = RESULTS / "tmp" / "students"
NFES = (1, 2, 4, 8)
SAMPLES = {"digits": 1000, "moons": 4096}
TEACHER_SOLVERS = ("ddim", "euler", "heun", "dpmpp_2m", "deis", "unipc", "lms", "ipndm", "dpmpp_3m")
TUNED = ("deis", "dpmpp_2m", "unipc")
GUIDANCE = (1.0, 2.0, 4.0)


def commands(name: str, quick: bool) -> dict[str, list[str]]:
    """The commands that make the students of shipped model ``name`` (one per method)."""
    small = name == "moons"
    rounds = "200" if quick else ("1500" if small else "3000")
    out = {
        "progressive": [
            "distill",
            "--teacher",
            name,
            "--method",
            "progressive",
            "--steps",
            "1",
            "--teacher-steps",
            "64",
            "--train-steps",
            rounds,
            "--lr",
            "1e-4",
        ],
        "consistency distillation": [
            "distill",
            "--teacher",
            name,
            "--method",
            "consistency",
            "--teacher-solver",
            "heun",
            "--steps",
            "2",
            "--teacher-steps",
            "18",
            "--level-weights",
            "uniform",
            "--train-steps",
            "200" if quick else "4000",
            "--lr",
            "2e-4",
        ],
        "consistency training": [
            "train",
            "--data",
            name,
            "--method",
            "consistency-training",
            "--levels",
            "10,80",
            "--level-weights",
            "uniform",
            "--steps",
            "300" if quick else ("5000" if small else "8000"),
            "--batch-size",
            "256" if small else "128",
            "--checkpoint-every",
            "1000",
        ]
        + ([] if small else ["--lr", "1e-3"]),
    }
    if name == "digits":
        out["guided"] = [
            "distill",
            "--teacher",
            "digits-cond",
            "--method",
            "guided",
            "--steps",
            "4",
            "--teacher-steps",
            "64",
            "--guidance",
            "1,5",
            "--train-steps",
            "200" if quick else "1500",
            "--lr",
            "1e-4",
        ]
    return out


def student_path(name: str, method: str) -> Path:
    return STUDENTS / f"{name}-{method.replace(' ', '-')}.safetensors"


def train(quick: bool) -> None:
    """Run each command whose student is missing or unfinished (a run resumes)."""
    STUDENTS.mkdir(parents=True, exist_ok=True)
    for name in ("digits", "moons"):
        for method, args in commands(name, quick).items():
            out = student_path(name, method)
            if finished(out):
                continue
            resume = ["--resume", str(out)] if out.exists() else []
            run = args[:2] + resume if resume and args[0] == "distill" else args + resume
            print(" ".join(["sdediff", *run, "--out", str(out)]), flush=True)
            subprocess.run(["sdediff", *run, "--out", str(out)], check=True)


def finished(path: Path) -> bool:
    if not path.exists():
        return False
    config = load_checkpoint(path)[1]
    record = config.get("objective", {})
    done = config["step"] >= config["train"]["steps"]
    return done and record.get("round", 0) == record.get("rounds", 0)


# -- scoring --------------------------------------------------------------------------------


SEEDS = (0, 1, 2, 3, 4)  # the quality of a configuration: the median over these draws


def score(problem, x: torch.Tensor) -> float:
    return problem.quality(x.float(), 0)


@torch.no_grad()
def run_grid(
    model, problem, n: int, solver, grid, cond=None, seed: int = 0
) -> tuple[torch.Tensor, int, float]:
    shape = (n, *problem.event_shape)
    res = sd.sample(model, problem.sde, shape, solver, grid=grid, seed=seed, cond=cond)
    return res.x, round(res.nfe_per_batch), res.network_passes / res.batches


def median_quality(model, problem, n: int, solver, grid, cond=None) -> dict:
    """The configuration's quality at each of ``SEEDS`` and their median, with its NFE."""
    runs = [run_grid(model, problem, n, solver, grid, cond, seed) for seed in SEEDS]
    values = [score(problem, x) for x, _, _ in runs]
    return {
        "quality": statistics.median(values),
        "per_seed": values,
        "nfe": runs[0][1],
        "passes": runs[0][2],
    }


def teacher_grids(problem, solver: str, nfe: int, quick: bool) -> dict[str, torch.Tensor]:
    """Karras and log-SNR grids, ending at 0 or at t_min, and a grid tuned for the solver."""
    sde, grids = problem.sde, {}
    if nfe == 1:
        return {"one step": torch.tensor([float(sde.T), 0.0], dtype=torch.float64)}
    for to_zero in (True, False):
        steps = steps_for_nfe(solver, nfe, to_zero=to_zero)
        if steps is None or (to_zero and steps < 2):
            continue
        for name in ("karras", "logsnr"):
            grids[name + (", to 0" if to_zero else "")] = sd.timesteps(
                sde, steps, name, to_zero=to_zero
            )
    if solver in TUNED and not quick:
        tuned = sd.tune_timesteps(
            problem.model,
            sde,
            nfe=nfe,
            solver=solver,
            shape=tuple(problem.event_shape),
            samples=64,
            seed=1,
            method="search",
            max_evaluations=150,
        )
        grids["tuned"] = tuned.tensor()
    return grids


def teacher_rows(problem, name: str, n: int, quick: bool) -> list[dict]:
    """The teacher's best deterministic solver and grid at each NFE (chosen on seed 0 among
    every solver and grid, tuned included, then scored on all seeds), and the teacher at 50
    NFE (Heun, 25 Karras steps)."""
    rows = []
    for nfe in NFES:
        tried = []
        for solver in TEACHER_SOLVERS[:3] if quick else TEACHER_SOLVERS:
            if nfe == 1 and sd.get_solver(solver).nfe_per_step > 1:
                continue
            for grid_name, grid in teacher_grids(problem, solver, nfe, quick).items():
                x, used, _ = run_grid(problem.model, problem, n, solver, grid)
                if used <= nfe:
                    tried.append((score(problem, x), solver, grid_name, grid))
                    print(name, nfe, solver, grid_name, tried[-1][0], flush=True)
        _, solver, grid_name, grid = min(tried, key=lambda r: r[0])
        found = median_quality(problem.model, problem, n, solver, grid)
        rows.append(
            {
                "problem": name,
                "who": "teacher",
                "method": solver,
                "grid": grid_name,
                "budget": nfe,
                "tried": len(tried),
                **found,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    found = median_quality(problem.model, problem, n, "heun", sd.timesteps(problem.sde, 25))
    rows.append(
        {
            "problem": name,
            "who": "teacher",
            "method": "heun",
            "grid": "karras",
            "reference": True,
            **found,
        }
    )
    return rows


def student_rows(problem, name: str, n: int) -> list[dict]:
    """Each student at each NFE it serves: a progressive round's own DDIM grid, consistency
    sampling on :func:`consistency_times`; the median over ``SEEDS``."""
    rows = []
    prog = student_path(name, "progressive")
    for k in range(1, 7):
        path = prog.with_name(f"{prog.stem}.round{k}{prog.suffix}")
        if not path.exists():
            continue
        model, config = load_score_model(path)
        grid = torch.tensor(config["sampling"]["times"], dtype=torch.float64)
        if len(grid) - 1 not in NFES:
            continue
        found = median_quality(model, problem, n, "ddim", grid)
        rows.append(
            {
                "problem": name,
                "who": "student",
                "method": "progressive",
                "grid": f"round {k}",
                **found,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    for method in ("consistency distillation", "consistency training"):
        path = student_path(name, method)
        if not path.exists():
            continue
        model, _ = load_score_model(path)
        for nfe in NFES:
            grid = torch.tensor(consistency_times(problem.sde, nfe), dtype=torch.float64)
            found = median_quality(model, problem, n, "consistency", grid)
            rows.append(
                {
                    "problem": name,
                    "who": "student",
                    "method": method,
                    "grid": "consistency times",
                    **found,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def costs(name: str, quick: bool) -> list[dict]:
    """Training steps, wall time and teacher evaluations per training sample of each run."""
    rows = []
    for method in commands(name, quick):
        path = student_path(name, method)
        if not path.exists():
            continue
        config = load_checkpoint(path)[1]
        record, steps = config.get("objective", {}), config["train"]["steps"]
        logs = [path]
        if method in ("progressive", "guided"):
            first = 0 if method == "guided" else 1
            logs = [
                path.with_name(f"{path.stem}.round{k}{path.suffix}")
                for k in range(first, record["rounds"] + 1)
            ]
        seconds = sum(_wall(p) for p in logs)
        total = steps * len(logs)
        per_step = {"progressive": 2, "guided": 2, "consistency distillation": 2}.get(method, 0)
        rows.append(
            {
                "problem": name,
                "method": method,
                "runs": len(logs),
                "steps": total,
                "seconds": seconds,
                "teacher_evaluations_per_sample": per_step,
                "teacher_evaluations": per_step * total * config["train"]["batch_size"],
            }
        )
    return rows


def _wall(path: Path) -> float:
    """A run's training time from its metrics log (each round keeps a copy of its own)."""
    rows = [r for r in read_metrics(metrics_path(path)) if "loss" in r]
    return rows[-1]["time"] if rows else float("nan")


@torch.no_grad()
def guided_rows(n: int) -> list[dict]:
    """The guided student (4 steps, one pass each) against the teacher's CFG (two passes a
    step) at w = 1, 2, 4: digits-FID to the test split and the judge's class accuracy."""
    path = student_path("digits", "guided")
    if not path.exists():
        return []
    problem = load_problem("digits-cond")
    student, config = load_score_model(path)
    w_max = config["objective"]["guidance"][1]
    grid = torch.tensor(config["sampling"]["times"], dtype=torch.float64)
    labels = torch.arange(10).repeat_interleave(-(-n // 10))[:n]
    rows = []
    for w in GUIDANCE:
        cfg = sd.ClassifierFreeGuidance(problem.model, w, 10)
        runs = {
            "guided student, ddim": (GuidedStudent(student, w, w_max), "ddim", grid),
            "teacher CFG, heun 25": (cfg, "heun", sd.timesteps(problem.sde, 25, "karras")),
            "teacher CFG, dpmpp_2m 4": (
                cfg,
                "dpmpp_2m",
                sd.timesteps(problem.sde, 4, "logsnr", to_zero=True),
            ),
        }
        for who, (model, solver, times) in runs.items():
            fids, accuracies = [], []
            for seed in SEEDS:
                x, nfe, passes = run_grid(model, problem, n, solver, times, labels, seed)
                fids.append(score(problem, x))
                accuracies.append(class_accuracy(x.clamp(-1, 1), labels))
            rows.append(
                {
                    "w": w,
                    "who": who,
                    "nfe": nfe,
                    "passes": passes,
                    "quality": statistics.median(fids),
                    "accuracy": statistics.median(accuracies),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def picture() -> None:
    """A row of digits per student at its fewest steps (and the teacher at 50 NFE)."""
    problem = load_problem("digits")
    rows = []
    with torch.no_grad():
        rows.append(
            run_grid(problem.model, problem, 12, "heun", sd.timesteps(problem.sde, 25, "karras"))[0]
        )
        prog = student_path("digits", "progressive")
        for k in (4, 5, 6):
            model, config = load_score_model(prog.with_name(f"{prog.stem}.round{k}{prog.suffix}"))
            rows.append(
                run_grid(model, problem, 12, "ddim", torch.tensor(config["sampling"]["times"]))[0]
            )
        for method in ("consistency distillation", "consistency training"):
            model, _ = load_score_model(student_path("digits", method))
            grid = torch.tensor(consistency_times(problem.sde, 1))
            rows.append(run_grid(model, problem, 12, "consistency", grid)[0])
    save_image_grid(torch.cat(rows), RESULTS / "distillation_samples.png", columns=12)


def ship(steps: int) -> None:
    """The consistency-distilled digits student, sampling in ``steps`` steps, into the
    package as ``digits-fast``, with its figures (median digits-FID over ``SEEDS``, 1000
    samples each) in its .json.

    Its weights do not depend on ``distill --steps``, which only names the sampling steps
    in the metadata: this writes the ``steps``-step times of :func:`consistency_times`
    there (what ``distill --steps STEPS`` writes)."""
    from sde_diffusion.pretrained import __file__ as package

    path = student_path("digits", "consistency distillation")
    model, _ = load_score_model(path)
    tensors, config = load_checkpoint(path)
    problem = load_problem("digits")
    times = consistency_times(problem.sde, steps)
    found = median_quality(
        model, problem, SAMPLES["digits"], "consistency", torch.tensor(times, dtype=torch.float64)
    )
    config["sampling"] = {"solver": "consistency", "solver_options": {}, "times": times}
    config["objective"]["sampling_steps"] = steps
    target = Path(package).parent / "digits-fast.safetensors"
    weights = {k: v for k, v in tensors.items() if k.startswith("ema/")}  # an export
    save_checkpoint(
        target,
        weights,
        {k: v for k, v in config.items() if k not in ("optimizer_groups", "posthoc_ema")},
    )
    command = commands("digits", False)["consistency distillation"]
    figures = {
        "teacher": "digits",
        "method": "consistency distillation",
        "solver": "consistency",
        "solver_steps": steps,
        "nfe": found["nfe"],
        "fid_samples_test": found["quality"],  # the median over SEEDS
        "fid_per_seed": found["per_seed"],
        "train_seconds": _wall(path),
        "train_steps": config["train"]["steps"],
        "command": " ".join(["sdediff", *command]),
        "machine": machine(),
    }
    target.with_suffix(".json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))


def markdown(payload: dict) -> str:
    text = ""
    for name in ("digits", "moons"):
        rows = [r for r in payload["rows"] if r["problem"] == name]
        if not rows:
            continue
        metric = "digits-FID" if name == "digits" else "sliced W2"
        ref = next(r for r in rows if r.get("reference"))
        text += f"### {name}: {metric} at equal NFE (teacher at {ref['nfe']} NFE: "
        text += f"{ref['quality']:.3g})\n\n"
        header = ["who", *(f"NFE {n}" for n in NFES)]
        lines = []
        for method in ("progressive", "consistency distillation", "consistency training"):
            found = {r["nfe"]: r["quality"] for r in rows if r["method"] == method}
            if found:
                lines.append([f"student: {method}", *(found.get(n, float("nan")) for n in NFES)])
        best = []
        for n in NFES:
            teacher = [r for r in rows if r["who"] == "teacher" and r.get("budget") == n]
            best.append(teacher[0] if teacher else None)
        lines.append(
            ["teacher, best solver and grid", *(b["quality"] if b else float("nan") for b in best)]
        )
        lines.append(
            ["(that solver, grid)", *(f"{b['method']}, {b['grid']}" if b else "–" for b in best)]
        )
        text += table(header, lines) + "\n"
    cost = payload["costs"]
    if cost:
        text += "### Training cost\n\n"
        text += (
            table(
                [
                    "problem",
                    "method",
                    "runs",
                    "steps",
                    "seconds",
                    "teacher evals / sample",
                    "teacher evals",
                ],
                [
                    [
                        c["problem"],
                        c["method"],
                        c["runs"],
                        c["steps"],
                        c["seconds"],
                        c["teacher_evaluations_per_sample"],
                        c["teacher_evaluations"],
                    ]
                    for c in cost
                ],
            )
            + "\n"
        )
    guided = payload["guided"]
    if guided:
        text += "### Guided student (digits-cond, 1000 samples, 100 of each class)\n\n"
        text += table(
            ["w", "who", "NFE", "network passes", "digits-FID", "class accuracy"],
            [
                [r["w"], r["who"], r["nfe"], r["passes"], r["quality"], r["accuracy"]]
                for r in guided
            ],
        )
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", action="store_true", help="train the missing students")
    parser.add_argument("--quick", action="store_true", help="small runs, few samples")
    parser.add_argument("--ship", type=int, default=None, help="ship this student as digits-fast")
    args = parser.parse_args()
    if args.quick:  # small students of their own, beside the real ones
        global STUDENTS
        STUDENTS = STUDENTS.with_name("students-quick")
    torch.set_num_threads(2)
    if args.ship:
        ship(args.ship)
        return
    if args.train:
        train(args.quick)
        return
    rows = []
    for name in ("moons", "digits"):
        problem = load_problem(name)
        n = 256 if args.quick else SAMPLES[name]
        rows += student_rows(problem, name, n)
        rows += teacher_rows(problem, name, n, args.quick)
    payload = {
        "rows": rows,
        "costs": costs("moons", args.quick) + costs("digits", args.quick),
        "guided": guided_rows(200 if args.quick else 1000),
    }
    write_results(
        "distillation_quick" if args.quick else "distillation", payload, markdown(payload)
    )
    if not args.quick:
        picture()
    print((RESULTS / "distillation.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
