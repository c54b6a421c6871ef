"""SDEdit: strength 1 is sampling from the prior, strength 0 is the input, and between
them the edit keeps what the noise did not wash out."""

import math

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.editing import sdedit


@pytest.mark.parametrize("solver", ["heun", "euler_ancestral", "dpmpp_2m"])
@pytest.mark.parametrize("sde", [sd.EDMSDE(), sd.VPSDE()], ids=["edm", "vp"])
def test_strength_one_is_sampling_from_the_prior_with_the_same_noise(solver, sde):
    model = sd.eight_gaussians().score_fn(sde)
    x = torch.randn(16, 2)
    edited = sdedit(model, sde, x, 1.0, solver, 10, seed=3)
    sampled = sd.sample(model, sde, (16, 2), solver, 10, seed=3)
    assert torch.equal(edited.x, sampled.x) and edited.nfe == sampled.nfe


def test_strength_zero_returns_the_input_without_a_model_call():
    sde = sd.EDMSDE()
    calls = []

    def score(x, t):
        calls.append(1)
        return -x

    x = torch.randn(8, 2)
    res = sdedit(score, sde, x, 0.0)
    assert torch.equal(res.x, x) and res.nfe == 0 and not calls


def test_the_edit_moves_further_from_the_input_as_strength_grows():
    """On the ring, inputs off the ring land on it; the distance moved grows with strength,
    and a weak edit keeps each point near its input (the mode it started in)."""
    sde, gmm = sd.EDMSDE(), sd.eight_gaussians()
    model = gmm.score_fn(sde)
    x = gmm.sample(512, generator=torch.Generator().manual_seed(0)) * 0.8  # pulled inwards
    moved = []
    for strength in (0.2, 0.5, 0.8, 1.0):
        res = sdedit(model, sde, x, strength, "heun", 20, seed=1)
        assert torch.isfinite(res.x).all() and res.nfe > 0
        moved.append(float((res.x - x).norm(dim=1).median()))
    assert moved == sorted(moved), moved
    near = sdedit(model, sde, x, 0.2, "heun", 20, seed=1).x
    angle = torch.atan2(near[:, 1], near[:, 0]) - torch.atan2(x[:, 1], x[:, 0])
    wrapped = torch.remainder(angle + math.pi, 2 * math.pi) - math.pi
    assert float((wrapped.abs() < math.pi / 8).float().mean()) > 0.95  # the same mode


@pytest.mark.parametrize("strength", [-0.1, 1.5, math.nan, "0.5", None, True])
def test_bad_strengths_are_clean_errors(strength):
    sde = sd.EDMSDE()
    with pytest.raises(sd.ArgumentError, match="strength must"):
        sdedit(sd.eight_gaussians().score_fn(sde), sde, torch.zeros(2, 2), strength)


def test_bad_inputs_are_clean_errors():
    sde = sd.EDMSDE()
    model = sd.eight_gaussians().score_fn(sde)
    with pytest.raises(sd.ArgumentError, match="batch of inputs"):
        sdedit(model, sde, torch.zeros(2), 0.5)
    with pytest.raises(sd.ArgumentError, match="inf or NaN"):
        sdedit(model, sde, torch.full((2, 2), math.nan), 0.5)
    with pytest.raises(sd.ArgumentError, match="floating-point"):
        sdedit(model, sde, torch.zeros(2, 2, dtype=torch.long), 0.5)
    with pytest.raises(sd.ArgumentError, match="unknown solver"):
        sdedit(model, sde, torch.zeros(2, 2), 0.0, "nope")  # even when no step is taken
    with pytest.raises(sd.ArgumentError, match="eta must"):
        sdedit(model, sde, torch.zeros(2, 2), 0.5, "ddim", eta=5.0)
