"""Truly sparse training of linear layers (rest_fair.efficiency.sparse_training)."""

import copy

import pytest
import torch
from torch import nn

from rest_fair.efficiency.sparse_training import (
    SparseTrainableLinear,
    load_dense_weights,
    to_sparse_training,
)
from rest_fair.models import build_module
from rest_fair.sparse.csr_linear import CSRLinear


def _net_and_masks(density=0.05, seed=0):
    torch.manual_seed(seed)
    net = build_module("mlp", input_shape=(30,), n_classes=4,
                       module_params={"hidden_layer_sizes": (64, 48)})
    masks = {n: torch.rand(p.shape) < density for n, p in net.named_parameters()
             if n.endswith("weight")}
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n in masks:
                p.mul_(masks[n])
                p[masks[n] & (torch.rand(p.shape) < 0.2)] = 0.0  # regrown zeros stay active
    return net, masks


def test_gradients_equal_masked_dense_gradients():
    net, masks = _net_and_masks()
    sparse, converted = to_sparse_training(net, masks, density_threshold=0.1)
    assert converted == ["layers.1", "layers.3", "layers.5"]
    x = torch.randn(16, 30, requires_grad=True)
    y = torch.randint(0, 4, (16,))
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    grad_x = x.grad.clone()
    x.grad = None
    loss_s = nn.functional.cross_entropy(sparse(x), y)
    loss_s.backward()
    torch.testing.assert_close(loss_s, loss)
    torch.testing.assert_close(x.grad, grad_x)
    dense_mods, sparse_mods = dict(net.named_modules()), dict(sparse.named_modules())
    for name in converted:
        layer = sparse_mods[name]
        assert isinstance(layer, CSRLinear)
        assert layer.values.numel() == int(masks[f"{name}.weight"].sum())
        torch.testing.assert_close(
            layer.values.grad, dense_mods[name].weight.grad[masks[f"{name}.weight"]]
        )
        torch.testing.assert_close(layer.bias.grad, dense_mods[name].bias.grad)


def test_training_matches_masked_training_and_writes_back():
    net, masks = _net_and_masks(seed=1)
    sparse, _ = to_sparse_training(net, masks, density_threshold=0.1)
    opt_d = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt_s = torch.optim.SGD(sparse.parameters(), lr=0.1, momentum=0.9)
    params = dict(net.named_parameters())
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(8, 30, generator=g)
        y = torch.randint(0, 4, (8,), generator=g)
        for model, opt in ((net, opt_d), (sparse, opt_s)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        with torch.no_grad():  # masked training re-applies the masks after each step
            for name, mask in masks.items():
                params[name].mul_(mask)
    x = torch.randn(5, 30, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), net(x), rtol=1e-4, atol=1e-5)
    target = copy.deepcopy(net)
    with torch.no_grad():
        for p in target.parameters():
            p.fill_(7.0)
    assert {k: v.shape for k, v in sparse.state_dict().items()} == {
        k: v.shape for k, v in net.state_dict().items()}
    load_dense_weights(sparse, target)
    for key, value in net.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, rtol=1e-4, atol=1e-5)


def test_threshold_selects_layers_and_leading_dims():
    net, masks = _net_and_masks(density=0.3)
    _, converted = to_sparse_training(net, masks, density_threshold=0.05)
    assert converted == []
    with pytest.raises(ValueError, match="density_threshold"):
        to_sparse_training(net, masks, density_threshold=2.0)
    # densities 0.03 / 0.3 / 0.03: only the two sparse layers are converted
    torch.manual_seed(2)
    for name, density in zip(masks, (0.03, 0.3, 0.03), strict=True):
        masks[name] = torch.rand(masks[name].shape) < density
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name in masks:
                param.mul_(masks[name])
    sparse, converted = to_sparse_training(net, masks, density_threshold=0.1)
    assert converted == ["layers.1", "layers.5"]
    x = torch.randn(6, 30)
    torch.testing.assert_close(sparse(x), net(x), rtol=1e-5, atol=1e-6)
    layer, dense = sparse.get_submodule("layers.5"), net.get_submodule("layers.5")
    z = torch.randn(2, 5, dense.in_features)  # leading dimensions of a layer's input
    assert layer(z).shape == (2, 5, dense.out_features)
    torch.testing.assert_close(layer(z), dense(z), rtol=1e-5, atol=1e-6)


def test_sparse_trainable_linear_is_a_deprecated_csr_linear():
    with pytest.warns(FutureWarning, match="CSRLinear"):
        layer = SparseTrainableLinear(torch.randn(3, 4), torch.rand(3, 4) < 0.5, None)
    assert isinstance(layer, CSRLinear)
    z = torch.randn(2, 5, 4)
    torch.testing.assert_close(layer(z), z @ layer.dense_weight().t())


def test_soft_masks_and_swapped_arguments_are_refused():
    net, masks = _net_and_masks()
    soft = {k: v.float() * 0.01 for k, v in masks.items()}
    with pytest.raises(TypeError, match=r"must be a bool torch\.Tensor; got dtype torch\.float32"):
        to_sparse_training(net, soft, density_threshold=0.1)
    sparse, _ = to_sparse_training(net, masks, density_threshold=0.1)
    before = {k: v.clone() for k, v in sparse.state_dict().items()}
    with pytest.raises(TypeError, match="second argument holds CSR layers"):
        load_dense_weights(net, sparse)
    assert all(torch.equal(v, before[k]) for k, v in sparse.state_dict().items())


def test_a_network_that_is_one_linear_layer_is_converted():
    torch.manual_seed(0)
    layer = nn.Linear(40, 20)
    mask = torch.rand(20, 40) < 0.03
    with torch.no_grad():
        layer.weight.mul_(mask)
    sparse, converted = to_sparse_training(layer, {"weight": mask}, density_threshold=0.05)
    assert converted == [""] and isinstance(sparse, CSRLinear)
    x = torch.randn(8, 40)
    torch.testing.assert_close(sparse(x), layer(x), rtol=1e-5, atol=1e-6)


def test_a_transformer_layer_that_reads_its_linear_weights_runs_in_eval():
    # in evaluation mode nn.TransformerEncoderLayer reads linear1.weight itself (its fast path)
    torch.manual_seed(0)
    net = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    masks = {n: torch.rand(p.shape) < 0.03 for n, p in net.named_parameters()
             if n.startswith("linear") and n.endswith("weight")}
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    sparse, converted = to_sparse_training(net, masks)
    assert converted == ["linear1", "linear2"]
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        torch.testing.assert_close(sparse.eval()(x), net.eval()(x))
    layer = sparse.linear1
    torch.testing.assert_close(layer.weight, net.linear1.weight)
    nn.functional.linear(x, layer.weight).sum().backward()  # gradients reach the values
    assert layer.values.grad is not None and layer.values.grad.shape == layer.values.shape
