"""Network architectures used by :class:`rest_fair.RESTClassifier`.

The built-in models are plain :mod:`torch.nn` code (no torchvision): each takes
``input_shape`` (the shape of one sample) and ``n_classes`` and returns logits. Pretrained
backbones (torchvision image models, Hugging Face text models) are built by
:mod:`rest_fair.backbones`, which imports those packages only when asked for one.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ._validation import IDENTIFYING, POSITIVE_INT
from .backbones import MODULE_NAMES, build_backbone, check_backbone, is_backbone
from .sparse import kernels

__all__ = ["MLP", "MODULE_NAMES", "ResNet18", "SmallCNN", "build_module", "check_module"]

_UNKNOWN_MODULE = (
    "module must be one of {names}, an nn.Module subclass, a callable returning an nn.Module "
    "or an nn.Module instance; got {value!r}."
)
_NO_PRETRAINED = (
    "module={name!r} is a built-in network without pretrained weights; "
    "module_params['weights'] applies to torchvision models (e.g. module='resnet50')."
)
_UNKNOWN_PARAMS = (
    "module_params {unknown} are not options of module={name!r}; it takes {accepted}{other}."
)
_TORCHVISION_RESNET18 = (
    " (a 'weights' entry selects torchvision's ResNet-18 instead, with its own options: "
    "'DEFAULT' for its pretrained weights, None for a random start)"
)
_INSTANCE_PARAMS = "module_params cannot be used with an nn.Module instance."
_BAD_HIDDEN = (
    "module_params['hidden_layer_sizes'] must be a sequence of positive ints (the width of "
    "each hidden layer), e.g. (100, 100); got {value!r}."
)
_TOO_SMALL = (
    "images of shape {shape} are too small for module='cnn': its convolution {layer} "
    "(kernel {k}, stride {s}, padding 1) would have no pixel left; use larger images "
    "(e.g. image_size) or fewer widths."
)
_IMAGE_SHAPE = (
    "module={name!r} needs image inputs of shape (n_samples, channels, height, width); "
    "got samples of shape {shape}."
)
CHANNELS_LAST = (
    "module={name!r} reads samples of shape {shape} as {shape[0]} channels of "
    "{shape[1]}x{shape[2]} pixels, but they look channels-last (height, width, channels): "
    "pass X.transpose(0, 3, 1, 2), of shape (n_samples, channels, height, width)."
)


def _channels_last(name: str, shape: tuple[int, ...]) -> str | None:
    """The :data:`CHANNELS_LAST` message where one sample's shape looks like (height, width,
    channels): a last axis of 1, 3 or 4 (grey, RGB, RGBA) behind a first axis of more
    than 4, which read as (channels, height, width) would be an image at most 4 pixels
    wide."""
    if len(shape) == 3 and shape[2] in (1, 3, 4) and shape[0] > 4:
        return CHANNELS_LAST.format(name=name, shape=shape)
    return None


def _check_hidden(sizes: Any) -> None:
    if (isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence)
            or not all(POSITIVE_INT.accepts(w) for w in sizes)):
        raise ValueError(_BAD_HIDDEN.format(value=sizes))


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """``nn.Linear(in_features, out_features)`` initialised as ``nn.Linear.reset_parameters``
    does, drawn by :func:`rest_fair.sparse.kernels.uniform_` from the same generator in the
    same order: the same numbers, bitwise, about 15 times as fast for a 2048 x 2048 layer in
    float32 on the CPU (torch draws one number at a time). Where tensors are made elsewhere
    by default (``torch.device("meta")`` blocks included), and for a layer without weights,
    this is ``nn.Linear`` itself.
    """
    if torch.get_default_device().type != "cpu" or not in_features or not out_features:
        return nn.Linear(in_features, out_features)
    layer = nn.utils.skip_init(nn.Linear, in_features, out_features)
    gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
    bound = math.sqrt(3.0) * (gain / math.sqrt(in_features))
    with torch.no_grad():
        kernels.uniform_(kernels.huge_pages(layer.weight), -bound, bound)
        bound = 1 / math.sqrt(in_features)
        kernels.uniform_(layer.bias, -bound, bound)
    return layer


class MLP(nn.Module):
    """Multi-layer perceptron with ReLU activations.

    Parameters
    ----------
    input_shape : tuple of int
        Shape of one sample; it is flattened.
    n_classes : int
        Number of output logits.
    hidden_layer_sizes : sequence of int, default=(100, 100, 100)
        Widths of the hidden layers (the DFA/LfF Colored-MNIST MLP is 3 x 100).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        *,
        hidden_layer_sizes: Sequence[int] = (100, 100, 100),
    ) -> None:
        super().__init__()
        _check_hidden(hidden_layer_sizes)
        n_in = math.prod(input_shape)
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden_layer_sizes:
            layers += [_linear(n_in, int(width)), nn.ReLU()]
            n_in = int(width)
        layers.append(_linear(n_in, n_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SmallCNN(nn.Module):
    """The 3-layer CNN of the REST paper's Colored-MNIST runs.

    Conv(k=4, s=2) -> BN -> ReLU three times (64/128/256 channels by default), global
    average pooling and a linear classifier.

    Parameters
    ----------
    input_shape : tuple of int
        ``(channels, height, width)`` of one sample.
    n_classes : int
        Number of output logits.
    widths : sequence of int, default=(64, 128, 256)
        Channels of the convolutions.
    kernel_size : int, default=4
    stride : int, default=2
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        *,
        widths: Sequence[int] = (64, 128, 256),
        kernel_size: int = 4,
        stride: int = 2,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(_IMAGE_SHAPE.format(name="cnn", shape=tuple(input_shape)))
        channels, side = input_shape[0], min(int(s) for s in input_shape[1:])
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            side = (side + 2 - kernel_size) // stride + 1
            if side < 1:
                shape = tuple(int(s) for s in input_shape)
                raise ValueError(_channels_last("cnn", shape) or _TOO_SMALL.format(
                    shape=shape, layer=i + 1, k=kernel_size, s=stride))
            layers += [
                nn.Conv2d(channels, int(width), kernel_size, stride=stride, padding=1),
                nn.BatchNorm2d(int(width)),
                nn.ReLU(),
            ]
            channels = int(width)
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, n_in: int, n_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or n_in != n_out:
            self.shortcut = nn.Sequential(nn.Conv2d(n_in, n_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 in plain PyTorch (no torchvision dependency).

    Parameters
    ----------
    input_shape : tuple of int
        ``(channels, height, width)`` of one sample.
    n_classes : int
        Number of output logits.
    width : int, default=64
        Channels of the first stage; stages use ``width * (1, 2, 4, 8)``.
    stem : {"auto", "cifar", "imagenet"}, default="auto"
        ``"cifar"`` is a 3x3 stride-1 convolution without max-pooling (for images up to
        64 pixels); ``"imagenet"`` the 7x7 stride-2 convolution plus max-pooling.
        ``"auto"`` picks ``"cifar"`` for images of at most 64 pixels per side.

    Warns
    -----
    UserWarning
        When ``input_shape`` looks channels-last, e.g. ``(32, 32, 3)``: it is read as 32
        channels of 32x3 pixels (not in JTT's identification fit, whose final fit warns).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        *,
        width: int = 64,
        stem: str = "auto",
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(_IMAGE_SHAPE.format(name="resnet18", shape=tuple(input_shape)))
        channels, height, width_px = input_shape
        layout = _channels_last("resnet18", tuple(int(s) for s in input_shape))
        if layout and not IDENTIFYING.get():
            warnings.warn(layout, UserWarning, stacklevel=2)
        if stem == "auto":
            stem = "cifar" if max(height, width_px) <= 64 else "imagenet"
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'auto', 'cifar' or 'imagenet'; got {stem!r}.")
        big = stem == "imagenet"  # 7x7 stride-2 convolution and max-pooling
        self.stem = nn.Sequential(
            nn.Conv2d(channels, width, 7 if big else 3, stride=2 if big else 1,
                      padding=3 if big else 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            *([nn.MaxPool2d(3, stride=2, padding=1)] if big else []),
        )
        blocks: list[nn.Module] = []
        n_in = width
        for stage, mult in enumerate((1, 2, 4, 8)):
            for block in range(2):  # the first block of a later stage halves the resolution
                blocks.append(_BasicBlock(n_in, width * mult, 2 if stage and not block else 1))
                n_in = width * mult
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(n_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))))


_BUILTIN: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": SmallCNN, "resnet18": ResNet18}


def build_module(
    module: str | type[nn.Module] | Callable[..., nn.Module] | nn.Module,
    *,
    input_shape: Sequence[int],
    n_classes: int,
    module_params: dict[str, Any] | None = None,
) -> nn.Module:
    """Instantiate the network requested by ``RESTClassifier(module=...)``.

    Parameters
    ----------
    module : str, nn.Module class, callable or nn.Module instance
        ``"auto"`` is an :class:`MLP` for flat samples and :class:`SmallCNN` for images
        (samples of 3 dimensions); ``"mlp"``, ``"cnn"`` and ``"resnet18"`` are the
        built-in networks (``"resnet18"`` is :class:`ResNet18`, from scratch, unless
        ``module_params`` has a ``"weights"`` entry). Any other name is a torchvision
        classification model (``"resnet50"``, with ``module_params={"weights": ...}``, see
        :func:`rest_fair.backbones.build_torchvision`), and ``"hf:<name or folder>"`` a
        Hugging Face sequence classifier for text (:func:`rest_fair.backbones.build_hf`).
        A class or callable is called with ``module_params`` plus ``input_shape`` and
        ``n_classes`` when its signature accepts them. An instance is deep-copied so that
        the user's object is never trained in place.
    input_shape : tuple of int
        Shape of one sample.
    n_classes : int
        Number of classes.
    module_params : dict or None
        Keyword arguments for the module.

    Returns
    -------
    nn.Module
    """
    params = dict(module_params or {})
    input_shape = tuple(int(s) for s in input_shape)
    if isinstance(module, str):
        name = ("cnn" if len(input_shape) == 3 else "mlp") if module == "auto" else module
        if is_backbone(name, params):
            return build_backbone(name, input_shape=input_shape, n_classes=n_classes,
                                  module_params=params)
        _check_builtin_params(name, params)
        return _BUILTIN[name](input_shape, n_classes, **params)
    if isinstance(module, nn.Module):
        if params:
            raise ValueError(_INSTANCE_PARAMS)
        return copy.deepcopy(module)
    if callable(module):
        try:
            accepted = inspect.signature(module).parameters
            has_var_kw = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
        except (TypeError, ValueError):
            accepted, has_var_kw = {}, False
        for key, value in (("input_shape", input_shape), ("n_classes", n_classes)):
            if key in accepted or has_var_kw:
                params.setdefault(key, value)
        built = module(**params)
        if not isinstance(built, nn.Module):
            raise TypeError(f"module factory {module!r} returned {type(built).__name__}, "
                            "not an nn.Module.")
        return built
    raise ValueError(_UNKNOWN_MODULE.format(names=MODULE_NAMES, value=module))


def _check_builtin_params(name: str, params: Mapping[str, Any]) -> None:
    """Refuse ``module_params`` that the built-in network ``name`` (or ``"auto"``, either of
    the two it may build) does not take, naming those it takes."""
    if "weights" in params:
        raise ValueError(_NO_PRETRAINED.format(name=name))
    classes = (MLP, SmallCNN) if name == "auto" else (_BUILTIN[name],)
    accepted = sorted({key for cls in classes for key, p in
                       inspect.signature(cls.__init__).parameters.items()
                       if p.kind is p.KEYWORD_ONLY})
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(_UNKNOWN_PARAMS.format(
            unknown=unknown, name=name, accepted=accepted,
            other=_TORCHVISION_RESNET18 if name == "resnet18" else ""))
    if "hidden_layer_sizes" in params:
        _check_hidden(params["hidden_layer_sizes"])


def check_module(module: Any, module_params: Mapping[str, Any] | None) -> None:
    """Check ``RESTClassifier(module=..., module_params=...)`` before any data is seen.

    A built-in name gets its ``module_params`` checked (names, and the hidden layer sizes
    of the MLP); a torchvision name its spelling, ``weights`` and the other options (on the
    model built on the meta device, downloading nothing); a Hugging Face name (``"hf:..."``)
    its options. Classes, callables and instances are checked when ``fit`` builds them.

    Raises
    ------
    ValueError
        Naming what is wrong (an unknown network or option, a bad value).
    FileNotFoundError
        For torchvision ``weights`` naming a file that does not exist.
    MissingDependencyError
        When the network needs a package that is not installed.
    """
    params = dict(module_params or {})
    if not isinstance(module, str):
        if isinstance(module, nn.Module) and params:
            raise ValueError(_INSTANCE_PARAMS)
        return
    if is_backbone(module, params):
        check_backbone(module, params)
    else:
        _check_builtin_params(module, params)
