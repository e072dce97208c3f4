"""Pretrained backbones: torchvision image classifiers and Hugging Face text classifiers.

:func:`rest_fair.models.build_module` hands ``module`` names that are not built-in networks
to :func:`build_backbone`: torchvision classification model names (:func:`build_torchvision`)
and ``"hf:<model name or local folder>"`` (:func:`build_hf`). torchvision and transformers
are imported on first use, with an error that says what to install. Weights are looked for
on disk first; a download has a timeout, and an unreachable network is an error naming the
weights and where to put them instead -- never a hang.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import os
import pickle
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._downloads import socket_timeout
from ._requirements import import_optional
from .sparse.modules import set_submodule

__all__ = [
    "HF_PREFIX",
    "MODULE_NAMES",
    "HFTextClassifier",
    "build_backbone",
    "build_hf",
    "build_torchvision",
    "check_backbone",
    "check_hf",
    "check_hf_params",
    "check_torchvision",
    "fetch_torchvision",
    "hf_token_limits",
    "is_backbone",
    "load_state_dict_file",
    "load_tokenizer",
    "replace_head",
    "torchvision_model_names",
]

#: Prefix of ``module`` names that load a Hugging Face sequence classifier.
HF_PREFIX = "hf:"
#: Names of the built-in networks of :mod:`rest_fair.models` that ``module`` takes; any
#: other name is a backbone.
MODULE_NAMES = ("auto", "mlp", "cnn", "resnet18")
_DOWNLOAD_TIMEOUT_S = 30.0
#: Prefixes that a wrapped model's state dict puts before every key: DataParallel's and
#: DistributedDataParallel's ``module.``, ``torch.compile``'s ``_orig_mod.`` (removed even
#: where the keys then do not fit, so that the error names the keys without them).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_PROBE_TIMEOUT_S = 5.0
#: The auxiliary classifiers of Inception v3 and GoogLeNet, which the built model drops.
_AUX_HEADS = ("AuxLogits", "aux1", "aux2")

TORCHVISION_CALLER = "module={name!r} (not a built-in network {builtin}: a torchvision model)"
UNKNOWN_TORCHVISION = (
    "module must be one of {builtin}, a torchvision classification model name (e.g. "
    "'resnet50'; see torchvision.models.list_models(module=torchvision.models)), "
    "'hf:<model name or local folder>', an nn.Module subclass, a callable returning an "
    "nn.Module or an nn.Module instance; got {name!r}{hint}."
)
UNKNOWN_WEIGHTS = (
    "weights={weights!r} is neither a file nor a weights name of torchvision's {name}; "
    "its weights are {available}."
)
OTHER_MODELS_WEIGHTS = (
    "weights={weights} are not weights of torchvision's {name}: its weights are {available} "
    "(give a member of torchvision.models.get_model_weights({name!r}), or its name)."
)
MISSING_WEIGHTS_FILE = "weights={weights!r} looks like a file path, but there is no such file."
WEIGHTS_URL = (
    "weights={weights!r} is a URL: weights are not downloaded from URLs; give a torchvision "
    "weights name of {name} (they are {available}; torchvision knows their URLs) or the path "
    "of a state-dict file downloaded from it."
)
WEIGHTS_IS_A_FOLDER = "weights={weights!r} is a folder; give the path of a state-dict file in it."
BAD_WEIGHTS = (
    "module_params['weights'] must be None, a torchvision weights name (e.g. 'DEFAULT', "
    "'IMAGENET1K_V2') or member (torchvision.models.ResNet50_Weights.IMAGENET1K_V2) or a "
    "path to a state-dict file; got {value}."
)
WEIGHTS_IN_MEMORY = (
    "a {type} of {n} entries: write a state dict to a file with torch.save(state_dict, path) "
    "and give its path"
)
BAD_STATE_DICT = (
    "{path} does not hold a state dict (a mapping of parameter names to tensors, or a "
    "checkpoint holding one under a key of {keys}); got {type}."
)
#: Keys under which training checkpoints hold the model's state dict: those of PyTorch's
#: "saving a general checkpoint" tutorial, and of most training scripts.
_CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")
UNREADABLE_STATE_DICT = (
    "{path} cannot be read as a state dict ({error}): it is damaged, empty, or not a file "
    "written by torch.save(model.state_dict(), path) or safetensors (files holding pickled "
    "objects other than tensors are refused, so that nothing in them runs)."
)
UNSAFE_STATE_DICT = (
    "{path} cannot be read as a state dict: it holds a pickled {type} (a whole model, or a "
    "training checkpoint's hyper-parameters), and objects other than tensors are refused so "
    "that nothing in the file runs. Save the model's state dict alone, with "
    "torch.save(model.state_dict(), path)."
)
#: What torch.load raises for a file that is damaged, empty or not a tensor file.
_UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, ValueError)
DAMAGED_CACHED_WEIGHTS = (
    "The cached torchvision weights {weights} for {name} at {cache} cannot be read ({error}) and "
    "their SHA-256 does not start with {digest!r} as the file name says: the file is damaged or "
    "incomplete. Delete it (it is downloaded again) or replace it with the file from {url}."
)
STATE_DICT_MISMATCH = (
    "{path} does not fit torchvision's {name}: {problems}. Save the weights with "
    "torch.save(model.state_dict(), path) from the same architecture."
)
DOWNLOAD_FAILED = (
    "Could not download the torchvision weights {weights} for {name} from {url} ({error}). "
    "Without network access, download the file on another machine and put it at {cache} "
    "(torch.hub's cache, TORCH_HOME), or anywhere and give its path as the weights."
)
NEED_IMAGES = (
    "torchvision's {name} takes RGB images of shape (n_samples, 3, height, width); got "
    "samples of shape {shape}{layout}."
)
WRONG_IMAGE_SIZE = (
    "torchvision's {name} takes images of {size} pixels (its {param}); got samples of shape "
    "{shape}. Resize the images to {size} (e.g. with torchvision.transforms.Resize){other}."
)
IMAGES_TOO_SMALL = (
    "torchvision's {name} takes images of at least {size} pixels; got samples of shape "
    "{shape}, on which its forward pass fails ({error}). Resize the images to at least "
    "{size} (e.g. with torchvision.transforms.Resize)."
)
#: Arguments that build these models on the meta device without warning that their default
#: initialisation will change (the meta model's values are never used).
_QUIET_BUILD = {"googlenet": {"init_weights": False}, "inception_v3": {"init_weights": False}}
#: The arguments that torchvision sets from any pretrained weights of these models, besides
#: ``num_classes``.
_SET_BY_WEIGHTS = {name: {"aux_logits": True, "init_weights": False} for name in _QUIET_BUILD}
#: The builder arguments of torchvision's models that are built for one image size, by
#: class; torchvision sets them to the ``min_size`` of the pretrained weights.
_IMAGE_SIZE_PARAMS = {"VisionTransformer": "image_size", "MaxVit": "input_size"}
NO_HEAD = "Could not find the classification layer of {name} to replace it."
NO_LOCAL_MODEL = (
    "module={module!r}: {path} looks like a local folder but {problem}. A local model folder must "
    "hold what save_pretrained writes (config.json, the weights and the tokenizer files)."
)
HUB_UNREACHABLE = (
    "module={module!r}: {name!r} is not a local folder and not in the Hugging Face cache, "
    "and the Hub ({endpoint}) cannot be reached ({error}). Run once with network access "
    "to fill the cache, copy a folder written by save_pretrained and pass "
    "module='hf:<path>', or check HF_ENDPOINT / proxy settings."
)
HF_LOAD_FAILED = (
    "module={module!r}: could not load {what} from {name!r} ({error}). A local model folder "
    "must hold what save_pretrained writes: config.json, the weights and the tokenizer files."
)
MAX_LENGTH_TOO_LONG = (
    "module_params['max_length']={max_length} is longer than {module!r} can read: its "
    "position embeddings take {positions} tokens."
)
MAX_LENGTH_TOO_SHORT = (
    "module_params['max_length']={max_length} is shorter than the {special} special tokens "
    "that the tokenizer of {module!r} adds to every text, so no text can be truncated to it; "
    "give at least {special}."
)
NO_PAD_TOKEN = (
    "module={module!r}: its tokenizer has no padding token and no end-of-sequence token, so "
    "batches of texts of different lengths cannot be padded; name one with "
    "module_params={{'tokenizer_kwargs': {{'pad_token': '<a token of its vocabulary>'}}}}."
)
TOKENS_NOT_EMBEDDED = (
    "module={module!r}: its tokenizer has tokens {tokens} (added by tokenizer_kwargs, or by "
    "the tokenizer files) whose ids the model does not embed: it embeds ids 0 to {last}. "
    "Name tokens of its vocabulary instead (e.g. pad_token=its end-of-sequence token)."
)
HF_NO_NAME = "module={module!r} names no model: give 'hf:<name or folder>'."
HF_OFFLINE_MISS = (
    "module={module!r}: {name!r} is not a local folder and not in the Hugging Face cache, "
    "and downloads are off ({reason}). Pass module='hf:<path to a folder written by "
    "save_pretrained>' or allow downloads."
)
BAD_TORCHVISION_PARAMS = (
    "module_params {keys} of module={name!r}: torchvision's model refuses one ({error}); "
    "besides 'weights' they are passed to torchvision.models.{name}."
)
BAD_HF_PARAMS = "module={module!r} takes module_params {allowed}; got unknown {unknown}."
BAD_LOCAL_ONLY = "module_params['local_files_only'] must be True, False or None; got {value!r}."
BAD_REVISION = (
    "module_params['revision'] must be None or a Hub revision (a branch, tag or commit "
    "name); got {value!r}."
)
HF_MODEL_REFUSES = (
    "module_params['model_kwargs'] {keys} of module={module!r}: the model refuses one "
    "({error}); they are passed to AutoModelForSequenceClassification.from_pretrained and "
    "the model's configuration."
)
BAD_HF_KWARGS = "module_params[{key!r}] must be a dict of keyword arguments; got {value!r}."
HF_KWARGS_CLASH = (
    "module_params[{key!r}] sets {clash}, which rest_fair sets itself: give revision and "
    "local_files_only as module_params of their own; num_labels comes from the classes."
)
BAD_MAX_LENGTH = "module_params['max_length'] must be a positive integer or None; got {!r}."
BAD_DOWNLOAD_TIMEOUT = (
    "module_params['download_timeout'] (of a torchvision model) must be a positive, finite "
    "number of seconds; got {!r}."
)
HF_NEEDS_TOKENS = (
    "{cls} takes a dict of token tensors (input_ids, attention_mask) as produced from a "
    "list of strings by RESTClassifier; got {type}."
)
_HF_PARAMS = ("max_length", "revision", "local_files_only", "tokenizer_kwargs", "model_kwargs")
_SET_BY_US = ("revision", "local_files_only")
_SET_BY_US_MODEL = (*_SET_BY_US, "num_labels", "ignore_mismatched_sizes")
#: Model types whose position ids count on from ``pad_token_id + 1`` (RoBERTa's scheme):
#: they read ``max_position_embeddings - pad_token_id - 1`` tokens (512 of 514 for
#: roberta-base).
_POSITIONS_AFTER_PADDING = frozenset({
    "camembert", "data2vec-text", "ibert", "layoutlmv3", "lilt", "longformer", "luke",
    "markuplm", "mpnet", "roberta", "roberta-prelayernorm", "xlm-roberta", "xlm-roberta-xl",
    "xmod",
})


# --------------------------------------------------------------------------- dispatch
def is_backbone(name: str, module_params: Mapping[str, Any] | None = None) -> bool:
    """Whether ``build_module`` should hand ``module=name`` to :func:`build_backbone`.

    ``"hf:..."`` names and names that are not built-in are backbones. The built-in
    ``"resnet18"`` (plain torch, from scratch) is used unless ``module_params`` has a
    ``"weights"`` entry, which selects torchvision's ResNet-18.
    """
    return name not in MODULE_NAMES or (name == "resnet18" and "weights" in (module_params or {}))


def build_backbone(
    name: str,
    *,
    input_shape: Sequence[int],
    n_classes: int,
    module_params: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Build a torchvision (``"resnet50"``) or Hugging Face (``"hf:..."``) classifier.

    Parameters
    ----------
    name : str
        Model name, see :func:`build_torchvision` and :func:`build_hf`.
    input_shape : tuple of int
        Shape of one sample (checked for images; unused for text).
    n_classes : int
        Number of outputs of the new classification head.
    module_params : dict or None
        Options of the backbone.

    Returns
    -------
    nn.Module
    """
    params = dict(module_params or {})
    if name.startswith(HF_PREFIX):
        return build_hf(name[len(HF_PREFIX):], n_classes=n_classes,
                        **check_hf_params(name, params))
    return build_torchvision(name, input_shape=input_shape, n_classes=n_classes,
                             **_torchvision_params(name, params))


