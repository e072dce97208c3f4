"""Small image transforms in plain PyTorch (no torchvision).

Each transform is a callable on a float tensor of shape ``(C, H, W)`` (as
:func:`pil_to_tensor` makes them); :class:`Compose` chains them, as in the DFA/LfF
pipelines of :func:`dfa_transforms`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Integral
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._validation import NON_NEGATIVE_INT, POSITIVE_INT

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "Resize",
    "dfa_transforms",
    "pil_to_tensor",
]

# Normalisation constants used by the DFA code for Corrupted CIFAR-10 and BFFHQ.
#: Per-channel mean used to normalise Corrupted CIFAR-10 (RGB, pixels in [0, 1]).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
#: Per-channel standard deviation used to normalise Corrupted CIFAR-10.
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
#: ImageNet per-channel mean, used to normalise BFFHQ (RGB, pixels in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: ImageNet per-channel standard deviation, used to normalise BFFHQ.
IMAGENET_STD = (0.229, 0.224, 0.225)

_BAD_TENSOR = "{name} expects a float tensor of shape (C, H, W); got {shape}."
_UNKNOWN_DATASET = "Unknown DFA data set {name!r}; expected one of {names}."
_BAD_SIZE = "{name} size must be a positive int or a pair (height, width) of them; got {size!r}."
_BAD_PADDING = "RandomCrop padding must be an int >= 0; got {padding!r}."
#: Image side and normalisation (mean, std) of each DFA data set; cmnist is not normalised.
_DFA_DEFAULTS: dict[str, tuple[int, tuple | None]] = {
    "cmnist": (28, None),
    "cifar10c": (32, (CIFAR10_MEAN, CIFAR10_STD)),
    "bffhq": (224, (IMAGENET_MEAN, IMAGENET_STD)),
}


def pil_to_tensor(image: Any) -> torch.Tensor:
    """PIL image (or uint8 H x W [x C] array) -> float32 tensor ``(C, H, W)`` in [0, 1]."""
    array = np.array(image)  # a writable copy (PIL buffers are read-only)
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    return tensor.float()


def _size(name: str, size: Any) -> tuple[int, int]:
    """``size`` (a positive int, numpy's too, or a pair of them) as ``(height, width)``."""
    pair = (size, size) if isinstance(size, Integral) else tuple(np.atleast_1d(size).tolist())
    if len(pair) != 2 or not all(POSITIVE_INT.accepts(v) for v in pair):
        raise ValueError(_BAD_SIZE.format(name=name, size=size))
    return int(pair[0]), int(pair[1])


def _check(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise ValueError(_BAD_TENSOR.format(name=name, shape=getattr(x, "shape", type(x))))


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for transform in self.transforms:
            x = transform(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Resize:
    """Bilinear (antialiased) resize to ``size`` = int (square) or ``(height, width)``."""

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = _size("Resize", size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check("Resize", x)
        if tuple(x.shape[-2:]) == self.size:
            return x
        out = F.interpolate(
            x[None], size=self.size, mode="bilinear", align_corners=False, antialias=True
        )
        return out[0]

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomCrop:
    """Zero-pad by ``padding`` pixels, then crop a random ``size`` window (train only)."""

    def __init__(self, size: int | tuple[int, int], *, padding: int = 0) -> None:
        self.size = _size("RandomCrop", size)
        if not NON_NEGATIVE_INT.accepts(padding):
            raise ValueError(_BAD_PADDING.format(padding=padding))
        self.padding = int(padding)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check("RandomCrop", x)
        if self.padding:
            x = F.pad(x, (self.padding,) * 4)
        h, w = x.shape[-2:]
        th, tw = self.size
        if th > h or tw > w:
            raise ValueError(f"RandomCrop size {self.size} exceeds the padded image {(h, w)}.")
        top = int(torch.randint(0, h - th + 1, (1,)))
        left = int(torch.randint(0, w - tw + 1, (1,)))
        return x[:, top : top + th, left : left + tw]

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Flip left-right with probability ``p`` (train only)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check("RandomHorizontalFlip", x)
        if float(torch.rand(())) < self.p:
            return x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Normalize:
    """Subtract a per-channel mean and divide by a per-channel standard deviation."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check("Normalize", x)
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


def dfa_transforms(name: str, *, image_size: int | None = None) -> dict[str, Compose]:
    """Train and evaluation pipelines of the DFA benchmarks (applied after PIL loading).

    ============  ============================================  ===========================
    data set      train                                         eval (valid / test)
    ============  ============================================  ===========================
    ``cmnist``    to tensor (28 x 28)                           to tensor
    ``cifar10c``  crop 32 pad 4, flip, normalise (CIFAR)        normalise (CIFAR)
    ``bffhq``     resize 224, crop 224 pad 4, flip, normalise   resize 224, normalise
                  (ImageNet)                                    (ImageNet)
    ============  ============================================  ===========================

    Parameters
    ----------
    name : {"cmnist", "cifar10c", "bffhq"}
    image_size : int or None
        Override the side length (e.g. 64 for a quicker BFFHQ); None keeps the default.

    Returns
    -------
    dict
        ``{"train": Compose, "eval": Compose}``; ``"eval"`` has no random step.
    """
    if name not in _DFA_DEFAULTS:
        raise ValueError(_UNKNOWN_DATASET.format(name=name, names=tuple(_DFA_DEFAULTS)))
    default_size, stats = _DFA_DEFAULTS[name]
    size = default_size if image_size is None else image_size
    if stats is None:
        return {"train": Compose([Resize(size)]), "eval": Compose([Resize(size)])}
    norm = Normalize(*stats)
    return {
        "train": Compose([Resize(size), RandomCrop(size, padding=4), RandomHorizontalFlip(), norm]),
        "eval": Compose([Resize(size), norm]),
    }
