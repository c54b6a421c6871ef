"""Few-step students: progressive and guided distillation, consistency distillation and
training, checked against a Gaussian mixture's exact denoiser and PF-ODE; the command line
(`sdediff distill`, `train --method consistency-training`, sampling a student)."""

import itertools
import json
import math

import pytest
import torch
from helpers import run_in

import sde_diffusion as sd
from sde_diffusion.networks import ResidualMLP
from sde_diffusion.parametrization import ScoreModel
from sde_diffusion.pretrained import load_pretrained
from sde_diffusion.training import TrainConfig, Trainer, load_data, load_score_model
from sde_diffusion.training.checkpoint import load_checkpoint
from sde_diffusion.training.consistency import (
    ConsistencyObjective,
    consistency_times,
    curriculum,
    karras_levels,
    level_probabilities,
)
from sde_diffusion.training.data import Dataset
from sde_diffusion.training.distillation import (
    ProgressiveDistillation,
    ddim_step,
    progressive_grids,
    progressive_target,
    student_of,
)

SDE = sd.VPSDE()


def run(*args, cwd):
    return run_in(cwd, *args)


def mixture_teacher():
    gmm = sd.GaussianMixture([[-1.0, 0.5], [1.0, -0.5]], [0.15, 0.25], [0.3, 0.7])
    return gmm, gmm.score_fn(SDE)


# -- progressive distillation --------------------------------------------------------------


def test_progressive_target_makes_one_ddim_step_equal_two():
    """The target x~ is the x0 whose DDIM step from t lands where the teacher's two land."""
    gmm, teacher = mixture_teacher()
    torch.manual_seed(0)
    n = 64
    t = torch.rand(n, dtype=torch.float64) * 0.8 + 0.2
    u, s = t * 0.6, t * 0.3
    z_t = gmm.marginal(SDE, 0.5).sample(n, dtype=torch.float64)
    z_s = ddim_step(teacher, SDE, ddim_step(teacher, SDE, z_t, t, u), u, s)
    target = progressive_target(SDE, z_t, z_s, t, s)
    one = ddim_step(_fixed("x0", target), SDE, z_t, t, s)
    torch.testing.assert_close(one, z_s, rtol=0, atol=1e-10)
    # and the teacher's own single step does not land there (the gap the student closes)
    assert (ddim_step(teacher, SDE, z_t, t, s) - z_s).abs().max() > 1e-3


class _fixed:
    def __init__(self, prediction, value):
        self.prediction, self.value = prediction, value

    def __call__(self, x, t, cond=None):
        return self.value


def test_progressive_grids_halve_and_refuse_a_grid_the_teacher_cannot_serve():
    grids = progressive_grids(SDE, 16, 2, "karras")
    assert [len(g) - 1 for g in grids] == [16, 8, 4]
    torch.testing.assert_close(grids[1], grids[0][::2])
    assert grids[0][0] == SDE.T and grids[0][-1] == 0.0
    with pytest.raises(sd.ArgumentError, match="power of two"):
        progressive_grids(SDE, 12, 4)
    with pytest.raises(sd.ArgumentError, match="even number"):
        ProgressiveDistillation(None, SDE, torch.tensor([1.0, 0.5, 0.2, 0.0]))


