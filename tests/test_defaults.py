"""One set of defaults: every option of sample, train and likelihood that the library also
takes has the library's default on the command line (so the same request gives the same
model or samples from Python as from the shell)."""

import dataclasses
import inspect

import pytest
from sdediff_cli.common import DTYPES
from sdediff_cli.main import main

import sde_diffusion as sd
from sde_diffusion.evaluation.elbo import elbo_terms
from sde_diffusion.evaluation.likelihood import likelihood_terms, nll_batched
from sde_diffusion.training import TrainConfig
from sde_diffusion.training.building import build_model

# command -> the library callables it runs, and the CLI names the library spells otherwise
LIBRARY = {
    "sample": ([sd.sample_batched, sd.sample], {}),  # the CLI samples in batches
    "train": ([build_model, TrainConfig], {"ema": "ema_decay", "cond_drop": "cond_drop_prob"}),
    "likelihood": (
        [likelihood_terms, nll_batched],
        {"elbo_steps": (elbo_terms, "steps"), "num_samples": None},
    ),
}


def cli_default(param):
    """The value a command runs with when the option is not given: a flag's is False, a
    dtype's the torch dtype its name maps to."""
    default = param.default
    if getattr(param, "is_flag", False) and not isinstance(default, bool):
        return False
    return DTYPES.get(default, default) if param.name == "dtype" else default


def library_defaults(function) -> dict:
    if dataclasses.is_dataclass(function):
        return {f.name: f.default for f in dataclasses.fields(function)}
    params = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("command", list(LIBRARY))
def test_the_command_line_shows_the_librarys_defaults(command):
    functions, renamed = LIBRARY[command]
    pairs = []
    for param in main.commands[command].params:
        target = renamed.get(param.name, param.name)
        if target is None:
            continue
        if isinstance(target, tuple):
            function, name = target
            pairs.append((param.name, cli_default(param), library_defaults(function)[name]))
            continue
        for function in functions:
            defaults = library_defaults(function)
            if target in defaults:
                pairs.append((param.name, cli_default(param), defaults[target]))
                break
    differ = [(name, cli, lib) for name, cli, lib in pairs if cli != lib]
    assert not differ, f"{command}: the CLI's and the library's defaults differ: {differ}"
    assert len(pairs) >= {"sample": 5, "train": 12, "likelihood": 8}[command], pairs


def test_a_fixed_grid_samples_with_25_steps_and_an_adaptive_solver_with_one_interval():
    sde = sd.EDMSDE()
    model = sd.eight_gaussians().score_fn(sde)
    assert len(sd.sample(model, sde, (4, 2), "euler").ts) == sd.sampling.DEFAULT_STEPS + 1 == 26
    assert len(sd.sample(model, sde, (4, 2), "rk45").ts) == 2
