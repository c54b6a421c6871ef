"""Linear measurements ``y = A x + σ_y n`` of a batch of samples, for inverse problems.

An operator acts on ``x`` of shape ``(B, *event)`` and returns ``y = A x`` flat,
``(B, m)``; ``adjoint`` maps ``(B, m)`` back to ``(B, *event)``; ``matrix()`` is the dense
``(m, d)`` matrix (small problems: the exact posterior of a Gaussian mixture) and
``svd()`` its singular value decomposition ``A = U diag(s) Vᵀ`` (closed form where the
operator has one, else computed from the matrix), which the SVD-based methods need.
``measure(x, sigma_y)`` adds the observation noise.  All work batched, on ``x``'s device
and in its dtype.

Operators: ``Inpaint`` (keep the pixels of a mask: boxes, a half, random pixels, a user
mask), ``Colorize`` (average the channels), ``Downsample`` (average pooling by a factor:
super-resolution), ``Blur`` (a given kernel, zero padding), ``Identity`` (denoising) and
``Matrix`` (any dense ``A``, for vectors).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .errors import ArgumentError

__all__ = [
    "TASKS",
    "Blur",
    "Colorize",
    "Downsample",
    "Identity",
    "Inpaint",
    "Matrix",
    "Measurement",
    "box_mask",
    "build_measurement",
    "gaussian_kernel",
    "half_mask",
    "mask_from_spec",
    "random_mask",
]

MAX_DENSE = 16_384  # entries of x a dense matrix or SVD is built for


class Measurement:
    """A linear operator ``A`` on samples of shape ``event``; see the module."""

    def __init__(self, event: tuple[int, ...]):
        if not event or not all(isinstance(n, int) and n >= 1 for n in event):
            raise ArgumentError(f"an event shape is positive integers, got {event!r}")
        self.event = tuple(event)

    @property
    def dim(self) -> int:
        """``d``: the numbers in one sample."""
        return math.prod(self.event)

    def forward(self, x: Tensor) -> Tensor:
        """``A x``, shape ``(B, m)``."""
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        """``Aᵀ y``, shape ``(B, *event)``."""
        raise NotImplementedError

    def check(self, x: Tensor) -> Tensor:
        """``x`` if it is a batch of this operator's samples, else an ``ArgumentError``."""
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.event or x.ndim < 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            event = ", ".join(map(str, self.event))
            raise ArgumentError(
                f"{type(self).__name__} measures samples of shape (B, {event}), got {shape}"
            )
        return x

    def measure(
        self, x: Tensor, sigma_y: float = 0.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """``A x + σ_y n`` with ``n ~ N(0, I)`` drawn from ``generator``."""
        sigma_y = check_sigma_y(sigma_y)
        y = self.forward(self.check(x))
        if sigma_y == 0.0:
            return y
        noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return y + sigma_y * noise

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The dense ``(m, d)`` matrix, built by applying ``A`` to the unit vectors."""
        if self.dim > MAX_DENSE:
            raise ArgumentError(
                f"a dense matrix of a {self.dim}-number sample is too large (at most {MAX_DENSE})"
            )
        eye = torch.eye(self.dim, dtype=dtype).reshape(self.dim, *self.event)
        return self.forward(eye).T.contiguous()

    def svd(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
        """``(U, s, V)`` with ``A = U diag(s) Vᵀ``, ``s`` decreasing and positive (the
        thin SVD: ``U`` is ``(m, r)``, ``V`` is ``(d, r)``, ``r`` the rank)."""
        u, s, vh = torch.linalg.svd(self.matrix(dtype), full_matrices=False)
        keep = s > s.max() * 1e-10
        return u[:, keep], s[keep], vh[keep].T

    def __repr__(self) -> str:
        return f"{type(self).__name__}(event={self.event})"


def check_sigma_y(sigma_y: float) -> float:
    """The observation noise level: a finite number >= 0."""
    if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float)):
        raise ArgumentError(f"sigma_y must be a number >= 0, got {sigma_y!r}")
    if not 0.0 <= sigma_y < math.inf:
        raise ArgumentError(f"sigma_y must be a finite number >= 0, got {sigma_y!r}")
    return float(sigma_y)


class Identity(Measurement):
    """``A = I``: denoising."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)

    def adjoint(self, y: Tensor) -> Tensor:
        return y.reshape(-1, *self.event)


class Inpaint(Measurement):
    """Keep the entries where ``mask`` is true (the observed pixels); ``y`` lists them."""

    def __init__(self, mask: Tensor):
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool:
            raise ArgumentError(f"a mask is a boolean tensor (True: observed), got {mask.dtype}")
        super().__init__(tuple(mask.shape))
        if not bool(mask.any()):
            raise ArgumentError("the mask observes nothing; keep at least one entry")
        self.mask = mask
        self.observed = mask.flatten().nonzero().squeeze(1)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, self.observed.to(x.device)]

    def adjoint(self, y: Tensor) -> Tensor:
        out = y.new_zeros(y.shape[0], self.dim)
        out[:, self.observed.to(y.device)] = y
        return out.reshape(-1, *self.event)

    def svd(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
        m = len(self.observed)
        v = torch.zeros(self.dim, m, dtype=dtype)
        v[self.observed, torch.arange(m)] = 1.0
        return torch.eye(m, dtype=dtype), torch.ones(m, dtype=dtype), v


def _image(event: tuple[int, ...], what: str) -> tuple[int, int, int]:
    if len(event) != 3:
        raise ArgumentError(f"{what} needs images of shape (C, H, W), got samples of {event}")
    return event  # type: ignore[return-value]


def half_mask(event: tuple[int, ...]) -> Tensor:
    """The upper half of an image observed, the lower half hidden (of a vector: the first
    half of its entries observed)."""
    event = tuple(event)
    if len(event) == 1:
        mask = torch.zeros(event, dtype=torch.bool)
        mask[: max(1, event[0] // 2)] = True
        return mask
    c, h, w = _image(event, "a half mask")
    mask = torch.zeros(c, h, w, dtype=torch.bool)
    mask[:, : h // 2] = True
    return mask


def box_mask(event: tuple[int, ...], top: int, left: int, height: int, width: int) -> Tensor:
    """Everything observed but a box of ``height × width`` at ``(top, left)``."""
    c, h, w = _image(tuple(event), "a box mask")
    if not (0 <= top < h and 0 <= left < w and height >= 1 and width >= 1):
        raise ArgumentError(f"the box must start inside the {h}×{w} image and be non-empty")
    mask = torch.ones(c, h, w, dtype=torch.bool)
    mask[:, top : top + height, left : left + width] = False
    return mask


def random_mask(event: tuple[int, ...], hidden: float, seed: int = 0) -> Tensor:
    """Each pixel (all its channels) hidden with probability ``hidden``, seeded."""
    if not 0.0 <= hidden < 1.0:
        raise ArgumentError(f"the hidden share must lie in [0, 1), got {hidden!r}")
    event = tuple(event)
    pixels = event[1:] if len(event) == 3 else event
    keep = torch.rand(pixels, generator=torch.Generator().manual_seed(seed)) >= hidden
    return keep.expand(event).clone() if len(event) == 3 else keep


def mask_from_spec(spec: str, event: tuple[int, ...], seed: int = 0) -> Tensor:
    """A mask named as the command line names it: ``half`` (the lower half hidden),
    ``box`` (a centred box of half the side hidden), ``random:P`` (each pixel hidden with
    probability ``P``) or the path of a PNG of the image's size (white: hidden, as
    diffusers' inpainting masks)."""
    event = tuple(event)
    if spec == "half":
        return half_mask(event)
    if spec == "box":
        _, h, w = _image(event, "a box mask")
        return box_mask(event, h // 4, w // 4, max(1, h // 2), max(1, w // 2))
    if spec.startswith("random:"):
        try:
            hidden = float(spec.removeprefix("random:"))
        except ValueError:
            raise ArgumentError(f"random:P needs a share P in [0, 1), got {spec!r}") from None
        return random_mask(event, hidden, seed)
    path = Path(spec)
    if path.suffix.lower() != ".png" or not path.is_file():
        raise ArgumentError(f"a mask is half, box, random:P or the path of a .png; got {spec!r}")
    c, h, w = _image(event, "a mask image")
    try:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"), dtype=np.float32)
    except OSError as err:
        raise ArgumentError(f"{path}: not a readable PNG ({err})") from None
    if grey.shape != (h, w):
        raise ArgumentError(
            f"the mask {path} is {grey.shape[0]}×{grey.shape[1]}; the images are {h}×{w}"
        )
    observed = torch.from_numpy(grey < 128)
    if not bool(observed.any()):
        raise ArgumentError(f"the mask {path} hides every pixel; black marks what is observed")
    return observed.expand(c, h, w).clone()


TASKS = ("inpaint", "colorize", "super-resolve", "deblur", "denoise")


def build_measurement(
    task: str,
    event: tuple[int, ...],
    *,
    mask: str = "half",
    factor: int = 2,
    blur_std: float = 1.0,
    seed: int = 0,
) -> Measurement:
    """The operator of a named task on samples of shape ``event`` (``mask`` for
    inpainting, see :func:`mask_from_spec`; ``factor`` for super-resolution; a 5×5
    Gaussian kernel of ``blur_std`` for deblurring)."""
    event = tuple(event)
    if task == "inpaint":
        return Inpaint(mask_from_spec(mask, event, seed))
    if task == "colorize":
        if len(event) != 3 or event[0] < 2:
            raise ArgumentError(
                f"colorize needs colour images (C >= 2 channels); the samples are {event}"
            )
        return Colorize(event)
    if task == "super-resolve":
        return Downsample(event, factor)
    if task == "deblur":
        if not (isinstance(blur_std, (int, float)) and 0 < blur_std < math.inf):
            raise ArgumentError(f"the blur's std must be a positive number, got {blur_std!r}")
        return Blur(event, gaussian_kernel(5, float(blur_std)))
    if task == "denoise":
        return Identity(event)
    raise ArgumentError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


class Colorize(Measurement):
    """Average the channels: ``y`` is the grey image (a colorization problem)."""

    def __init__(self, event: tuple[int, ...]):
        super().__init__(tuple(event))
        self.channels = _image(self.event, "colorization")[0]

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(1).flatten(1)

    def adjoint(self, y: Tensor) -> Tensor:
        c, h, w = self.event
        return (y.reshape(-1, 1, h, w) / c).expand(-1, c, h, w).contiguous()

    def svd(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
        c, h, w = self.event
        pixels = h * w
        v = torch.eye(pixels, dtype=dtype).repeat(c, 1) / math.sqrt(c)  # (c·hw, hw)
        return torch.eye(pixels, dtype=dtype), torch.full((pixels,), c**-0.5, dtype=dtype), v


class Downsample(Measurement):
    """Average pooling by ``factor`` (super-resolution: ``y`` is the small image)."""

    def __init__(self, event: tuple[int, ...], factor: int = 2):
        super().__init__(tuple(event))
        _, h, w = _image(self.event, "downsampling")
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ArgumentError(f"the factor must be a whole number >= 1, got {factor!r}")
        if h % factor or w % factor:
            raise ArgumentError(f"factor {factor} does not divide the {h}×{w} image")
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor).flatten(1)

    def adjoint(self, y: Tensor) -> Tensor:
        c, h, w = self.event
        f = self.factor
        small = y.reshape(-1, c, h // f, w // f) / f**2
        return small.repeat_interleave(f, 2).repeat_interleave(f, 3)

    def svd(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor, Tensor]:
        m = self.dim // self.factor**2
        v = self.adjoint(torch.eye(m, dtype=dtype)).reshape(m, self.dim).T * self.factor
        return torch.eye(m, dtype=dtype), torch.full((m,), 1.0 / self.factor, dtype=dtype), v


class Blur(Measurement):
    """Convolution of each channel with ``kernel`` (odd sizes, zero padding: same size)."""

    def __init__(self, event: tuple[int, ...], kernel: Tensor):
        super().__init__(tuple(event))
        _image(self.event, "blurring")
        kernel = torch.as_tensor(kernel, dtype=torch.float64)
        if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
            raise ArgumentError(f"a blur kernel is 2-D with odd sizes, got {tuple(kernel.shape)}")
        if not bool(torch.isfinite(kernel).all()):
            raise ArgumentError("a blur kernel must be finite")
        self.kernel = kernel

    def _weight(self, x: Tensor) -> Tensor:
        c = self.event[0]
        return self.kernel.to(x)[None, None].expand(c, 1, *self.kernel.shape)

    def forward(self, x: Tensor) -> Tensor:
        pad = (self.kernel.shape[0] // 2, self.kernel.shape[1] // 2)
        return F.conv2d(x, self._weight(x), padding=pad, groups=self.event[0]).flatten(1)

    def adjoint(self, y: Tensor) -> Tensor:
        pad = (self.kernel.shape[0] // 2, self.kernel.shape[1] // 2)
        y = y.reshape(-1, *self.event)
        return F.conv_transpose2d(y, self._weight(y), padding=pad, groups=self.event[0])


def gaussian_kernel(size: int = 5, std: float = 1.0) -> Tensor:
    """A normalised 2-D Gaussian kernel of odd ``size``."""
    r = torch.arange(size, dtype=torch.float64) - size // 2
    k = torch.exp(-0.5 * (r / std) ** 2)
    k = torch.outer(k, k)
    return k / k.sum()


class Matrix(Measurement):
    """Any dense ``A`` of shape ``(m, d)`` on vectors of ``d`` numbers."""

    def __init__(self, a: Tensor):
        a = torch.as_tensor(a, dtype=torch.float64)
        if a.ndim != 2 or not bool(torch.isfinite(a).all()):
            raise ArgumentError(f"A must be a finite (m, d) matrix, got shape {tuple(a.shape)}")
        super().__init__((a.shape[1],))
        self.a = a

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.a.to(x).T

    def adjoint(self, y: Tensor) -> Tensor:
        return y @ self.a.to(y)
