"""Training score models: the data, the loss, the trainer, the checkpoint it writes and the
model it builds.

- :mod:`.data`: toy 2-D sets, the 8×8 digits, user arrays and image folders;
- :mod:`.losses`: denoising score matching and its weightings;
- :mod:`.building`: the network ``sdediff train`` builds for a data set;
- :mod:`.trainer`: :class:`Trainer` (AdamW, EMA, DDP, checkpoints, resume);
- :mod:`.state`: the checkpoint's layout, and what reads it back (``load_score_model``);
- :mod:`.checkpoint`: safetensors files with JSON metadata, written atomically.
"""

from .building import build_model
from .data import Dataset, load_data
from .state import load_score_model, run_settings
from .trainer import NonFiniteLossError, TrainConfig, Trainer, init_distributed

__all__ = [
    "Dataset",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "build_model",
    "init_distributed",
    "load_data",
    "load_score_model",
    "run_settings",
]
