import pytest
import torch

import sde_diffusion as sd

SDE_FACTORIES = {
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(),
    "edm": lambda: sd.EDMSDE(),
}


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
