"""Train the digits classifier that judges samples (digits-FID, confident recognition).

    python benchmarks/train_digits_classifier.py

Trains on the digits train split, reports test accuracy and the train/test digits-FID
(the floor a generative model is compared with), and writes
``sde_diffusion/pretrained/digits_classifier.safetensors``.
"""

import json
from pathlib import Path

import torch

from sde_diffusion.evaluation.digits_eval import (
    confident_fraction,
    digits_fid,
    save_digits_classifier,
    train_digits_classifier,
)
from sde_diffusion.training.data import digits

ROOT = Path(__file__).resolve().parents[1]

train, test = digits("train"), digits("test")
model = train_digits_classifier(train.x, train.labels)
with torch.no_grad():
    accuracy = float((model(test.x).argmax(1) == test.labels).float().mean())
metrics = {
    "test_accuracy": accuracy,
    "fid_train_test": digits_fid(train.x, test.x, model),
    "confident_test": confident_fraction(test.x, classifier=model),
}
save_digits_classifier(
    model, ROOT / "sde_diffusion/pretrained/digits_classifier.safetensors", metrics
)
print(json.dumps(metrics, indent=1))