def check_backbone(name: str, module_params: Mapping[str, Any] | None = None) -> None:
    """Check ``module=name`` and its ``module_params`` as :func:`build_backbone` reads them,
    without building the model or downloading anything (see :func:`check_hf_params` and
    :func:`check_torchvision`)."""
    params = dict(module_params or {})
    if name.startswith(HF_PREFIX):
        check_hf_params(name, params)
    else:
        check_torchvision(name, **_torchvision_params(name, params))


def _torchvision_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` of a torchvision model, refused where they name an argument that
    :func:`build_backbone` sets from the data."""
    taken = sorted({"n_classes", "input_shape"} & set(params))
    if taken:
        raise ValueError(BAD_TORCHVISION_PARAMS.format(
            name=name, keys=taken, error="rest_fair sets them from the data"))
    return params


# ------------------------------------------------------------------------ torchvision
def torchvision_model_names() -> list[str]:
    """Names of torchvision's classification models (``torchvision.models``)."""
    tv = import_optional("torchvision", extra="vision", caller="torchvision_model_names()")
    return sorted(tv.models.list_models(module=tv.models))


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value
        or (os.altsep is not None and os.altsep in value)
        or value.startswith((".", "~"))
        or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))
    )


def _looks_like_folder(value: str) -> bool:
    """Whether an ``hf:`` name is meant as a local folder (a Hub id is ``name`` or
    ``owner/name``, also on Windows, whose ``os.altsep`` is ``/``)."""
    return (
        value.startswith((".", "~", "/"))
        or value.count("/") > 1
        or any(sep not in (None, "/") and sep in value for sep in (os.sep, os.altsep))
    )


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict safely: ``torch.load(weights_only=True)`` or safetensors.

    A file holding ``{"state_dict": {...}}``, ``{"model": {...}}`` or
    ``{"model_state_dict": {...}}`` (common training checkpoints, whatever else they hold:
    optimizer state, epoch, ...) is unwrapped.

    Parameters
    ----------
    path : path
        ``.safetensors`` files are read with :mod:`safetensors`; anything else with
        :func:`torch.load` and ``weights_only=True`` (no code from the file runs).

    Returns
    -------
    dict of str to Tensor

    Raises
    ------
    ValueError
        If the file cannot be read (damaged, empty, a pickled model) or holds no state dict;
        the message names the file, and the type of a pickled object it holds.
    """
    path = Path(path).expanduser()
    unreadable: tuple[type[Exception], ...] = _UNREADABLE
    try:
        if path.suffix == ".safetensors":
            safetensors = import_optional("safetensors", extra="text",
                                          caller=f"reading {path.name}")
            unreadable += (safetensors.SafetensorError,)
            reader = import_optional("safetensors.torch", extra="text",
                                     caller=f"reading {path.name}")
            state = reader.load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except unreadable as exc:
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise ValueError(UNSAFE_STATE_DICT.format(path=path, type=refused[1])) from exc
        raise ValueError(UNREADABLE_STATE_DICT.format(
            path=path, error=type(exc).__name__)) from exc
    if isinstance(state, Mapping):  # a checkpoint: a state dict's own values are tensors
        state = next((state[key] for key in _CHECKPOINT_KEYS
                      if isinstance(state.get(key), Mapping)), state)
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()
    ):
        what = type(state).__name__
        if isinstance(state, Mapping):
            keys = [str(k) for k in list(state)[:8]]
            what += f" with keys {keys}" + (f" ... ({len(state)} in all)" if len(state) > 8
                                             else "")
        raise ValueError(BAD_STATE_DICT.format(path=path, type=what, keys=list(_CHECKPOINT_KEYS)))
    return dict(state)


def _find_head(model: nn.Module, n_categories: int | None) -> tuple[str, nn.Module]:
    """The classification layer: the last Linear, else the last conv with one output per class."""
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linear:
        return linear[-1]
    convs = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and n_categories in (None, m.out_channels)]
    if convs:
        return convs[-1]
    raise ValueError(NO_HEAD.format(name=type(model).__name__))


def replace_head(model: nn.Module, n_classes: int, *, n_categories: int | None = None) -> str:
    """Replace the classification layer of ``model`` by a new one with ``n_classes`` outputs.

    Parameters
    ----------
    model : nn.Module
        A classifier whose last ``nn.Linear`` (in module order) is the output layer, or,
        without linear layers, whose last ``nn.Conv2d`` with ``n_categories`` outputs is
        (SqueezeNet).
    n_classes : int
        Outputs of the new layer (freshly initialised, with a bias if the old one had one).
    n_categories : int, optional
        Outputs of the old head, used to find a convolutional head.

    Returns
    -------
    str
        Module name of the new head, e.g. ``"fc"``.
    """
    name, old = _find_head(model, n_categories)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, n_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, n_classes, old.kernel_size, stride=old.stride,
                        padding=old.padding, bias=old.bias is not None)
    set_submodule(model, name, new.to(device=old.weight.device, dtype=old.weight.dtype))
    return name


def _drop_aux_heads(model: nn.Module) -> None:
    # Inception v3 and GoogLeNet return (logits, aux logits) in training mode; the
    # training loop wants logits only, so their auxiliary classifiers are removed.
    if getattr(model, "aux_logits", False):
        model.aux_logits = False
        for attr in _AUX_HEADS:
            if hasattr(model, attr):
                setattr(model, attr, None)


def _sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_file(member: Any) -> tuple[Path, str | None]:
    """Where torch.hub's cache keeps the file of torchvision weights ``member``, and the
    start of its SHA-256 that the file name holds (``None`` where it holds none)."""
    filename = os.path.basename(urllib.parse.urlparse(member.url).path)
    match = torch.hub.HASH_REGEX.search(filename)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename, match and match.group(1)


def _check_cached_file(member: Any, name: str, error: Exception) -> None:
    """Raise :class:`OSError` naming the cached file of ``member`` when loading it failed
    with ``error`` and its SHA-256 does not start with the digest in its name."""
    cache, digest = _cached_file(member)
    if digest and cache.is_file() and not _sha256_file(cache).startswith(digest):
        raise OSError(DAMAGED_CACHED_WEIGHTS.format(
            weights=str(member), name=name, cache=cache, error=type(error).__name__,
            digest=digest, url=member.url)) from error


def _download(member: Any, name: str, timeout: float) -> None:
    """Put the file of torchvision weights ``member`` into torch.hub's cache."""
    cache, digest = _cached_file(member)
    if cache.exists():
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        with socket_timeout(timeout):
            torch.hub.download_url_to_file(member.url, str(cache), digest, progress=False)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError and timeouts are OSErrors
        raise OSError(DOWNLOAD_FAILED.format(weights=str(member), name=name, url=member.url,
                                             error=exc, cache=cache)) from exc


def check_torchvision(
    name: str,
    weights: Any = None,
    *,
    input_shape: Sequence[int] | None = None,
    download_timeout: float = _DOWNLOAD_TIMEOUT_S,
    **kwargs: Any,
) -> tuple[Path | None, Any]:
    """Check the arguments of :func:`build_torchvision` without downloading or reading
    weights: the model name, its ``weights`` and ``download_timeout`` and, where given, the
    other keyword arguments and the sample shape ``input_shape`` on the model built on the
    meta device (no memory, no weights; a RegNet's keyword arguments on the model built on
    the CPU).

    Returns
    -------
    path : Path or None
        The state-dict file ``weights`` names.
    member : WeightsEnum member or None
        The torchvision weights ``weights`` names.

    Raises
    ------
    ValueError
        For a name torchvision does not know (with close matches), unknown weights, keyword
        arguments the model refuses (or that differ from those its weights set), and
        samples it cannot take.
    FileNotFoundError
        For ``weights`` that look like a path to a file that does not exist.
    IsADirectoryError
        For ``weights`` that name a folder.
    MissingDependencyError
        Without torchvision.
    """
    tv = import_optional("torchvision", extra="vision",
                         caller=TORCHVISION_CALLER.format(name=name, builtin=MODULE_NAMES))
    names = tv.models.list_models(module=tv.models)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ValueError(UNKNOWN_TORCHVISION.format(builtin=MODULE_NAMES, name=name, hint=hint))
    path, member = _check_weights(tv, name, weights)
    if (isinstance(download_timeout, bool) or not isinstance(download_timeout, Real)
            or not 0 < download_timeout < float("inf")):
        raise ValueError(BAD_DOWNLOAD_TIMEOUT.format(download_timeout))
    if input_shape is None and not kwargs:
        return path, member
    probe, sizes = _meta_model(tv, name, member, kwargs)
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3 or shape[0] != 3:
            layout = (", which look channels-last (height, width, channels): pass "
                      "X.transpose(0, 3, 1, 2)" if len(shape) == 3 and shape[2] == 3 else "")
            raise ValueError(NEED_IMAGES.format(name=name, shape=shape, layout=layout))
        if probe is not None:
            _check_image_size(probe, name, shape, pretrained=path is not None or member is not None,
                              **sizes)
    return path, member


def fetch_torchvision(
    name: str,
    weights: Any = None,
    *,
    input_shape: Sequence[int] | None = None,
    download_timeout: float = _DOWNLOAD_TIMEOUT_S,
    **kwargs: Any,
) -> tuple[Path | None, Any]:
    """:func:`check_torchvision`, then the torchvision weights it names downloaded into
    torch.hub's cache where they are not there yet (nothing is downloaded when a check
    fails); returns what :func:`check_torchvision` returns.

    Raises
    ------
    OSError
        As :func:`check_torchvision`, and when the download fails, naming where to put the
        file by hand.
    """
    path, member = check_torchvision(name, weights, input_shape=input_shape,
                                     download_timeout=download_timeout, **kwargs)
    if member is not None:
        _download(member, name, download_timeout)
    return path, member


def _check_weights(tv: Any, name: str, weights: Any) -> tuple[Path | None, Any]:
    """The state-dict file and the torchvision weights member that ``weights`` names."""
    if weights is None:
        return None, None
    enum = tv.models.get_model_weights(name)
    if isinstance(weights, tv.models.WeightsEnum):
        if not isinstance(weights, enum):
            raise ValueError(OTHER_MODELS_WEIGHTS.format(weights=weights, name=name,
                                                         available=list(enum.__members__)))
        return None, weights
    if isinstance(weights, Mapping):
        raise ValueError(BAD_WEIGHTS.format(value=WEIGHTS_IN_MEMORY.format(
            type=type(weights).__name__, n=len(weights))))
    if not isinstance(weights, (str, os.PathLike)) or not os.fspath(weights).strip():
        raise ValueError(BAD_WEIGHTS.format(value=repr(weights)[:80]))
    candidate = Path(weights).expanduser()
    if candidate.is_file():
        return candidate, None
    if candidate.is_dir():
        raise IsADirectoryError(WEIGHTS_IS_A_FOLDER.format(weights=str(weights)))
    if isinstance(weights, os.PathLike) or _looks_like_path(str(weights)):
        if re.match(r"[a-z][a-z0-9+.-]*://", str(weights), re.IGNORECASE):
            raise ValueError(WEIGHTS_URL.format(weights=str(weights), name=name,
                                                available=list(enum.__members__)))
        raise FileNotFoundError(MISSING_WEIGHTS_FILE.format(weights=str(weights)))
    member = str(weights).removeprefix(enum.__name__ + ".")  # as str(member) writes it
    if member not in enum.__members__:
        raise ValueError(UNKNOWN_WEIGHTS.format(weights=weights, name=name,
                                                available=list(enum.__members__)))
    return None, enum[member]


def build_torchvision(
    name: str,
    *,
    input_shape: Sequence[int] | None = None,
    n_classes: int,
    weights: str | os.PathLike | None = None,
    download_timeout: float = _DOWNLOAD_TIMEOUT_S,
    **kwargs: Any,
) -> nn.Module:
    """A torchvision classification model with a new head of ``n_classes`` outputs.

    Parameters
    ----------
    name : str
        Model name in ``torchvision.models``, e.g. ``"resnet50"``.
    input_shape : tuple of int, optional
        Shape of one sample, ``(3, height, width)`` of a size the model takes: the size a
        vision transformer (``image_size``) or MaxViT (``input_size``) is built for, or at
        least the smallest size of models such as Inception v3 (75x75) and AlexNet (63x63).
        It and ``kwargs`` are checked on the model built on the meta device, before any
        weights are downloaded or read.
    n_classes : int
        Outputs of the new classification layer.
    weights : None, str, WeightsEnum member or path, default=None
        ``None``: random initialisation. A torchvision weights name of the model
        (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ``"ResNet50_Weights.IMAGENET1K_V1"``, ...) or
        member of its weights enum (``ResNet50_Weights.IMAGENET1K_V1``): taken from
        torch.hub's cache, or downloaded there (``download_timeout`` seconds per network
        operation; a failed download or a damaged cached file is an :class:`OSError` saying
        where to put the file).
        A path: a state-dict file, read with ``weights_only=True``; every key and shape must
        match the architecture except the classification head's, loaded where their shapes
        fit the new head (else it keeps its fresh initialisation). A prefix every key has
        is removed where it is ``module.`` (``DataParallel``, ``DistributedDataParallel``)
        or ``_orig_mod.`` (``torch.compile``), or where more keys fit the model without it
        (``model.`` of a PyTorch Lightning module holding it as ``self.model``). The
        batch-norm counters ``num_batches_tracked`` may be absent (files of PyTorch before
        0.4.1), and the auxiliary classifiers of Inception v3 and GoogLeNet, which the
        returned model drops, absent or present. The model is built as without weights:
        Inception v3 and GoogLeNet with ``transform_input=False`` unless given, which their
        torchvision weights set to ``True`` (give it with a file of those weights).
    download_timeout : float, default=30
        Socket timeout of a download, in seconds (positive and finite).
    **kwargs
        Passed to the torchvision model builder; with weights, those that torchvision sets
        from them (``num_classes``, a vision transformer's ``image_size``, GoogLeNet's and
        Inception v3's ``aux_logits=True`` and ``init_weights=False``) must be theirs.

    Returns
    -------
    nn.Module
    """
    tv = import_optional("torchvision", extra="vision",
                         caller=TORCHVISION_CALLER.format(name=name, builtin=MODULE_NAMES))
    path, member = fetch_torchvision(name, weights, input_shape=input_shape,
                                     download_timeout=download_timeout, **kwargs)

    try:
        model = tv.models.get_model_builder(name)(weights=member, **kwargs)
    except TypeError as exc:  # an option torchvision's model does not take, or sets itself
        if not any(why in str(exc) for why in ("unexpected keyword argument",
                                                "multiple values for keyword argument")):
            raise
        raise ValueError(BAD_TORCHVISION_PARAMS.format(name=name, keys=sorted(kwargs),
                                                       error=exc)) from exc
    except _UNREADABLE as exc:
        if member is not None:  # a damaged cached file, else the error as it is
            _check_cached_file(member, name, exc)
        raise
    n_categories = len(member.meta["categories"]) if member is not None else None
    head = replace_head(model, n_classes, n_categories=n_categories or kwargs.get("num_classes"))
    if path is not None:
        _load_checked(model, load_state_dict_file(path), head=head, name=name, path=path)
    _drop_aux_heads(model)
    return model


def _meta_model(
    tv: Any, name: str, member: Any, kwargs: Mapping[str, Any]
) -> tuple[nn.Module | None, dict[str, Any]]:
    """torchvision's ``name`` built with ``kwargs`` on the meta device (no memory, no
    weights, no download) as the weights ``member`` build it, and the image sizes of
    :func:`_check_image_size`: ``input_size``, the one size a MaxViT is built for (a vision
    transformer has its ``image_size``), and ``min_size``, the smallest of ``member``'s or,
    without it, of any of the model's weights.

    ``kwargs`` that torchvision refuses, or that differ from those ``member`` sets, are
    refused with a ``ValueError`` naming them. Where the model cannot be built on the meta
    device (RegNet computes its widths from tensors), it is built on the CPU to check
    ``kwargs``, and is ``None`` without them.
    """
    builder = tv.models.get_model_builder(name)
    candidates = [member] if member is not None else list(tv.models.get_model_weights(name))
    sizes: dict[str, Any] = {"min_size": min((tuple(w.meta["min_size"]) for w in candidates
                                              if "min_size" in w.meta), default=None)}

    def build(**options: Any) -> nn.Module:
        with torch.device("meta"):
            return builder(weights=None, **{**_QUIET_BUILD.get(name, {}), **options})

    try:
        try:
            model: nn.Module | None = build(**kwargs)
        except NotImplementedError:  # "Cannot copy out of meta tensor": kwargs checked on the CPU
            with torch.random.fork_rng(devices=[]):  # the caller's random numbers stay as they are
                model = builder(weights=None, **kwargs) if kwargs else None
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        if not kwargs:
            raise
        error = str(exc) + ("; pretrained weights are chosen by 'weights' ('DEFAULT' or a "
                            "weights name), not 'pretrained'" if "pretrained" in kwargs
                            else "")  # torchvision's before 0.13
        raise ValueError(BAD_TORCHVISION_PARAMS.format(name=name, keys=sorted(kwargs),
                                                       error=error)) from exc
    param = _IMAGE_SIZE_PARAMS.get(type(model).__name__)
    size: Any = None
    if param is not None:  # torchvision builds for its weights' size, and by default
        weights = member if member is not None else tv.models.get_model_weights(name).DEFAULT
        size = tuple(weights.meta["min_size"])
        size = size if param == "input_size" else size[0]
    if member is not None:  # the arguments torchvision sets from the weights
        forced = {"num_classes": len(member.meta["categories"]), **({param: size} if param else {}),
                  **_SET_BY_WEIGHTS.get(name, {})}
        clash = sorted(k for k in forced if k in kwargs and kwargs[k] != forced[k])
        if clash:
            error = ", ".join(f"{k}={forced[k]!r}, not {kwargs[k]!r}" for k in clash) + (
                "; the model built drops the auxiliary classifiers all the same"
                if "aux_logits" in clash else "")
            raise ValueError(BAD_TORCHVISION_PARAMS.format(
                name=name, keys=sorted(kwargs), error=f"its weights {member} set {error}"))
        if param is not None and param not in kwargs:
            model = build(**kwargs, **{param: size})
    if param == "input_size":
        sizes["input_size"] = tuple(kwargs.get(param, size))
        sizes["builds_for"] = lambda hw: _builds_for(build, {**kwargs, param: hw}, hw)
    return model, sizes


def _builds_for(build: Callable[..., nn.Module], options: dict[str, Any],
                size: tuple[int, ...]) -> bool:
    """Whether ``build(**options)`` builds a model that takes images of ``size``."""
    try:
        return _forward_error(build(**options), (3, *size)) is None
    except (ValueError, RuntimeError, AssertionError):
        return False


def _forward_error(model: nn.Module, shape: tuple[int, ...]) -> Exception | None:
    """The error of ``model``'s forward pass (on the meta device) on a sample of ``shape``."""
    try:
        with torch.no_grad():
            model.eval()(torch.empty((1, *shape), device="meta"))
    except NotImplementedError:  # an operation without a meta kernel: no answer
        return None
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        return exc
    return None


def _check_image_size(model: nn.Module, name: str, shape: tuple[int, ...], *,
                      pretrained: bool, input_size: tuple[int, int] | None = None,
                      min_size: Sequence[int] | None = None,
                      builds_for: Callable[[tuple[int, ...]], bool] | None = None) -> None:
    """Refuse samples of ``shape`` that ``model`` cannot take.

    A vision transformer takes its ``image_size`` only. A model on the meta device (from
    :func:`_meta_model`) is run on a sample of ``shape``; where that fails, the error names
    ``input_size`` (MaxViT's one size) where a sample of it passes, else the smallest square
    the model takes where a square of the largest side of ``min_size`` (the smallest size of
    its weights, 75x75 for Inception v3) passes (found by bisection: such models take any
    larger image). ``builds_for(size)`` says whether a model without pretrained weights can
    be built for images of ``size`` instead (MaxViT's ``input_size``).
    """
    size, patch = getattr(model, "image_size", None), getattr(model, "patch_size", None)
    if len(shape) != 3:
        return
    if isinstance(size, int):
        if shape[1:] == (size, size):
            return
        side = shape[1]
        if pretrained:
            other = "; its pretrained position embeddings are those of this size"
        elif shape[2] == side and isinstance(patch, int) and side % patch == 0:
            other = f", or build it for them with module_params={{'image_size': {side}}}"
        else:
            other = (f", or to a size that is a multiple of its patch size {patch} and build "
                     "it for that size with module_params={'image_size': <size>}")
        raise ValueError(WRONG_IMAGE_SIZE.format(name=name, size=f"{size}x{size}",
                                                 param="image_size", shape=shape, other=other))
    if not next(model.parameters(), torch.empty(0)).is_meta:
        return
    error = _forward_error(model, shape)
    if error is None:
        return
    if input_size is not None and _forward_error(model, (3, *input_size)) is None:
        if pretrained:
            other = "; torchvision builds it for this size with its pretrained weights"
        elif builds_for is not None and builds_for(shape[1:]):
            other = f", or build it for them with module_params={{'input_size': {shape[1:]}}}"
        else:
            other = (", or to a size it can be built for (its partition size "
                     f"{getattr(model, 'partition_size', '?')} dividing every block's input) "
                     "and build it for that size with module_params={'input_size': (h, w)}")
        raise ValueError(WRONG_IMAGE_SIZE.format(
            name=name, size="{}x{}".format(*input_size), param="input_size", shape=shape,
            other=other))
    side = max(min_size or (0,))  # a size it takes, then the smallest by bisection
    if min(shape[1:]) >= side or _forward_error(model, (3, side, side)) is not None:
        return
    low = min(shape[1:])
    while side - low > 1:
        middle = (low + side) // 2
        low, side = (low, middle) if _forward_error(model, (3, middle, middle)) is None else (
            middle, side)
    raise ValueError(IMAGES_TOO_SMALL.format(name=name, size=f"{side}x{side}", shape=shape,
                                             error=error))


def _without_wrapper_prefix(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> tuple[Mapping[str, torch.Tensor], str]:
    """``state`` without the prefixes that every one of its keys carries and not every key
    of the model (``expected``) does, and those prefixes.

    The prefixes of :data:`_WRAPPER_PREFIXES` are removed; any other one (the attribute
    holding the model in a PyTorch Lightning module, as in ``model.layer1.0.conv1.weight``)
    only where more of the keys without it are keys of the model.
    """
    prefix = next(iter(state), "").split(".", 1)[0] + "."
    if (not state or not all(k.startswith(prefix) for k in state)
            or all(k.startswith(prefix) for k in expected)):
        return state, ""
    inner, removed = _without_wrapper_prefix({k[len(prefix):]: v for k, v in state.items()},
                                             expected)
    if prefix in _WRAPPER_PREFIXES or (len(inner.keys() & expected.keys())
                                       > len(state.keys() & expected.keys())):
        return inner, prefix + removed
    return state, ""


def _load_checked(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, head: str, name: str, path: Path
) -> None:
    """Load ``state`` into ``model``; the head's entries may be absent or of another shape."""
    expected = model.state_dict()
    state, removed = _without_wrapper_prefix(state, expected)
    head_keys = {k for k in expected if k == head or k.startswith(head + ".")}
    missing = sorted(k for k in expected if k not in state and k not in head_keys
                     and k.split(".", 1)[0] not in _AUX_HEADS  # dropped after loading
                     and not k.endswith(".num_batches_tracked"))  # older files: torch sets it
    unexpected = sorted(k for k in state if k not in expected
                        and k.split(".", 1)[0] not in _AUX_HEADS)
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in expected
        if k in state and k not in head_keys and tuple(state[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("wrong shapes", wrong)):
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        if removed:
            problems[-1] += f" (keys read without the prefix {removed!r} every key has)"
        raise ValueError(STATE_DICT_MISMATCH.format(path=path, name=name,
                                                    problems="; ".join(problems)))
    usable = {
        k: v for k, v in state.items()
        if k not in head_keys or tuple(v.shape) == tuple(expected[k].shape)
    }
    model.load_state_dict(usable, strict=False)


# ------------------------------------------------------------------------ transformers
def _offline_reason() -> str | None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var}=1"
    return None


def _probe(endpoint: str, timeout: float) -> None:
    """Raise :class:`OSError` unless the Hub (or its proxy) answers a request in ``timeout`` s.

    An HTTP answer of any status counts, and so does a TLS handshake that fails on the
    certificate (the library that downloads may trust other certificates). A connection
    that opens but is never answered (a proxy or firewall that swallows requests) is an
    error here: ``transformers`` would wait on it without a timeout.
    """
    request = urllib.request.Request(endpoint, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except urllib.error.HTTPError as exc:  # an answer, whatever its status
        exc.close()
    except urllib.error.URLError as exc:
        if not isinstance(exc.reason, ssl.SSLError):
            raise


def _from_pretrained(
    module: str, cls: Any, name: str, *, local_files_only: bool | None, what: str,
    revision: str | None = None, **kwargs: Any,
) -> Any:
    """``cls.from_pretrained``: a local folder, else the cache, else the Hub if it answers."""
    if revision is not None:
        kwargs["revision"] = revision
    if not name.strip():
        raise ValueError(HF_NO_NAME.format(module=module))
    path = Path(name).expanduser()
    if not path.is_dir() and _looks_like_folder(name):
        error, problem = ((NotADirectoryError, "is a file") if path.exists()
                          else (FileNotFoundError, "does not exist"))
        raise error(NO_LOCAL_MODEL.format(module=module, path=path, problem=problem))
    target = str(path) if path.is_dir() else name
    try:
        return cls.from_pretrained(target, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:  # a folder missing its config or tokenizer files
        if path.is_dir():
            raise OSError(HF_LOAD_FAILED.format(module=module, what=what, name=target,
                                                error=exc)) from exc
        if isinstance(exc, ValueError):
            raise
        reason = _offline_reason() or ("local_files_only=True" if local_files_only else None)
        if reason is not None:
            raise OSError(HF_OFFLINE_MISS.format(module=module, name=name, reason=reason)) from exc
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        _probe(endpoint, _PROBE_TIMEOUT_S)
    except OSError as exc:
        raise OSError(HUB_UNREACHABLE.format(module=module, name=name, endpoint=endpoint,
                                             error=exc)) from exc
    try:
        return cls.from_pretrained(target, **kwargs)
    except OSError as exc:
        raise OSError(HF_LOAD_FAILED.format(module=module, what=what, name=name,
                                            error=exc)) from exc


def _check_max_length(max_length: Any) -> int | None:
    if max_length is None:
        return None
    if isinstance(max_length, bool) or not isinstance(max_length, Integral) or max_length < 1:
        raise ValueError(BAD_MAX_LENGTH.format(max_length))
    return int(max_length)


def check_hf_params(module: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Validated ``module_params`` of an ``"hf:..."`` module (unknown keys are an error).

    ``tokenizer_kwargs`` and ``model_kwargs`` must be dicts without the arguments rest_fair
    passes itself (``revision`` and ``local_files_only``, which are options of their own,
    and the model's ``num_labels`` and ``ignore_mismatched_sizes``).
    """
    unknown = sorted(set(params) - set(_HF_PARAMS))
    if unknown:
        raise ValueError(BAD_HF_PARAMS.format(module=module, allowed=list(_HF_PARAMS),
                                              unknown=unknown))
    if params.get("local_files_only") not in (None, True, False):
        raise ValueError(BAD_LOCAL_ONLY.format(value=params["local_files_only"]))
    revision = params.get("revision")
    if revision is not None and not (isinstance(revision, str) and revision.strip()):
        raise ValueError(BAD_REVISION.format(value=revision))
    for key, taken in (("tokenizer_kwargs", _SET_BY_US), ("model_kwargs", _SET_BY_US_MODEL)):
        value = params.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(BAD_HF_KWARGS.format(key=key, value=value))
        clash = sorted(set(value or {}) & set(taken))
        if clash:
            raise ValueError(HF_KWARGS_CLASH.format(key=key, clash=clash))
    return {**params, "max_length": _check_max_length(params.get("max_length"))}


def load_tokenizer(module: str, module_params: Mapping[str, Any] | None = None) -> Any:
    """The tokenizer of ``module="hf:<name or path>"``, local-first.

    Parameters
    ----------
    module : str
        ``"hf:<name or path>"``.
    module_params : dict or None
        ``revision``, ``local_files_only`` and ``tokenizer_kwargs`` are used.

    Returns
    -------
    transformers.PreTrainedTokenizerBase
    """
    params = check_hf_params(module, dict(module_params or {}))
    transformers = import_optional("transformers", extra="text", caller=f"module={module!r}")
    tokenizer = _from_pretrained(module, transformers.AutoTokenizer, module.removeprefix(HF_PREFIX),
                                 revision=params.get("revision"),
                                 local_files_only=params.get("local_files_only"),
                                 what="the tokenizer", **(params.get("tokenizer_kwargs") or {}))
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # e.g. GPT-2 has no padding token
    # the default length (the tokenizer's, at most 512) must fit the model's positions too
    config = _config(module, transformers, params)
    positions = None if config is None else _positions(config)
    current = getattr(tokenizer, "model_max_length", None)
    if positions is not None and not (isinstance(current, int) and 0 < current <= positions):
        tokenizer.model_max_length = positions
    return tokenizer


def _config(module: str, transformers: Any, params: Mapping[str, Any]) -> Any:
    """The model's configuration, with the settings ``params['model_kwargs']`` overrides
    (:func:`_load_config`), or ``None`` where it cannot be loaded."""
    try:
        return _load_config(module, transformers, params)
    except (OSError, ValueError):  # the model load that follows says what is wrong
        return None


def _load_config(module: str, transformers: Any, params: Mapping[str, Any]) -> Any:
    """The model's configuration as the model loads it: ``params['model_kwargs']`` that
    name settings of the configuration (``max_position_embeddings``, ``vocab_size``, ...)
    override them, the others are ignored. A ``config`` among them is the configuration
    read instead of the model's: a configuration object (copied, :func:`_own_config`) or
    the name or folder of one."""
    options = dict(params.get("model_kwargs") or {})
    if _config_object(options) is not None:
        return _own_config(options)["config"]
    config = options.pop("config", None)
    source = module.removeprefix(HF_PREFIX) if config is None else os.fspath(config)
    return _from_pretrained(module, transformers.AutoConfig, source,
                            revision=params.get("revision"),
                            local_files_only=params.get("local_files_only"),
                            what="the model's configuration", **options)


#: Arguments of ``from_pretrained`` that also name a setting of a configuration object:
#: they stay arguments of the loading.
_LOADING_ARGS = ("dtype", "torch_dtype", "attn_implementation")


def _config_object(options: Mapping[str, Any]) -> Any:
    """The configuration object ``options['config']``; ``None`` where there is none (or
    it names one by its model name or folder)."""
    config = options.get("config")
    return None if isinstance(config, (str, os.PathLike)) else config


def _own_config(options: Mapping[str, Any], **settings: Any) -> dict[str, Any]:
    """``options`` (``model_kwargs`` holding a configuration object as ``config``) with a
    copy of that object as ``config``, on which ``settings`` and the options that name its
    settings are set, and the other options.

    transformers passes every other argument of ``from_pretrained`` to the model's
    ``__init__`` when it is given a configuration object (``num_labels`` included, which
    no model takes), where it reads them into a configuration it loads by name; the copy
    gives both the same meaning and leaves the caller's object as it was.
    """
    config = copy.deepcopy(options["config"])
    rest = {}
    for key, value in options.items():
        if key == "config":
            continue
        if hasattr(config, key) and key not in _LOADING_ARGS:
            setattr(config, key, value)
        else:
            rest[key] = value
    for key, value in settings.items():
        setattr(config, key, value)
    return {**rest, "config": config}


def _positions(config: Any) -> int | None:
    """The longest text the model reads, in tokens: its position embeddings, less the
    padding id and the one before the first position where positions start after it."""
    positions = getattr(config, "max_position_embeddings", None)
    pad = getattr(config, "pad_token_id", None)
    if (isinstance(positions, int) and isinstance(pad, int) and pad >= 0
            and getattr(config, "model_type", None) in _POSITIONS_AFTER_PADDING):
        positions -= pad + 1
    return positions if isinstance(positions, int) and positions > 0 else None


def _vocab_size(config: Any) -> int | None:
    size = getattr(config, "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else None


def hf_token_limits(module: str, params: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``(vocabulary size, positions)`` that ``module``'s configuration gives (with the
    settings ``params['model_kwargs']`` override), each ``None`` where it does not say (or
    cannot be loaded: building the model then says why)."""
    transformers = import_optional("transformers", extra="text", caller=f"module={module!r}")
    config = _config(module, transformers, params)
    return (None, None) if config is None else (_vocab_size(config), _positions(config))


class HFTextClassifier(nn.Module):
    """A ``transformers`` sequence classifier that returns logits.

    ``forward`` takes the dict of token tensors that RESTClassifier builds from a list of
    strings (see :mod:`rest_fair.text`) and returns ``model(**tokens).logits``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A model for sequence classification.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer; kept so that a fitted estimator tokenizes new text the same way.
    source : str
        The ``module`` string it was loaded from.
    max_length : int or None
        Maximum number of tokens per text (longer texts are truncated).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, source: str,
                 max_length: int | None) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.max_length = max_length

    def forward(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(tokens, Mapping):
            raise TypeError(HF_NEEDS_TOKENS.format(cls=type(self).__name__,
                                                   type=type(tokens).__name__))
        return self.model(**tokens).logits

    def token_limits(self) -> tuple[int | None, int | None]:
        """``(vocabulary size, positions)`` of the model: the token ids it embeds and the
        longest text it reads (``None`` where the model does not say)."""
        embeddings = self.model.get_input_embeddings()
        vocab = getattr(embeddings, "num_embeddings", None)
        return (vocab if isinstance(vocab, int) else _vocab_size(self.model.config),
                _positions(self.model.config))


def build_hf(
    name: str,
    *,
    n_classes: int,
    max_length: int | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    tokenizer_kwargs: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> HFTextClassifier:
    """A Hugging Face model for sequence classification with ``n_classes`` labels.

    Parameters
    ----------
    name : str
        A local folder written by ``save_pretrained`` (used as is, never any network) or
        a Hub model name (``"distilbert-base-uncased"``): taken from the Hugging Face
        cache, or downloaded after checking that the Hub answers (a Hub that cannot be
        reached or does not answer within 5 s, ``HF_HUB_OFFLINE=1`` or
        ``local_files_only=True`` with nothing cached is an :class:`OSError` naming the
        model).
    n_classes : int
        ``num_labels``; a head of another size in the checkpoint is replaced.
    max_length : int or None, default=None
        Maximum tokens per text; ``None`` is the tokenizer's ``model_max_length`` (at
        most 512).
    revision : str, optional
        Hub revision (branch, tag or commit).
    local_files_only : bool, optional
        Never download.
    tokenizer_kwargs, model_kwargs : dict, optional
        Extra arguments of ``AutoTokenizer.from_pretrained`` and
        ``AutoModelForSequenceClassification.from_pretrained``. The model is loaded in
        float32, whatever dtype its checkpoint was saved in, unless ``model_kwargs`` names
        a ``dtype`` (``"auto"``: the checkpoint's); ``precision=`` of the estimator then
        trains in lower precision with float32 master weights. A configuration object
        as ``model_kwargs['config']`` is copied (the caller's is not changed), and the
        number of labels and the other ``model_kwargs`` that name its settings are set on
        the copy, as ``from_pretrained`` sets them on a configuration it loads itself.

    Returns
    -------
    HFTextClassifier
    """
    module = HF_PREFIX + name
    max_length = _check_max_length(max_length)
    tokenizer = load_tokenizer(module, {"revision": revision, "local_files_only": local_files_only,
                                        "tokenizer_kwargs": tokenizer_kwargs,
                                        "model_kwargs": model_kwargs})
    transformers = import_optional("transformers", extra="text", caller=f"module={module!r}")
    options = dict(model_kwargs or {})
    labels: dict[str, Any] = {"num_labels": int(n_classes)}
    if _config_object(options) is not None:  # the labels go into its copy
        options, labels = _own_config(options, **labels), {}
    if not {"dtype", "torch_dtype"} & set(options):  # transformers 5 reads "auto"
        from packaging.version import Version  # a dependency of transformers

        renamed = Version(transformers.__version__) >= Version("4.56")  # torch_dtype before
        options["dtype" if renamed else "torch_dtype"] = torch.float32
    try:
        model = _from_pretrained(
            module, transformers.AutoModelForSequenceClassification, name, revision=revision,
            local_files_only=local_files_only, what="the model", ignore_mismatched_sizes=True,
            **labels, **options,
        )
    except TypeError as exc:  # an argument the model's __init__ does not take
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ValueError(HF_MODEL_REFUSES.format(keys=sorted(model_kwargs or {}), module=module,
                                                 error=exc)) from exc
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    net = HFTextClassifier(model, tokenizer, source=module, max_length=max_length)
    _check_fits(module, tokenizer, max_length, *net.token_limits())
    return net


def check_hf(module: str, module_params: Mapping[str, Any] | None = None) -> None:
    """Check that ``module="hf:<name or path>"`` with ``module_params`` builds a model
    that can train, as :func:`build_hf` checks it, from the tokenizer and the model's
    configuration alone, with the settings ``model_kwargs`` override in it
    (``max_position_embeddings``, ``vocab_size``, ...): the weights are not read (a Hub
    model not in the cache has its tokenizer and configuration downloaded).

    Raises
    ------
    ValueError
        For a tokenizer without a padding (or end-of-sequence) token, a
        ``module_params['max_length']`` longer than the model's position embeddings, or
        tokens of the tokenizer whose ids the model does not embed; for a ``max_length``
        shorter than the special tokens the tokenizer adds to every text; for invalid
        ``module_params`` (:func:`check_hf_params`).
    OSError
        When the tokenizer or the configuration cannot be loaded, naming the model.
    """
    params = check_hf_params(module, dict(module_params or {}))
    tokenizer = load_tokenizer(module, params)
    transformers = import_optional("transformers", extra="text", caller=f"module={module!r}")
    config = _load_config(module, transformers, params)
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    _check_fits(module, tokenizer, params["max_length"], _vocab_size(config), _positions(config))
    special = tokenizer.num_special_tokens_to_add()
    if params["max_length"] is not None and params["max_length"] < special:
        raise ValueError(MAX_LENGTH_TOO_SHORT.format(max_length=params["max_length"],
                                                     special=special, module=module))


def _check_fits(module: str, tokenizer: Any, max_length: int | None, vocab: int | None,
                positions: int | None) -> None:
    """Raise unless ``tokenizer`` pads, ``max_length`` fits the model's ``positions`` and
    the model embeds the ids (``vocab``) of every token the tokenizer added."""
    if tokenizer.pad_token_id is None:  # neither a padding nor an end-of-sequence token
        raise ValueError(NO_PAD_TOKEN.format(module=module))
    if positions is not None and max_length is not None and max_length > positions:
        raise ValueError(MAX_LENGTH_TOO_LONG.format(module=module, max_length=max_length,
                                                    positions=positions))
    beyond = sorted(token for token, index in tokenizer.get_added_vocab().items()
                    if vocab is not None and index >= vocab)
    if beyond:
        raise ValueError(TOKENS_NOT_EMBEDDED.format(module=module, tokens=beyond, last=vocab - 1))
