"""The built-in networks of ``rest_fair.models``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from rest_fair import RESTClassifier, models
from rest_fair.models import ResNet18, SmallCNN


def test_channels_last_images_are_named_as_such():
    # (n, height, width, channels) read as channels-first: the cnn said the images were
    # too small ("use larger images") and resnet18 trained on 32 channels of 32x3 pixels
    layout = (r"reads samples of shape \(32, 32, 3\) as 32 channels of 32x3 pixels, but they "
              r"look channels-last \(height, width, channels\): pass X.transpose\(0, 3, 1, 2\)")
    with pytest.raises(ValueError, match="module='cnn' " + layout):
        SmallCNN((32, 32, 3), 2)
    X = np.zeros((4, 28, 28, 1), dtype=np.float32)
    with pytest.raises(ValueError, match=r"module='cnn' reads samples of shape \(28, 28, 1\)"):
        RESTClassifier(module="auto", max_epochs=1, device="cpu",
                       validation_fraction=0.0).fit(X, [0, 1] * 2)
    with pytest.warns(UserWarning, match="module='resnet18' " + layout):
        ResNet18((32, 32, 3), 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ResNet18((3, 32, 32), 2), ResNet18((4, 4, 3), 2), SmallCNN((1, 12, 12), 2)
    with pytest.raises(ValueError, match="too small for module='cnn'"):
        SmallCNN((3, 4, 4), 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_mlp_layers_are_initialised_as_nn_linear_initialises_itself(dtype):
    # the built-in MLP draws its layers through the compiled kernels: the same numbers from
    # the same global generator, which ends where nn.Linear leaves it
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        for n_in, n_out, seed in [(1, 1, 0), (784, 300, 1), (300, 10, 2), (2048, 623, 3),
                                  (0, 4, 4), (5, 0, 5)]:
            torch.manual_seed(seed)
            with warnings.catch_warnings():  # torch's: a layer without weights is not drawn
                warnings.simplefilter("ignore", UserWarning)
                ours, after = models._linear(n_in, n_out), torch.rand(2)
                torch.manual_seed(seed)
                theirs = nn.Linear(n_in, n_out)
            assert torch.equal(after, torch.rand(2))
            assert ours.weight.dtype == dtype and ours.weight.requires_grad
            assert torch.equal(ours.weight, theirs.weight)
            assert torch.equal(ours.bias, theirs.bias)
    finally:
        torch.set_default_dtype(previous)


def test_an_mlp_built_on_the_meta_device_allocates_nothing():
    # a model file's header is checked against a network built on the meta device
    with torch.device("meta"):
        net = models.MLP((10**6,), 3, hidden_layer_sizes=(10**6,))
    assert all(p.device.type == "meta" for p in net.parameters())
