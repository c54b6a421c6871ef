import pytest
import torch
from hypothesis import settings

import sde_diffusion as sd

# `pytest --hypothesis-profile=full`: ten times the generated cases (tests/test_fuzz.py)
settings.register_profile("full", max_examples=1000)

SDE_FACTORIES = {
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(),
    "edm": lambda: sd.EDMSDE(),
    "discrete": lambda: sd.DiscreteVPSDE(linear_beta_table(1e-4, 0.02, 1000)),
    "rectified_flow": lambda: sd.RectifiedFlow(),
}


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
