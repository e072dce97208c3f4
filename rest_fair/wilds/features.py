"""Embedding mode: features of a frozen pretrained backbone, computed once and cached.

:func:`extract_features` stores them as a ``.npy`` file beside a JSON record of their
provenance (backbone, weights, input transform, dataset, split, number of samples, SHA-256
of the inputs) and reads the file back for the same provenance. Fitting
:class:`~rest_fair.RESTClassifier` (a sparse MLP head) on these features is the "last
layers on frozen features" recipe (DFR, Kirichenko et al., ICLR 2023): a Waterbirds run
takes minutes on a CPU once the features exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import backbones
from .._data import make_source
from .._downloads import cache_dir
from .._fit import resolve_device
from .._requirements import import_optional
from ..sparse.modules import set_submodule
from ..text import tokenize
from .adapter import WILDSSplit, _base_and_indices
from .datasets import dataset_spec

__all__ = ["FEATURES_FORMAT", "default_cache_dir", "extract_features", "feature_provenance"]

#: ``format`` field of a feature cache's provenance file.
FEATURES_FORMAT = "rest_fair.features"
_VERSION = 1
_NOT_SPLIT = (
    "extract_features takes a WILDSSplit (from rest_fair.wilds.split_wilds or from_wilds); "
    "got {type}."
)
_TEXT_BACKBONE = (
    "{dataset} is a text dataset; backbone must be 'hf:<model name or local folder>'; "
    "got {backbone!r}."
)
_IMAGE_BACKBONE = (
    "{dataset} is an image dataset; backbone must be a torchvision model name (e.g. "
    "'resnet50'); got {backbone!r}."
)
_BAD_POOLING = "pooling must be 'cls' or 'mean'; got {!r}."
_CACHE_NOT_A_FOLDER = (
    "The feature cache {folder} is a file, not a folder; give cache_dir (or REST_FAIR_CACHE) "
    "a folder."
)


def default_cache_dir() -> Path:
    """``$REST_FAIR_CACHE/features``, by default (also where it is empty)
    ``~/.cache/rest_fair/features``."""
    return cache_dir("features")


def _image_files(base: Any, indices: np.ndarray) -> list[Path] | None:
    """The image file of every sample, when the dataset keeps file names (WILDS does)."""
    names = getattr(base, "_input_array", None)
    data_dir = getattr(base, "data_dir", None)
    if names is None or data_dir is None:
        return None
    try:
        folder = Path(data_dir) / dataset_spec(base.dataset_name).image_dir
    except ValueError:
        folder = Path(data_dir)
    files = [folder / str(names[int(i)]) for i in indices]
    return files if all(f.is_file() for f in files[:1]) else None


def _inputs_sha256(split: Any, modality: str) -> str:
    """SHA-256 of the inputs: raw text, raw image files, or decoded images."""
    h = hashlib.sha256()
    base, indices = _base_and_indices(split.subset)
    h.update(f"{base.dataset_name}|{len(indices)}|".encode())
    if modality == "text":
        items = (str(text).encode("utf-8") for text in split.X)
    else:
        files = _image_files(base, indices)
        items = None if files is None else (path.read_bytes() for path in files)
    if items is None:  # no image files: hash the decoded images
        for i in indices:
            pixels = np.asarray(base.get_input(int(i)))
            h.update(repr(pixels.shape).encode())
            h.update(pixels.tobytes())
    else:
        for data in items:
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def _transform_sha256(images: Any) -> str:
    """SHA-256 of the transformed first, middle and last images: two transforms that print
    alike (torchvision's ``Lambda()``, a class without its parameters in its repr) but
    compute differently give different records."""
    h = hashlib.sha256()
    n = len(images)
    with torch.random.fork_rng(devices=[]):  # a random transform draws from a copy
        for i in sorted({0, n // 2, n - 1} if n else set()):
            x = torch.as_tensor(images[i]).detach().cpu().contiguous()
            h.update(f"{x.dtype}{tuple(x.shape)}".encode())
            h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _weights_id(backbone: str, weights: Any) -> Any:
    """What identifies the weights: a resolved torchvision name, or a file's SHA-256."""
    if backbone.startswith("hf:"):
        path = Path(backbone[3:]).expanduser()
        if path.is_dir():
            # every file: the tokenizer's (vocab.txt, merges.txt, *.model) as much as the weights
            files = sorted(p for p in path.iterdir() if p.is_file())
            return {"folder": str(path.resolve()),
                    "sha256": {p.name: backbones._sha256_file(p) for p in files}}
        return {"hub": backbone[3:], "revision": weights}
    if weights is None:
        return None
    path, member = backbones.check_torchvision(backbone, weights)
    if path is not None:
        return {"file": str(path.resolve()), "sha256": backbones._sha256_file(path)}
    return str(member)


def feature_provenance(
    split: Any,
    *,
    backbone: str,
    weights: Any,
    pooling: str = "cls",
    max_length: int | None = None,
    seed: int = 0,
) -> dict:
    """The provenance record :func:`extract_features` stores and compares.

    Parameters are those of :func:`extract_features`.

    Returns
    -------
    dict
        Plain JSON values; two extractions with equal records give the same features.
    """
    if not isinstance(split, WILDSSplit):
        raise TypeError(_NOT_SPLIT.format(type=type(split).__name__))
    modality = dataset_spec(split.dataset_name).modality
    is_hf = backbone.startswith("hf:")
    if modality == "text" and not is_hf:
        raise ValueError(_TEXT_BACKBONE.format(dataset=split.dataset_name, backbone=backbone))
    if modality != "text" and is_hf:
        raise ValueError(_IMAGE_BACKBONE.format(dataset=split.dataset_name, backbone=backbone))
    if pooling not in ("cls", "mean"):
        raise ValueError(_BAD_POOLING.format(pooling))
    if is_hf:
        transform: Any = {"tokenizer": backbone, "max_length": max_length, "pooling": pooling}
        layer = f"last_hidden_state, {pooling} pooling"
    else:
        transform = {"repr": repr(getattr(split.X, "transform", None)),
                     "outputs_sha256": _transform_sha256(split.X)}
        layer = "input of the classification layer"
    return {
        "format": FEATURES_FORMAT,
        "version": _VERSION,
        "backbone": backbone,
        "weights": _weights_id(backbone, weights),
        "seed": int(seed) if weights is None and not is_hf else None,
        "layer": layer,
        "transform": transform,
        "dataset": split.dataset_name,
        "split": split.split,
        "n_samples": len(split),
        "inputs_sha256": _inputs_sha256(split, modality),
        "dtype": "float32",
    }


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-")[:40] or "x"


class _Pooled(nn.Module):
    """Hidden state of the first token, or the mean over the attended tokens."""

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        self.model = model
        self.pooling = pooling

    def forward(self, tokens: dict) -> torch.Tensor:
        hidden = self.model(**tokens).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def _extractor(backbone: str, weights: Any, pooling: str, max_length: int | None,
               seed: int, input_shape: tuple[int, ...] | None = None) -> tuple[nn.Module, Any]:
    """The frozen feature network and, for text, its tokenizer; an image network is refused
    for images of ``input_shape`` it cannot take before its weights are downloaded."""
    if backbone.startswith("hf:"):
        tokenizer = backbones.load_tokenizer(backbone, {"max_length": max_length,
                                                        "revision": weights})
        transformers = import_optional("transformers", extra="text",
                                       caller=f"backbone={backbone!r}")
        model = backbones._from_pretrained(
            backbone, transformers.AutoModel, backbone[3:], local_files_only=None,
            what="the model", **({"revision": weights} if weights else {}),
        )
        return _Pooled(model, pooling), tokenizer
    with torch.random.fork_rng(devices=[]):  # the network is built on the CPU
        torch.default_generator.manual_seed(seed)
        model = backbones.build_torchvision(backbone, n_classes=1, weights=weights,
                                            input_shape=input_shape)
    set_submodule(model, backbones._find_head(model, None)[0], nn.Identity())
    return model, None


def _partial(path: Path) -> Path:
    """A temporary file beside ``path`` that no other process writes: two processes filling
    the same cache entry each write their own and rename it over ``path`` (or remove it
    when their extraction fails)."""
    return path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


def _extract(split: Any, path: Path, *, backbone: str, weights: Any, pooling: str,
             max_length: int | None, seed: int, batch_size: int, device: torch.device,
             num_workers: int) -> np.ndarray:
    input_shape = None
    if not backbone.startswith("hf:"):
        source = make_source(split.X, device=device, num_workers=num_workers)
        input_shape = tuple(source.sample_shape) if source.n_samples else None
    module, tokenizer = _extractor(backbone, weights, pooling, max_length, seed, input_shape)
    module = module.to(device).eval().requires_grad_(False)
    if tokenizer is not None:
        source = make_source(tokenize([str(t) for t in split.X], tokenizer,
                                      max_length=max_length),
                             device=device, num_workers=num_workers)
    order = torch.arange(source.n_samples)
    out = None
    tmp = _partial(path)
    try:
        with torch.no_grad():
            for x, idx in source.batches(order, batch_size, device):
                feats = module(x).float().reshape(len(idx), -1).cpu().numpy()
                if out is None:
                    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                    shape=(source.n_samples, feats.shape[1]))
                out[idx.numpy()] = feats
        if out is None:  # no samples: an empty file with zero columns
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(0, 0))
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:  # an extraction that fails or is interrupted leaves no file behind
        tmp.unlink(missing_ok=True)
        raise
    return np.load(path, mmap_mode="r")