def test_a_distilled_round_on_the_exact_denoiser_matches_two_teacher_steps():
    """Train an MLP student on the exact mixture teacher's 2 DDIM steps -> 1: its one step
    lands within the fitted tolerance of the teacher's two, far closer than the teacher's own
    single step does."""
    gmm, teacher = mixture_teacher()
    grid = torch.tensor([0.6, 0.35, 0.15], dtype=torch.float64)  # 2 teacher steps, 1 student
    data = Dataset(gmm.sample(4000, generator=torch.Generator().manual_seed(0)).float(), name="g")
    torch.manual_seed(0)
    student = ScoreModel(ResidualMLP(2, width=64, depth=2, emb_dim=32), SDE, "edm", 0.8)
    objective = ProgressiveDistillation(teacher, SDE, grid)
    config = TrainConfig(steps=600, batch_size=256, lr=3e-3, warmup=20, ema_decay=0.9)
    Trainer(student, data, config, objective=objective).train(progress=False)
    x0 = gmm.sample(2000, generator=torch.Generator().manual_seed(1))
    z = SDE.alpha(grid[0]) * x0 + SDE.sigma(grid[0]) * torch.randn(x0.shape, dtype=x0.dtype)
    t, u, s = (torch.full((len(z),), float(v), dtype=torch.float64) for v in grid)
    two = ddim_step(teacher, SDE, ddim_step(teacher, SDE, z, t, u), u, s)
    with torch.no_grad():
        mine = ddim_step(student.double(), SDE, z, t, s)
    teacher_one = ddim_step(teacher, SDE, z, t, s)
    err_student = (mine - two).pow(2).sum(1).mean().sqrt()
    err_teacher = (teacher_one - two).pow(2).sum(1).mean().sqrt()
    assert err_student < 0.25 * err_teacher, (float(err_student), float(err_teacher))


# -- consistency models ------------------------------------------------------------------------


class ExactConsistency:
    """f*(x, t): the exact PF-ODE of the mixture from t to t_min (Dormand-Prince, tight
    tolerances), one solve per distinct time; predicts the x0 the parametrisation means."""

    prediction = "x0"

    def __init__(self, score):
        self.score = score

    def __call__(self, x, t, cond=None):
        out = torch.empty_like(x)
        t = torch.as_tensor(t, dtype=torch.float64).expand(len(x))
        for value in torch.unique(t).tolist():
            rows = (t == value).nonzero().flatten()
            if value <= SDE.t_min:
                out[rows] = x[rows]
                continue
            grid = torch.tensor([value, SDE.t_min], dtype=torch.float64)
            end = sd.solve(self.score, SDE, x[rows], grid, "dopri5", rtol=1e-9, atol=1e-9).x
            out[rows] = end
        return out / SDE.alpha(SDE.t_min)


def _consistency_distance(objective, model, x0, seed=0):
    size = len(x0)
    draws = objective.draw(size, torch.Generator().manual_seed(seed), 0, x0)
    return objective.loss(model, x0, draws, None) * (draws["nu_next"] - draws["nu"])


def test_the_exact_consistency_function_has_zero_consistency_loss():
    """With the exact f* as student and target, CD's loss is the teacher step's error: zero to
    the accuracy of a fine solve, and shrinking at Heun's third order as the levels refine."""
    gmm, teacher = mixture_teacher()
    exact = ExactConsistency(teacher)
    x0 = gmm.sample(32, generator=torch.Generator().manual_seed(2))
    student = ScoreModel(ResidualMLP(2, width=8, depth=1, emb_dim=8), SDE, "consistency")

    def distance(levels, solver):
        objective = ConsistencyObjective(
            student,
            1,
            teacher=teacher,
            teacher_solver=solver,
            s0=levels,
            s1=levels,
            metric="l2",
            groups=4,
        )
        return float(_consistency_distance(objective, exact, x0).mean())

    errors = [distance(levels, "heun") ** 0.5 for levels in (10, 20, 40)]
    orders = [math.log2(a / b) for a, b in itertools.pairwise(errors)]
    assert all(2.5 < order < 4 for order in orders), orders  # Heun's local error: O(h^3)
    assert errors[-1] ** 2 < 1e-5
    # a function that is not f* (the posterior mean) is far from consistent
    denoiser = _fixed_fn(lambda x, t: gmm.denoise(SDE, x, t))
    objective = ConsistencyObjective(student, 1, teacher=teacher, s0=40, s1=40, metric="l2")
    assert float(_consistency_distance(objective, denoiser, x0).mean()) > 100 * errors[-1] ** 2


