from functools import partial

import pytest
import torch
from hypothesis import settings

from sde_diffusion.sdes import build_sde, sde_names

# `pytest --hypothesis-profile=full`: ten times the generated cases (tests/test_fuzz.py)
settings.register_profile("full", max_examples=1000)

# every registered SDE with its defaults (a new SDE file joins every test that uses these)
SDE_FACTORIES = {name: partial(build_sde, name) for name in sde_names()}


def linear_beta_table(beta_start: float, beta_end: float, levels: int) -> torch.Tensor:
    """DDPM's alphas_cumprod for linearly spaced betas."""
    betas = torch.linspace(beta_start, beta_end, levels, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


@pytest.fixture(params=list(SDE_FACTORIES))
def any_sde(request):
    return SDE_FACTORIES[request.param]()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