def extract_features(
    split: Any,
    *,
    backbone: str = "resnet50",
    weights: Any = "DEFAULT",
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    pooling: str = "cls",
    max_length: int | None = None,
    seed: int = 0,
    refresh: bool = False,
) -> np.ndarray:
    """Features of a frozen backbone for one WILDS split, cached on disk.

    Parameters
    ----------
    split : WILDSSplit
        From :func:`rest_fair.wilds.split_wilds` (images keep the split's transform, which
        is part of the provenance; text is tokenized by the backbone's tokenizer).
    backbone : str, default="resnet50"
        Images: a torchvision classification model; the features are the input of its
        classification layer (2048 values for ResNet-50). Text: ``"hf:<name or folder>"``;
        the features are the last hidden state of the first token (``pooling="cls"``)
        or its mean over the text's tokens (``"mean"``).
    weights : str, WeightsEnum member, path or None, default="DEFAULT"
        Images: a torchvision weights name or member, or a state-dict file (see
        :func:`rest_fair.backbones.build_torchvision`); ``None`` is a random network
        seeded by ``seed`` (a pipeline check, not a useful feature). Text: the Hub
        revision (``None`` or ``"DEFAULT"`` for the default one).
    cache_dir : path, optional
        Where the ``.npy`` and ``.json`` files go; default :func:`default_cache_dir`.
        Each file is written under a name of its own and renamed into place, so processes
        sharing the folder never read or overwrite a half-written file.
    batch_size : int, default=64
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA when available.
    num_workers : int, default=0
        DataLoader workers reading the images.
    pooling : {"cls", "mean"}, default="cls"
        Text only.
    max_length : int, optional
        Text only: tokens per text (default: the tokenizer's limit, at most 512).
    seed : int, default=0
        Initialisation seed when ``weights=None``.
    refresh : bool, default=False
        Recompute even if a file with the same provenance exists.

    Returns
    -------
    numpy.memmap of float32, shape (n_samples, n_features)
        Read-only, in the split's sample order; ``.filename`` is the ``.npy`` file and the
        provenance is next to it with the suffix ``.json``.
    """
    if backbone.startswith("hf:") and weights == "DEFAULT":
        weights = None
    record = feature_provenance(split, backbone=backbone, weights=weights, pooling=pooling,
                                max_length=max_length, seed=seed)
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(_CACHE_NOT_A_FOLDER.format(folder=folder))
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{_slug(split.dataset_name)}_{_slug(split.split)}_{_slug(backbone)}_{key}"
    path, meta = folder / f"{stem}.npy", folder / f"{stem}.json"
    if not refresh and path.exists() and meta.exists():
        try:
            stored = json.loads(meta.read_text())
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict) and stored.get("provenance") == record:
            try:
                features = np.load(path, mmap_mode="r")
            except (OSError, ValueError, EOFError):  # a damaged file: computed again
                features = None
            if features is not None and features.shape == (len(split), stored.get("n_features")):
                return features
            del features  # the memory map, before the file is written again
    meta.unlink(missing_ok=True)  # written last: its presence marks a complete file
    start = time.perf_counter()
    features = _extract(split, path, backbone=backbone, weights=weights, pooling=pooling,
                        max_length=max_length, seed=seed, batch_size=batch_size,
                        device=resolve_device(device), num_workers=num_workers)
    info = {
        "provenance": record,
        "n_features": int(features.shape[1]),
        "seconds": time.perf_counter() - start,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
    }
    tmp = _partial(meta)
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, meta)
    return features