def _fixed_fn(fn):
    class Model:
        prediction = "x0"

        def __call__(self, x, t, cond=None):
            return fn(x, t)

    return Model()


def test_consistency_parametrisation_is_the_identity_at_t_min():
    torch.manual_seed(0)
    model = ScoreModel(ResidualMLP(2, width=16, depth=1, emb_dim=8), SDE, "consistency").double()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(8, 2, dtype=torch.float64)
    at_min = model(x, torch.full((8,), SDE.t_min, dtype=torch.float64))
    torch.testing.assert_close(at_min, x / SDE.alpha(SDE.t_min), rtol=0, atol=1e-12)
    assert (model(x, torch.full((8,), 0.5, dtype=torch.float64)) - x).abs().max() > 0.1


def test_curriculum_levels_and_their_weights():
    assert [curriculum(k, 1000, 10, 80) for k in (0, 249, 250, 500, 999)] == [11, 11, 21, 41, 81]
    assert curriculum(10**6, 1000, 10, 80) == 81
    nu, t = karras_levels(SDE, 11)
    assert bool((nu.diff() > 0).all()) and bool((t.diff() > 0).all())
    assert float(t[0]) == SDE.t_min and float(t[-1]) == SDE.T
    torch.testing.assert_close((-SDE.log_snr(t[1:-1])).exp(), nu[1:-1])
    probs = level_probabilities(nu)
    assert abs(float(probs.sum()) - 1) < 1e-12 and bool((probs > 0).all())
    student = ScoreModel(ResidualMLP(2, width=8, depth=1, emb_dim=8), SDE, "consistency")
    uniform = ConsistencyObjective(student, 100, s0=10, s1=10, level_weights="uniform")
    torch.testing.assert_close(uniform.levels(0)[2], torch.full((10,), 0.1, dtype=torch.float64))
    with pytest.raises(sd.ArgumentError, match="level weights"):
        ConsistencyObjective(student, 100, level_weights="flat")
    times = consistency_times(SDE, 3)
    assert times[0] == SDE.T and times[-1] == 0.0 and len(times) == 4
    assert consistency_times(SDE, 1) == [SDE.T, 0.0]


