"""Training data: toy 2-D sets, sklearn's 8x8 digits, user arrays and image folders.

Everything is generated or shipped with a package: nothing is downloaded.  A
``Dataset`` carries the tensor the model trains on and the affine map back to
the data's own units (``x_data = x * scale + shift``), which checkpoints store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..analytic import eight_gaussians
from ..errors import ArgumentError

__all__ = [
    "TOY_DATASETS",
    "DataError",
    "Dataset",
    "UnknownDataError",
    "digits",
    "digits32",
    "digits32_to_8",
    "labelled_8gaussians",
    "load_data",
    "split_held_out",
    "toy_2d",
]

TOY_DATASETS = ("moons", "swiss_roll", "8gaussians", "checkerboard", "pinwheel", "rings")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
    """Data that cannot be used, with what was found and what was expected."""


class UnknownDataError(DataError, ArgumentError):
    """A data name that is neither a built-in set nor an existing path."""


@dataclass
class Dataset:
    x: Tensor  # (N, *event), the model's units
    labels: Tensor | None = None
    name: str = ""
    scale: float = 1.0
    shift: float = 0.0
    info: dict = field(default_factory=dict)
    # latents encoded with their posterior's spread: a step trains on x + spread * noise
    spread: Tensor | None = None

    def to_data_units(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift

    def config(self) -> dict:
        return {
            "name": self.name,
            "event_shape": list(self.x.shape[1:]),
            "scale": self.scale,
            "shift": self.shift,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            **self.info,
        }

    @property
    def num_classes(self) -> int | None:
        return int(self.labels.max()) + 1 if self.labels is not None else None

    @property
    def class_names(self) -> list[str] | None:
        """Names of the classes (``info["class_names"]``, else the label numbers)."""
        if self.labels is None:
            return None
        return list(self.info.get("class_names", [str(k) for k in range(self.num_classes)]))


def toy_2d(name: str, n: int, seed: int = 0) -> Tensor:
    """``n`` points of a named 2-D toy set, float32, spread over roughly [-4, 4]."""
    from sklearn.datasets import make_circles, make_moons, make_swiss_roll

    if n < 1:
        raise DataError(f"number of points must be positive, got {n}")
    rng = np.random.default_rng(seed)
    if name == "moons":
        x = make_moons(n, noise=0.05, random_state=seed)[0] * 2.0 - np.array([1.0, 0.5])
    elif name == "swiss_roll":
        x = make_swiss_roll(n, noise=0.5, random_state=seed)[0][:, [0, 2]] / 3.5
    elif name == "rings":
        x = make_circles(n, factor=0.5, noise=0.04, random_state=seed)[0] * 3.0
    elif name == "8gaussians":
        return labelled_8gaussians(n, seed)[0]
    elif name == "checkerboard":  # unit squares where floor(x1) + floor(x2) is even, x 2
        x1 = rng.uniform(-2, 2, n)
        x2 = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
        x = 2.0 * np.stack([x1, x2], 1)
    elif name == "pinwheel":
        arms, per_arm_angle = 5, 2 * math.pi / 5
        arm = rng.integers(0, arms, n)
        radial = rng.normal(1.0, 0.3, n)
        tangential = rng.normal(0.0, 0.08, n)
        angle = arm * per_arm_angle + 0.25 * np.exp(radial)
        x = 2.0 * np.stack([radial, tangential], 1)
        c, s = np.cos(angle), np.sin(angle)
        x = np.stack([c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1]], 1)
    else:
        raise DataError(f"unknown toy data set {name!r}; choose one of {', '.join(TOY_DATASETS)}")
    return torch.as_tensor(x, dtype=torch.float32)


def labelled_8gaussians(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The 8-Gaussians ring (radius 3, std 0.3) with each point's component as its label."""
    g = torch.Generator().manual_seed(seed)
    return eight_gaussians(radius=3.0, std=0.3).sample(n, generator=g, return_components=True)


def digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """sklearn's 8x8 digits scaled from [0, 16] to [-1, 1], shape ``(N, 1, 8, 8)``.

    The split is fixed (stratified, ``seed``); ``split`` is ``train``, ``test`` or ``all``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32)
    if split == "all":
        x, y = images, bunch.target
    elif split in ("train", "test"):
        parts = train_test_split(
            images, bunch.target, test_size=test_fraction, random_state=seed, stratify=bunch.target
        )
        x, y = (parts[0], parts[2]) if split == "train" else (parts[1], parts[3])
    else:
        raise DataError(f"split must be 'train', 'test' or 'all', got {split!r}")
    x = torch.from_numpy(x)[:, None] / 8.0 - 1.0
    return Dataset(
        x,
        torch.from_numpy(y).long(),
        "digits",
        scale=8.0,
        shift=8.0,
        info={"split": split, "levels": 17},
    )


def digits32(split: str = "train") -> Dataset:
    """The 8x8 digits upsampled to 32x32, ``(N, 1, 32, 32)`` in the same units (``[-1, 1]``,
    data units ``[0, 16]``): ``F.interpolate(x, size=32, mode="bilinear",
    align_corners=False)``, fixed.  :func:`digits32_to_8` maps samples back for the judge."""
    small = digits(split)
    x = F.interpolate(small.x, size=32, mode="bilinear", align_corners=False)
    info = {**small.info, "upsampled": "bilinear 8->32 (align_corners=False)"}
    return Dataset(x, small.labels, "digits32", small.scale, small.shift, info)


def digits32_to_8(x: Tensor) -> Tensor:
    """32x32 digits back to 8x8 for the 8x8 judge: the least-squares inverse of the
    upsampling, ``P x P^T`` with ``P`` the pseudo-inverse of its 1-D ``(32, 8)`` matrix, so
    the data set maps back exactly (a block mean would blur it)."""
    basis = torch.eye(8, dtype=torch.float64)[:, None, :]
    up = F.interpolate(basis, size=32, mode="linear", align_corners=False)[:, 0].T  # (32, 8)
    p = torch.linalg.pinv(up).to(x)
    return p @ x @ p.T


def _checked(x: np.ndarray, source: str) -> Tensor:
    if x.dtype.kind not in "fiu":
        raise DataError(f"{source}: expected a numeric array, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataError(
            f"{source}: expected an array of shape (N, *event) with N >= 1, got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).reshape(len(x), -1).any(1).sum())
        raise DataError(f"{source}: {bad} sample(s) contain NaN or infinite values")
    return torch.as_tensor(x, dtype=torch.float32)


def _load_array(path: Path) -> Tensor:
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy raises several types for unreadable files
        raise DataError(f"{path}: not a readable .npy/.npz file ({err})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = list(loaded.keys())
        key = "x" if "x" in keys else (keys[0] if len(keys) == 1 else None)
        if key is None:
            raise DataError(f"{path}: an .npz needs one array or one named 'x'; found {keys}")
        return _checked(loaded[key], f"{path}[{key!r}]")
    return _checked(loaded, str(path))


def load_images(folder: Path) -> Tensor:
    """The PNG/JPEG images of ``folder`` (or its subfolders) in model units, ``[-1, 1]``."""
    from PIL import Image

    candidates = [*folder.glob("*"), *folder.glob("*/*")]  # images, or one folder per class
    files = sorted(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(
            f"{folder}: no PNG or JPEG images in it or in its subfolders (one level deep)"
        )
    arrays, sizes = [], set()
    for path in files:
        with Image.open(path) as image:
            mode = "L" if image.mode in ("L", "1", "I;16") else "RGB"
            array = np.asarray(image.convert(mode), dtype=np.float32)
        sizes.add(array.shape)
        arrays.append(array if array.ndim == 3 else array[:, :, None])
    if len(sizes) > 1:
        raise DataError(f"{folder}: images must share one size and mode, found {sorted(sizes)}")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def load_data(spec: str, n: int = 10000, seed: int = 0) -> Dataset:
    """A toy name, ``digits``, or a path to ``.npy``/``.npz`` or a folder of images."""
    if spec == "8gaussians":  # the conditional toy: labelled by mixture component
        return Dataset(*labelled_8gaussians(n, seed), name=spec)
    if spec in TOY_DATASETS:
        return Dataset(toy_2d(spec, n, seed), name=spec)
    if spec == "digits":
        return digits("train")
    if spec == "digits32":
        return digits32("train")
    path = Path(spec)
    if not spec.strip() or "\0" in spec or not path.exists():
        raise UnknownDataError(
            f"no data set {spec!r}: not a toy name ({', '.join(TOY_DATASETS)}), "
            "not 'digits' or 'digits32', and no such file or folder"
        )
    if path.is_dir():
        return Dataset(
            load_images(path), name=path.name, scale=127.5, shift=127.5, info={"levels": 256}
        )
    if path.suffix not in (".npy", ".npz"):
        raise DataError(f"{path}: expected a .npy or .npz file or a folder of images")
    return Dataset(_load_array(path), name=path.stem)


def split_held_out(data: Dataset, fraction: float = 0.05, seed: int = 0) -> tuple[Dataset, Dataset]:
    """``(train, held_out)``: a fixed random ``fraction`` of the rows (at least one) set
    aside for the quality metric, the same for the same ``seed``; ``train.info`` records
    the fraction so that the split can be made again."""
    n = len(data.x)
    if n < 2:
        raise DataError(f"{data.name}: {n} sample(s) cannot be split into training and held out")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = max(1, round(fraction * n))
    parts = []
    for rows in (order[cut:], order[:cut]):
        labels = None if data.labels is None else data.labels[rows]
        info = {**data.info, "held_out": fraction}
        spread = None if data.spread is None else data.spread[rows]
        parts.append(Dataset(data.x[rows], labels, data.name, data.scale, data.shift, info, spread))
    return parts[0], parts[1]
