"""``sdediff distill``: train a few-step student of a score model (progressive or guided
distillation, consistency distillation)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import click
import torch

from sde_diffusion.pretrained import available, pretrained_path
from sde_diffusion.solvers.registry import get_solver
from sde_diffusion.timesteps import SCHEDULES
from sde_diffusion.training import TrainConfig, Trainer, load_data, load_score_model
from sde_diffusion.training.checkpoint import CheckpointError, load_checkpoint
from sde_diffusion.training.consistency import LEVEL_WEIGHTS, METRICS, ConsistencyObjective
from sde_diffusion.training.distillation import (
    GuidanceDistillation,
    ProgressiveDistillation,
    progressive_grids,
    student_of,
)
from sde_diffusion.training.log import metrics_path

from .common import (
    SolverName,
    console,
    finite,
    friendly_errors,
    out_option,
    parse_device,
    resume_option,
    start_ranks,
    writable_output,
)
from .sample import device_option, seed_option
from .train import run_trainer

METHODS = ("progressive", "guided", "consistency")
DEFAULT_STEPS = {"progressive": 4, "guided": 4, "consistency": 1}
DEFAULT_TEACHER_STEPS = {"progressive": 64, "guided": 64, "consistency": 80}
METHOD_OPTIONS = {  # options that mean something to some methods only
    "schedule": ("progressive", "guided"),
    "guidance": ("guided",),
    "metric": ("consistency",),
    "target_ema": ("consistency",),
    "level_weights": ("consistency",),
}


def round_path(out: Path, index: int) -> Path:
    """Where round ``index`` of a progressive run leaves its student (the next teacher)."""
    return out.with_name(f"{out.stem}.round{index}{out.suffix}")


def open_teacher(name: str, device: torch.device):
    """The teacher ``--teacher`` names (shipped or a checkpoint) and its config."""
    path = pretrained_path(name) if name in available() else Path(name)
    if not path.is_file():
        raise click.BadParameter(
            f"no model {name!r}: not a checkpoint nor one of {', '.join(available())}",
            param_hint="--teacher",
        )
    try:
        model, config = load_score_model(path, device=device)
    except CheckpointError as err:
        raise click.BadParameter(
            f"{name} is not a score model this command can distil: {err}", param_hint="--teacher"
        ) from None
    if "objective" in config:
        raise click.BadParameter(
            f"{name} is already a student ({config['objective']['method']}); distil its "
            "score-model teacher instead",
            param_hint="--teacher",
        )
    return model.requires_grad_(False), config


def parse_range(value: str) -> tuple[float, float]:
    """``--guidance LO,HI``: the range of guidance scales a guided student learns."""
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(
            f"expected LO,HI (two numbers), got {value!r}", param_hint="--guidance"
        ) from None
    if not (0 <= lo <= hi < math.inf):
        raise click.BadParameter(f"need 0 <= LO <= HI, got {value!r}", param_hint="--guidance")
    return lo, hi


def resumed_settings(path: Path) -> dict:
    """What ``--resume`` continues: the run's objective record and training settings."""
    try:
        _, config = load_checkpoint(path)
    except CheckpointError as err:
        raise click.BadParameter(str(err), param_hint="--resume") from None
    record = config.get("objective")
    if not record or "optimizer_groups" not in config or "teacher" not in record:
        raise click.BadParameter(
            f"{path} is not a checkpoint of sdediff distill", param_hint="--resume"
        )
    return {"record": record, "train": config["train"], "step": config["step"]}