@pytest.mark.parametrize("kind", ["progressive", "consistency-ema"])
def test_a_student_run_resumes_as_if_uninterrupted(tmp_path, kind):
    data = load_data("moons", 2000)
    teacher, _ = load_pretrained("moons")
    teacher.requires_grad_(False)

    def trainer():
        torch.manual_seed(0)
        if kind == "progressive":
            student = student_of(teacher)
            objective = ProgressiveDistillation(
                teacher, teacher.sde, progressive_grids(teacher.sde, 8, 4)[0]
            )
        else:
            student = student_of(teacher, parametrization="consistency")
            objective = ConsistencyObjective(
                student, 8, teacher=teacher, s0=4, s1=8, target_ema=0.9
            )
        return Trainer(
            student, data, TrainConfig(steps=8, batch_size=32, warmup=2), objective=objective
        )

    whole = trainer()
    whole.train(progress=False)
    first = trainer()
    first.train(steps=4, checkpoint=tmp_path / "s.safetensors", progress=False)
    second = trainer()
    second.resume(tmp_path / "s.safetensors")
    second.train(progress=False)
    for a, b in zip(whole.net.parameters(), second.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    if kind != "progressive":
        for a, b in zip(
            whole.objective.target.parameters(), second.objective.target.parameters(), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- the command line --------------------------------------------------------------------------


def _settings(npz):
    import numpy as np

    return json.loads(str(np.load(npz)["settings"]))


def test_distill_progressive_then_sample_with_its_own_grid(tmp_path):
    res = run(
        "distill",
        "--teacher",
        "moons",
        "--steps",
        "2",
        "--teacher-steps",
        "8",
        "--train-steps",
        "6",
        "--batch-size",
        "32",
        "--out",
        "s.safetensors",
        cwd=tmp_path,
    )
    assert res.exit_code == 0, res.output
    assert "round 2/2" in res.output
    for k in (1, 2):
        assert (tmp_path / f"s.round{k}.safetensors").exists()
    _, config = load_checkpoint(tmp_path / "s.safetensors")
    assert config["sampling"]["solver"] == "ddim" and len(config["sampling"]["times"]) == 3
    assert config["objective"]["round"] == 2 and config["objective"]["teacher"] == "moons"
    res = run("sample", "--model", "s.safetensors", "-n", "64", "--out", "x.npz", cwd=tmp_path)
    assert res.exit_code == 0, res.output
    settings = _settings(tmp_path / "x.npz")
    assert settings["solver"] == "ddim" and settings["nfe"] == 2 and settings["steps"] == 2
    assert settings["grid"] == config["sampling"]["times"]
    with pytest.warns(UserWarning, match="may sample poorly"):
        res = run("sample", "--model", "s.safetensors", "--solver", "heun", "--steps", "3",
                  "-n", "8", "--out", "y.npz", cwd=tmp_path)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert _settings(tmp_path / "y.npz")["nfe"] == 6  # Heun: 2 a step


def test_distill_resumes_an_interrupted_round(tmp_path, monkeypatch):
    """Ctrl-C in round 2 saves its checkpoint; --resume finishes the run exactly as an
    uninterrupted one does."""
    args = (
        "distill",
        "--teacher",
        "moons",
        "--steps",
        "2",
        "--teacher-steps",
        "8",
        "--batch-size",
        "32",
        "--checkpoint-every",
        "2",
        "--train-steps",
        "4",
        "--out",
        "s.safetensors",
    )
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert run(*args, cwd=tmp_path / "a").exit_code == 0
    real, calls = Trainer.train_step, []

    def interrupted(self):
        calls.append(self.step)
        if len(calls) == 7:  # round 2, its third step
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    res = run(*args, cwd=tmp_path / "b")
    monkeypatch.undo()
    assert res.exit_code != 0 and "continue with --resume" in res.output
    config = load_checkpoint(tmp_path / "b" / "s.safetensors")[1]
    assert (config["objective"]["round"], config["step"]) == (2, 2)
    res = run("distill", "--resume", "s.safetensors", "--lr", "1", cwd=tmp_path / "b")
    assert res.exit_code == 2 and "drop --lr" in res.output
    res = run("distill", "--resume", "s.safetensors", cwd=tmp_path / "b")
    assert res.exit_code == 0, res.output
    assert "resumed round 2/2" in res.output
    whole = load_checkpoint(tmp_path / "a" / "s.safetensors")[0]
    again = load_checkpoint(tmp_path / "b" / "s.safetensors")[0]
    for key in whole:
        if key.startswith(("ema/", "model/")):
            torch.testing.assert_close(whole[key], again[key], rtol=0, atol=0)


def test_distill_consistency_samples_in_one_step(tmp_path):
    res = run(
        "distill",
        "--teacher",
        "moons",
        "--method",
        "consistency",
        "--teacher-steps",
        "8",
        "--train-steps",
        "4",
        "--batch-size",
        "32",
        "--out",
        "c.safetensors",
        cwd=tmp_path,
    )
    assert res.exit_code == 0, res.output
    model, config = load_score_model(tmp_path / "c.safetensors")
    assert model.parametrization == "consistency"
    assert config["objective"]["method"] == "consistency-distillation"
    res = run("sample", "--model", "c.safetensors", "-n", "16", "--out", "x.npz", cwd=tmp_path)
    assert res.exit_code == 0, res.output
    settings = _settings(tmp_path / "x.npz")
    assert settings["nfe"] == 1 and settings["grid"] == [1.0, 0.0]


def test_distill_guided_student_takes_w_in_one_pass(tmp_path):
    res = run(
        "distill",
        "--teacher",
        "digits-cond",
        "--method",
        "guided",
        "--steps",
        "2",
        "--teacher-steps",
        "4",
        "--train-steps",
        "2",
        "--batch-size",
        "8",
        "--out",
        "g.safetensors",
        cwd=tmp_path,
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "g.round0.safetensors").exists()
    res = run(
        "sample",
        "--model",
        "g.safetensors",
        "--class",
        "3",
        "--guidance",
        "2",
        "-n",
        "4",
        "--out",
        "x.npz",
        cwd=tmp_path,
    )
    assert res.exit_code == 0, res.output
    settings = _settings(tmp_path / "x.npz")
    assert settings["nfe"] == 2 and settings["network_passes_per_batch"] == 2
    res = run(
        "sample",
        "--model",
        "g.safetensors",
        "--class",
        "3",
        "--guidance",
        "9",
        "--out",
        "y.png",
        cwd=tmp_path,
    )
    assert res.exit_code == 2 and "[1, 5]" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--teacher", "nothing.safetensors"), "not a checkpoint"),
        (("--teacher", "moons", "--steps", "4", "--teacher-steps", "12"), "power of two"),
        (("--teacher", "moons", "--method", "guided"), "unconditional"),
        (("--teacher", "moons", "--teacher-solver", "heun"), "DDIM"),
        (("--teacher", "moons", "--metric", "l2"), "applies to --method consistency"),
        (
            (
                "--teacher",
                "moons",
                "--method",
                "consistency",
                "--teacher-solver",
                "euler_ancestral",
            ),
            "deterministic",
        ),
        (("--teacher", "moons", "--guidance", "3,1", "--method", "guided"), "LO <= HI"),
        ((), "--teacher"),
    ],
)
def test_distill_refuses_bad_input_in_one_sentence(tmp_path, args, message):
    res = run("distill", *args, "--train-steps", "1", cwd=tmp_path)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not list(tmp_path.glob("**/*.safetensors"))


