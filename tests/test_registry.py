"""The solver registry: lookup, errors, and registration from another package."""

import dataclasses

import numpy as np
import pytest

import sde_diffusion as sd
from sde_diffusion.solvers.registry import solver_class


@sd.register_solver("explicit_midpoint", kind="ode", order=2, nfe_per_step=2, stochastic=False)
class ExplicitMidpoint(sd.Solver):
    """Explicit midpoint rule on the PF-ODE (defined outside the package); Euler to t = 0."""

    def step(self, process, t0, t1, x, state, noise):
        h = t1 - t0
        if t1 == 0.0:
            return x + h * process.velocity(x, t0), state
        x_half = x + 0.5 * h * process.velocity(x, t0)
        return x + h * process.velocity(x_half, t0 + 0.5 * h), state


def test_outside_solver_is_registered_and_usable():
    assert "explicit_midpoint" in sd.solver_names()
    sde = sd.EDMSDE()
    res = sd.sample(sd.eight_gaussians().score_fn(sde), sde, (16, 2), "explicit-midpoint", 5)
    assert res.nfe == 10 and res.x.shape == (16, 2)
    assert solver_class("explicit_midpoint").info.summary.startswith("Explicit midpoint")


def test_duplicate_names_and_aliases_raise():
    with pytest.raises(ValueError, match="'heun' is already registered"):
        sd.register_solver("Heun", kind="ode", order=2, nfe_per_step=2, stochastic=False)(
            ExplicitMidpoint
        )
    with pytest.raises(ValueError, match="'em' is already registered"):
        sd.register_solver(
            "fresh_name", aliases=("EM",), kind="sde", order=1, nfe_per_step=1, stochastic=True
        )(ExplicitMidpoint)
    assert "fresh_name" not in sd.solver_names()


def test_lookup_ignores_case_and_dashes_and_knows_aliases():
    assert type(sd.get_solver("DPMPP-2M")) is type(sd.get_solver("dpmpp_2m"))
    assert type(sd.get_solver("EM")).__name__ == "EulerMaruyama"
    assert sd.get_solver("Linear-Multistep", order=3).order == 3


def test_unknown_name_suggests_and_lists():
    with pytest.raises(sd.UnknownSolverError) as err:
        sd.get_solver("huen")
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    assert "did you mean 'heun'?" in message
    for name in sd.solver_names():
        assert name in message


def test_unknown_option_lists_accepted_ones():
    with pytest.raises(sd.SolverOptionError, match=r"'ddim' does not take option.*takes: eta"):
        sd.get_solver("ddim", order=2)
    with pytest.raises(sd.SolverOptionError, match="takes: no options"):
        sd.get_solver("euler", eta=0.5)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("lms", dict(order=5), "order must be 1, 2, 3 or 4"),
        ("unipc", dict(order=4), "order must be 1, 2 or 3"),
        ("unipc", dict(variant="bh3"), "variant must be 'bh1' or 'bh2'"),
        ("ddim", dict(eta=1.5), r"eta must lie in \[0, 1\]"),
        ("pc", dict(predictor="heun"), "predictor must be a fixed-step reverse-SDE solver"),
        ("pc", dict(predictor="nope"), "unknown solver 'nope'"),
        ("pc", dict(snr=-1.0), r"snr must lie in \(0, 100\]"),
        ("pc", dict(corrector_steps=-1), r"corrector_steps must lie in \[0, 1000\]"),
        ("pc", dict(corrector_steps=10**9), r"corrector_steps must lie in \[0, 1000\]"),
        ("pc", dict(snr=float("inf")), r"snr must lie in \(0, 100\]"),
        ("pc", dict(norms="sample"), "norms must be one of batch, marginal"),
        ("ancestral", dict(variance="wide"), "variance must be one of"),
        ("heun_sde", dict(churn=-1.0), "need churn >= 0"),
        ("rk45", dict(rtol=0.0), r"rtol must lie in \[2.22e-14, 0.1\]"),
        ("rk45", dict(rtol=1e-300), r"rtol must lie in"),
        ("dop853", dict(atol=float("inf")), "atol be positive and finite"),
    ],
)
def test_bad_option_values_raise(name, options, message):
    with pytest.raises(ValueError, match=message):
        sd.get_solver(name, **options)


def test_infos_are_frozen_and_complete():
    for info in sd.list_solvers():
        assert info.kind in ("sde", "ode") and info.nfe_per_step >= 1
        assert info.order > 0 or info.name == "lcm"  # lcm converges only on consistency models
        assert info.summary
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.order = 99


def test_adaptive_solver_must_give_an_error_estimate():
    with pytest.raises(TypeError, match="must define attempt"):
        sd.register_solver(
            "adaptive_without_loop",
            kind="ode",
            order=1,
            nfe_per_step=1,
            stochastic=False,
            adaptive=True,
        )(ExplicitMidpoint)
    assert "adaptive_without_loop" not in sd.solver_names()


@pytest.mark.parametrize(
    ("name", "option"), [("heun_sde", "s_noise"), ("heun_sde", "churn"), ("ddim", "eta")]
)
def test_a_nan_option_is_refused_by_every_solver(name, option):
    """NaN passes range checks written as comparisons (`heun_sde --s-noise nan` ran)."""
    with pytest.raises(sd.SolverOptionError, match=f"option\\(s\\) {option} must be numbers"):
        sd.get_solver(name, **{option: float("nan")})


@pytest.mark.parametrize(
    "name, option, value",
    [
        ("dpmpp_sde", "s_noise", 1e300),
        ("heun_sde", "churn", float("inf")),
        ("heun_sde", "s_tmax", 1e7),
    ],
)
def test_numbers_no_solver_bounds_itself_are_bounded_by_the_registry(name, option, value):
    """A number past 1e6 (inf included) overflows float32 state in a solver that has no
    range of its own for it (`dpmpp_sde --s-noise 1e300` failed inside the step)."""
    with pytest.raises(sd.SolverOptionError, match=r"must be numbers of size at most 1e\+06"):
        sd.get_solver(name, **{option: value})
    with pytest.raises(sd.SolverOptionError, match=f"{option} must be a number, got 'x'"):
        sd.get_solver(name, **{option: "x"})
    assert sd.get_solver(name, **{option: 0.5}).options()[option] == 0.5


COMFY = sd.solvers.peer_names


@pytest.mark.parametrize("index", range(len(COMFY.COMFYUI_SAMPLERS)))
def test_every_comfyui_sampler_and_scheduler_name_runs_from_the_command_line(index, tmp_path):
    """ComfyUI's sampler names, each with one of its scheduler names in turn (so every
    scheduler runs too), through `sdediff sample` on an exact mixture."""
    from click.testing import CliRunner
    from sdediff_cli.main import main

    sampler = COMFY.COMFYUI_SAMPLERS[index]
    schedule = COMFY.COMFYUI_SCHEDULERS[index % len(COMFY.COMFYUI_SCHEDULERS)]
    steps = "1" if sd.get_solver(sampler).adaptive else "6"
    out = tmp_path / "x.npz"
    args = ["sample", "--model", "gmm8", "--solver", sampler, "--schedule", schedule]
    result = CliRunner().invoke(main, [*args, "--steps", steps, "-n", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as f:
        assert np.isfinite(f["samples"]).all() and f["samples"].shape == (8, 2)


def test_the_solver_listing_names_every_comfyui_sampler():
    from click.testing import CliRunner
    from sdediff_cli.main import main

    listed = CliRunner().invoke(main, ["solvers"], env={"COLUMNS": "250"}).output
    for name in COMFY.COMFYUI_SAMPLERS:
        assert name in listed, name