@click.command()
@click.option(
    "--teacher", required=False, help="The score model to distil: a shipped name or a checkpoint."
)
@click.option("--method", type=click.Choice(METHODS), default="progressive", show_default=True)
@click.option(
    "--steps",
    type=click.IntRange(1, 1024),
    default=None,
    help="The student's sampling steps (its NFE)  [default: 4; consistency: 1].",
)
@click.option(
    "--teacher-steps",
    type=click.IntRange(2, 8192),
    default=None,
    help="progressive/guided: the teacher's DDIM steps in the first round (--steps times a "
    "power of two) [default: 64]; consistency: the finest discretisation's intervals "
    "[default: 80].",
)
@click.option(
    "--teacher-solver",
    type=SolverName(),
    default=None,
    help="consistency: the deterministic solver of the teacher's ODE step [default: heun]; "
    "progressive and guided follow the teacher's DDIM steps.",
)
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default="karras",
    show_default=True,
    help="progressive/guided: the teacher's time grid.",
)
@click.option(
    "--guidance",
    default="1,5",
    show_default=True,
    help="guided: the range LO,HI of guidance scales the student takes as an input.",
)
@click.option(
    "--metric",
    type=click.Choice(METRICS),
    default="pseudo-huber",
    show_default=True,
    help="consistency: the distance between the two predictions.",
)
@click.option(
    "--level-weights",
    type=click.Choice(LEVEL_WEIGHTS),
    default="lognormal",
    show_default=True,
    help="consistency: how the noise level of each sample is drawn (iCT's log-normal, or "
    "uniformly over the levels as the first consistency models did).",
)
@click.option(
    "--target-ema",
    type=click.FloatRange(0, 1, max_open=True),
    callback=finite,
    default=0.0,
    show_default=True,
    help="consistency: EMA decay of the target network (0: the student's own weights).",
)
@click.option(
    "--train-steps",
    type=click.IntRange(1, 10**8),
    default=2000,
    show_default=True,
    help="Training steps of each progressive round (of the whole run for consistency).",
)
@click.option("--batch-size", type=click.IntRange(1, 10**6), default=128, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    callback=finite,
    default=1e-4,
    show_default=True,
)
@click.option(
    "--ema",
    type=click.FloatRange(0, 1, max_open=True),
    callback=finite,
    default=0.995,
    show_default=True,
    help="EMA decay of the student's weights (what it exports).",
)
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, show_default=True)
@out_option("runs/student.safetensors")
@resume_option("Continue an interrupted run from its checkpoint (the run's own settings).")
@seed_option
@device_option
def distill(
    teacher, method, steps, teacher_steps, teacher_solver, schedule, guidance, metric,
    level_weights, target_ema, train_steps, batch_size, lr, ema, checkpoint_every, out, resume,
    seed, device,
):  # fmt: skip
    """Train a student that samples in few steps from a score model.

    \b
    Examples:
      sdediff distill --teacher digits --method progressive --steps 4 --out runs/fast.safetensors
      sdediff distill --teacher digits --method consistency --teacher-solver heun --steps 1
      sdediff distill --teacher digits-cond --method guided --guidance 1,5 --steps 4
      sdediff distill --resume runs/fast.safetensors

    The student is a checkpoint like any other; its metadata names the solver and times it
    samples with, so `sdediff sample --model runs/fast.safetensors` needs no flags.
    Progressive rounds leave their students as OUT.roundK.safetensors (with their logs).
    """
    settings = None
    ctx = click.get_current_context()
    if resume is not None:  # the run's own settings: a flag that would change them is an error
        chosen = [p.name for p in ctx.command.params if p.name not in ("resume", "out", "device")
                  and ctx.get_parameter_source(p.name).name == "COMMANDLINE"]  # fmt: skip
        if chosen:
            raise click.BadParameter(
                f"--resume continues a run with its own settings; drop "
                f"--{chosen[0].replace('_', '-')} (only --out and --device may change)",
                param_hint="--resume",
            )
        settings = resumed_settings(resume)
        record, train = settings["record"], settings["train"]
        teacher, method = record["teacher"], record["method"]
        if method.startswith("consistency"):
            method, steps, teacher_steps = "consistency", record["sampling_steps"], record["s1"]
            teacher_solver, metric = record["teacher_solver"], record["metric"]
            target_ema = record["target_ema"]
            level_weights = record.get("level_weights", "lognormal")
        else:
            method = "guided" if "guidance" in record else "progressive"
            steps, teacher_steps = record["student_steps"], record["teacher_steps"]
            schedule, guidance = record["schedule"], ",".join(map(str, record.get("guidance", [])))
        train_steps, batch_size, lr = train["steps"], train["batch_size"], train["lr"]
        ema, seed, checkpoint_every = train["ema_decay"], train["seed"], train["checkpoint_every"]
        if ctx.get_parameter_source("out").name == "DEFAULT":
            out = resume
    if teacher is None:
        raise click.UsageError("name the model to distil with --teacher (or --resume a run)")
    for option, methods in METHOD_OPTIONS.items():
        given = ctx.get_parameter_source(option).name not in ("DEFAULT", "DEFAULT_MAP")
        if given and method not in methods:
            raise click.BadParameter(
                f"applies to --method {' or '.join(methods)}, not {method}",
                param_hint="--" + option.replace("_", "-"),
            )
    writable_output(out, suffixes=(".safetensors",))
    steps = steps or DEFAULT_STEPS[method]
    teacher_steps = teacher_steps or DEFAULT_TEACHER_STEPS[method]
    if method != "consistency" and teacher_solver not in (None, "ddim"):
        raise click.BadParameter(
            f"{method} distillation follows the teacher's DDIM steps; --teacher-solver "
            "applies to --method consistency",
            param_hint="--teacher-solver",
        )
    teacher_solver = teacher_solver or "heun"
    step = get_solver(teacher_solver)
    if method == "consistency" and (step.stochastic or step.adaptive):
        raise click.BadParameter(
            f"{teacher_solver} is not a deterministic fixed-grid solver; the teacher's ODE "
            "step needs one (heun, euler, dpmpp_2m, ...)",
            param_hint="--teacher-solver",
        )
    w_range = parse_range(guidance) if method == "guided" else None
    device = start_ranks(parse_device(device))
    with friendly_errors("distilling"):
        model, config = open_teacher(teacher, device)
        if method == "guided" and not config["network"].get("num_classes"):
            raise click.BadParameter(
                f"{teacher} is unconditional; guided distillation needs a class-conditional "
                "teacher (digits-cond)",
                param_hint="--teacher",
            )
        if method != "consistency":
            try:
                grids = progressive_grids(model.sde, teacher_steps, steps, schedule)
            except ValueError as err:
                raise click.BadParameter(str(err), param_hint="--teacher-steps") from None
        data = load_data(config["data"].get("source", config["data"]["name"]), 20000, seed)
        train = TrainConfig(
            steps=train_steps,
            batch_size=batch_size,
            lr=lr,
            warmup=min(100, train_steps // 10),
            ema_decay=ema,
            seed=seed,
            checkpoint_every=checkpoint_every,
            device=str(device),
            cond_drop_prob=0.0,  # a student keeps every label (its teacher guides them)
        )
        plan = Plan(model, teacher, data, train, out, resume is not None)
        if method == "consistency":
            plan.consistency(steps, teacher_steps, teacher_solver, metric, level_weights,
                             target_ema)  # fmt: skip
        else:
            record = {"student_steps": steps, "teacher_steps": teacher_steps, "schedule": schedule}
            start = int(settings["record"]["round"]) if settings else None
            plan.progressive(grids, w_range, record, start)
    console.print(
        f"[bold green]done[/]: a {steps}-step student of {teacher} -> {out}; sample it with "
        f"sdediff sample --model {out}"
    )


class Plan:
    """The rounds of one distillation run, each a :class:`Trainer` writing ``out``."""

    def __init__(self, teacher, name: str, data, train: TrainConfig, out: Path, resume: bool):
        self.teacher, self.name, self.data = teacher, name, data
        self.train, self.out, self.resume = train, out, resume

    def run(self, student, objective, resume: bool, label: str) -> Trainer:
        trainer = Trainer(student, self.data, self.train, objective=objective)
        if resume:
            trainer.resume(self.out)
            console.print(f"resumed {label} at step {trainer.step}")
        console.print(f"{label}: {self.train.steps} steps on {self.data.name}")
        run_trainer(trainer, self.out)
        return trainer

    def consistency(self, steps, teacher_steps, solver, metric, weights, target_ema) -> None:
        student = student_of(self.teacher, parametrization="consistency")
        objective = ConsistencyObjective(
            student,
            self.train.steps,
            teacher=self.teacher,
            teacher_solver=solver,
            s0=min(10, teacher_steps),
            s1=teacher_steps,
            metric=metric,
            level_weights=weights,
            target_ema=target_ema,
            sampling_steps=steps,
            record={"teacher": self.name, "sampling_steps": steps},
        )
        self.run(student, objective, self.resume, f"consistency distillation of {self.name}")

    def progressive(self, grids, w_range, record: dict, start: int | None) -> None:
        """Round 0 (guided only) distils the guided teacher into one pass with ``w`` as an
        input; rounds 1.. halve the steps, each teacher the round before's student."""
        first = 0 if w_range is not None else 1
        for index in range(first if start is None else start, len(grids) + 1):
            resume = start is not None and index == start
            record = record | {"teacher": self.name, "round": index, "rounds": len(grids)}
            if index == 0:
                student = student_of(self.teacher, guidance_input=True)
                null = self.teacher.net.config["num_classes"]
                objective = GuidanceDistillation(
                    self.teacher, self.teacher.sde, null, w_range,
                    sigma_data=self.teacher.sigma_data, record=record,
                )  # fmt: skip
                label = f"guided distillation of {self.name}"
            else:
                teacher = self.teacher
                if index > 1 or w_range is not None:
                    teacher, _ = load_score_model(round_path(self.out, index - 1),
                                                  device=self.train.device)  # fmt: skip
                teacher.requires_grad_(False)
                student = student_of(teacher)
                grid = grids[index - 1]
                objective = ProgressiveDistillation(teacher, teacher.sde, grid, guidance=w_range,
                                                    record=record)  # fmt: skip
                steps = (len(grid) - 1) // 2
                label = f"round {index}/{len(grids)}: {2 * steps} -> {steps} steps"
            trainer = self.run(student, objective, resume, label)
            kept = round_path(self.out, index)
            trainer.export(kept)
            shutil.copyfile(metrics_path(self.out), metrics_path(kept))  # the next round's
            # run starts the log at OUT afresh