def test_distill_refuses_a_file_that_is_not_a_score_model(tmp_path):
    (tmp_path / "notes.safetensors").write_bytes(b"not a model")
    res = run("distill", "--teacher", "notes.safetensors", cwd=tmp_path)
    assert res.exit_code == 2 and "not a score model" in res.output
    assert (
        run(
            "distill",
            "--teacher",
            "moons",
            "--steps",
            "1",
            "--teacher-steps",
            "2",
            "--train-steps",
            "2",
            "--batch-size",
            "8",
            "--out",
            "s.safetensors",
            cwd=tmp_path,
        ).exit_code
        == 0
    )
    res = run("distill", "--teacher", "s.safetensors", cwd=tmp_path)
    assert res.exit_code == 2 and "already a student" in res.output


def test_consistency_training_from_the_command_line_resumes(tmp_path):
    args = (
        "train",
        "--data",
        "moons",
        "--method",
        "consistency-training",
        "--levels",
        "4,16",
        "--batch-size",
        "32",
        "--checkpoint-every",
        "3",
        "--out",
        "ct.safetensors",
    )
    res = run(*args, "--steps", "6", cwd=tmp_path)
    assert res.exit_code == 0, res.output
    model, config = load_score_model(tmp_path / "ct.safetensors")
    assert model.parametrization == "consistency"
    assert config["objective"]["method"] == "consistency-training"
    assert config["objective"]["s1"] == 16
    res = run("train", "--resume", "ct.safetensors", "--steps", "9", cwd=tmp_path)
    assert res.exit_code == 0, res.output
    assert load_checkpoint(tmp_path / "ct.safetensors")[1]["objective"]["s1"] == 16
    res = run("sample", "--model", "ct.safetensors", "-n", "8", "--out", "x.npz", cwd=tmp_path)
    assert res.exit_code == 0 and _settings(tmp_path / "x.npz")["nfe"] == 1
    res = run(
        "train",
        "--data",
        "moons",
        "--method",
        "consistency-training",
        "--levels",
        "9,3",
        cwd=tmp_path,
    )
    assert res.exit_code == 2 and "S0 <= S1" in res.output
