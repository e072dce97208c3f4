"""Real sparse inference (rest_fair.efficiency.export): equivalence with the masked model."""

import copy
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from rest_fair.efficiency import SparseLinearChain, export_sparse, module_nbytes
from rest_fair.efficiency.export import _FeatureMajorLinear
from rest_fair.models import build_module


def _random_masks(net, densities, generator):
    names = [n for n, p in net.named_parameters() if n.endswith("weight") and p.dim() >= 2]
    return {
        n: torch.rand(dict(net.named_parameters())[n].shape, generator=generator) < d
        for n, d in zip(names, densities, strict=True)
    }


def _masked_copy(net, masks):
    ref = copy.deepcopy(net).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    return ref


def _linears(export):
    return [m for m in export.modules() if isinstance(m, _FeatureMajorLinear)]


@pytest.mark.parametrize("density", [0.5, 0.2, 0.05, 0.01])
def test_mlp_predictions_match_masked_model(density):
    g = torch.Generator().manual_seed(0)
    net = build_module("mlp", input_shape=(1, 8, 8), n_classes=5,
                       module_params={"hidden_layer_sizes": (96, 64)})
    masks = _random_masks(net, [density, density, max(density, 0.3)], g)
    # Inactive weights of the given module are left non-zero: the export must mask them.
    export = export_sparse(net, masks)
    x = torch.randn(17, 1, 8, 8, generator=g)
    with torch.no_grad():
        expected = _masked_copy(net, masks)(x)
        got = export(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    chains = [m for m in export.modules() if isinstance(m, SparseLinearChain)]
    if density <= 0.2:
        assert len(chains) == 1  # one chain, transposed once at entry and exit
        assert _linears(export)[0].sparse
        assert module_nbytes(export) < module_nbytes(net)
    else:
        assert chains == []  # the denser first layer stays an nn.Linear


def test_regrown_zero_weights_and_dead_neurons():
    g = torch.Generator().manual_seed(1)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(30, 40), nn.Tanh(), nn.Linear(40, 20), nn.GELU(),
        nn.Dropout(0.5), nn.Linear(20, 6),
    )
    masks = _random_masks(net, [0.7, 0.7, 0.7], g)  # no empty row or column by chance
    masks["1.weight"][:7] = False  # dead rows: act(bias) != 0 must go into the next bias
    masks["3.weight"][:, 30:] = False  # neurons 30..39 of layer 1 are never read
    masks["3.weight"][5] = False  # a dead row in the middle layer
    masks["6.weight"][:, :4] = False  # neurons 0..3 of layer 3 never read
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name in masks:
                # regrown weights: active but exactly zero
                p[masks[name] & (torch.rand(p.shape, generator=g) < 0.3)] = 0.0
            if name.endswith("bias"):
                p.add_(0.5)
    export = export_sparse(net, masks, density_threshold=1.0)  # every layer CSR
    lin = _linears(export)
    assert all(layer.sparse for layer in lin)
    assert [layer.out_features for layer in lin] == [40 - 7 - 10, 20 - 1 - 4, 6]
    # stored entries come from the mask: regrown zeros are kept
    assert lin[0].nnz == int(masks["1.weight"][7:30].sum())
    assert lin[0].col_indices.dtype == torch.int32
    assert lin[0].crow_indices.dtype == torch.int32
    x = torch.randn(9, 30, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(export(x), _masked_copy(net, masks)(x), rtol=1e-5, atol=1e-5)


def test_entirely_empty_layer_and_no_bias():
    net = nn.Sequential(nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False))
    masks = {"0.weight": torch.zeros(4, 5, dtype=torch.bool),
             "2.weight": torch.rand(3, 4) < 0.5}
    export = export_sparse(net, masks)
    x = torch.randn(4, 5)
    with torch.no_grad():
        torch.testing.assert_close(export(x), _masked_copy(net, masks)(x))


def test_extra_leading_dimensions_and_custom_module():
    g = torch.Generator().manual_seed(2)
    net = build_module("cnn", input_shape=(3, 16, 16), n_classes=4,
                       module_params={"widths": (8, 16)})
    names = [n for n, p in net.named_parameters() if p.dim() >= 2]
    masks = {n: torch.rand(dict(net.named_parameters())[n].shape, generator=g) < 0.1
             for n in names}
    export = export_sparse(net, masks)
    assert isinstance(export.module.classifier, SparseLinearChain)
    assert isinstance(export.module.features[0], nn.Conv2d)  # convolutions stay dense
    x = torch.randn(3, 3, 16, 16, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(export(x), _masked_copy(net, masks)(x), rtol=1e-5, atol=1e-5)
    seq = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    smask = {"0.weight": torch.rand(8, 6, generator=g) < 0.2}
    z = torch.randn(2, 5, 6, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(export_sparse(seq, smask)(z), _masked_copy(seq, smask)(z))


def test_threads_copies_and_original_untouched():
    g = torch.Generator().manual_seed(3)
    net = build_module("mlp", input_shape=(12,), n_classes=3,
                       module_params={"hidden_layer_sizes": (16,)})
    before = {k: v.clone() for k, v in net.state_dict().items()}
    masks = _random_masks(net, [0.1, 0.1], g)
    export = export_sparse(net, masks, num_threads=1)
    threads = torch.get_num_threads()
    x = torch.randn(5, 12, generator=g)
    with torch.no_grad():
        out = export(x)
        assert torch.get_num_threads() == threads
        torch.testing.assert_close(copy.deepcopy(export)(x), out)
        torch.testing.assert_close(pickle.loads(pickle.dumps(export))(x), out)
        torch.testing.assert_close(export.to(torch.float64)(x.double()).float(), out)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


def test_errors():
    net = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="density_threshold"):
        export_sparse(net, {}, density_threshold=1.5)
    allowed = r"num_threads must be None or an integer in \[1, 1024\]"
    for bad in (0, 2.0, True, 10**6):  # a million threads crashed torch's OpenMP runtime
        with pytest.raises(ValueError, match=allowed):
            export_sparse(net, {}, num_threads=bad)
    assert export_sparse(net, {}, num_threads=1024).num_threads == 1024
    with pytest.raises(KeyError, match="not a parameter"):
        export_sparse(net, {"x.weight": torch.ones(2, 3, dtype=torch.bool)})
    with pytest.raises(TypeError, match="bool"):
        export_sparse(net, {"0.weight": torch.ones(2, 3)})
    with pytest.raises(TypeError, match=r"a numpy.ndarray .*use torch.as_tensor"):
        export_sparse(net, {"0.weight": torch.ones(2, 3, dtype=torch.bool).numpy()})
    with pytest.raises(TypeError, match="masks must be a mapping"):
        export_sparse(net, [("0.weight", torch.ones(2, 3, dtype=torch.bool))])
    # any real number is a threshold
    export_sparse(net, {"0.weight": torch.ones(2, 3, dtype=torch.bool)},
                  density_threshold=np.float32(0.5))


def test_module_that_is_a_single_linear():
    lin = nn.Linear(10, 4)
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, :2] = True
    export = export_sparse(lin, {"weight": mask})
    assert isinstance(export.module, SparseLinearChain)
    x = torch.randn(3, 10)
    with torch.no_grad():
        torch.testing.assert_close(export(x), nn.functional.linear(x, lin.weight * mask, lin.bias))


def test_flat_plan_equals_module_by_module_forward():
    g = torch.Generator().manual_seed(3)
    net = build_module("mlp", input_shape=(1, 8, 8), n_classes=5,
                       module_params={"hidden_layer_sizes": (96, 64)})
    masks = _random_masks(net, [0.05, 0.05, 0.5], g)
    export = export_sparse(net, masks)
    x = torch.randn(9, 1, 8, 8, generator=g)
    with torch.no_grad():
        by_modules = export.module(x)
        got = export(x)
        assert export._plan is not None  # the MLP ran as a flat plan
        torch.testing.assert_close(got, by_modules, rtol=0, atol=0)
        torch.testing.assert_close(export(x[:1]), by_modules[:1], rtol=1e-6, atol=1e-6)
        # in-place weight changes are seen (the plan's CSR tensors alias the buffers)
        for layer in _linears(export):
            layer._buffers["values" if layer.sparse else "weight"].mul_(2.0)
        torch.testing.assert_close(export(x), export.module(x), rtol=0, atol=0)
        # casting rebuilds the plan; pickling drops it
        double = copy.deepcopy(export).double()
        assert double._plan is None
        torch.testing.assert_close(double(x.double()), double.module(x.double()))
        again = pickle.loads(pickle.dumps(export))
        torch.testing.assert_close(again(x), export(x))


def test_other_networks_run_module_by_module():
    g = torch.Generator().manual_seed(4)
    net = build_module("cnn", input_shape=(3, 8, 8), n_classes=3,
                       module_params={"widths": (4, 8, 16)})
    masks = _random_masks(net, [0.5, 0.5, 0.5, 0.1], g)
    export = export_sparse(net, masks, density_threshold=0.2)
    x = torch.randn(2, 3, 8, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(export(x), _masked_copy(net, masks)(x), rtol=1e-5,
                                   atol=1e-5)
    assert export._planned and export._plan is None
    seq = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 2))
    smask = {"0.weight": torch.rand(5, 6, generator=g) < 0.1,
             "3.weight": torch.rand(2, 5, generator=g) < 0.1}
    export = export_sparse(seq, smask)
    z = torch.randn(4, 6, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(export(z), _masked_copy(seq, smask)(z))


# ------------------------------------------------------- chains on the compiled kernels
@pytest.fixture(params=["kernels", "torch"])
def chain_path(request, monkeypatch):
    """Export chains on the compiled kernels, then on torch's sparse products."""
    from rest_fair.sparse import kernels

    if request.param == "torch":
        monkeypatch.setenv(kernels.ENV_SWITCH, "0")
    elif not kernels.available():
        pytest.skip(f"no compiled kernels: {kernels.unavailable_reason()}")
    return request.param


@pytest.mark.parametrize("batch", [1, 7, 8, 16, 17, 64, 65, 200])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chain_kernels_match_masked_model(chain_path, batch, dtype):
    from rest_fair.efficiency import export as export_mod

    g = torch.Generator().manual_seed(batch)
    # a sparse layer, a dense layer with many outputs, a sparse layer without bias, a dense
    # head; GELU and Tanh between them (ReLU is fused into the store), dead neurons
    net = nn.Sequential(
        nn.Linear(40, 96), nn.ReLU(), nn.Linear(96, 80), nn.GELU(),
        nn.Linear(80, 70, bias=False), nn.Tanh(), nn.ReLU(), nn.Linear(70, 6),
    ).to(dtype)
    masks = {"0.weight": torch.rand(96, 40, generator=g) < 0.1,
             "2.weight": torch.rand(80, 96, generator=g) < 0.6,
             "4.weight": torch.rand(70, 80, generator=g) < 0.05,
             "7.weight": torch.rand(6, 70, generator=g) < 0.7}
    masks["0.weight"][5] = False
    export = export_sparse(net, masks)
    chain = export.module[0]
    kernel_ops = export_mod._kernel_chain_plan(chain)
    assert (kernel_ops is not None) == (chain_path == "kernels")
    if kernel_ops is not None:
        kinds = [op for op, _, _ in kernel_ops[1:]]
        assert kinds.count(export_mod._K_CSR) == 3 and kinds.count(export_mod._K_DENSE) == 1
    x = torch.randn(batch, 3, 40, generator=g, dtype=dtype)  # extra leading dimension
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0, "atol": 1e-12}
    with torch.no_grad():
        expected = _masked_copy(net, masks)(x)
        torch.testing.assert_close(export(x), expected, **tol)
        torch.testing.assert_close(export.module(x), expected, **tol)
        # in-place weight changes are seen on either path
        for layer in _linears(export):
            layer._buffers["values" if layer.sparse else "weight"].mul_(0.5)
        torch.testing.assert_close(export(x), export.module(x), rtol=0, atol=0)


def test_chain_kernels_leave_gradients_to_torch(chain_path):
    g = torch.Generator().manual_seed(0)
    net = build_module("mlp", input_shape=(30,), n_classes=4,
                       module_params={"hidden_layer_sizes": (64, 64)})
    masks = _random_masks(net, [0.1, 0.1, 0.5], g)
    export = export_sparse(net, masks)
    x = torch.randn(32, 30, generator=g, requires_grad=True)
    export(x).sum().backward()  # an input that needs a gradient goes through torch
    x_ref = x.detach().clone().requires_grad_()
    _masked_copy(net, masks)(x_ref).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


def test_an_input_of_the_wrong_width_is_named(chain_path):
    torch.manual_seed(0)
    net = build_module("mlp", input_shape=(10,), n_classes=2,
                       module_params={"hidden_layer_sizes": (32,)})
    masks = _random_masks(net, [0.1, 1.0], torch.Generator().manual_seed(0))
    export = export_sparse(net, masks)
    with pytest.raises(ValueError, match=r"inputs of shape \(\.\.\., 10\).*shape \(20, 20\)"):
        export(torch.zeros(20, 20))
    assert export(torch.zeros(20, 10)).shape == (20, 2)


class _TiedHead(nn.Module):
    """Token embeddings and an output layer that share one weight, as language models do."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(50, 16)
        self.hidden = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.tokens.weight

    def forward(self, ids):
        return self.head(torch.relu(self.hidden(self.tokens(ids))))


def test_a_head_tied_to_an_embedding_is_exported_with_the_embedding_mask():
    net = _TiedHead()
    mask = torch.rand(50, 16, generator=torch.Generator().manual_seed(0)) < 0.1
    exported = export_sparse(net, {"tokens.weight": mask})
    head = exported.module.head.steps[0]
    assert head.sparse and head.nnz == int(mask.sum())
    ids = torch.randint(0, 50, (4, 7))
    with torch.no_grad():
        net.tokens.weight.mul_(mask)
    torch.testing.assert_close(exported(ids), net.eval()(ids))


def _small_export(density_threshold=0.2):
    torch.manual_seed(0)
    net = build_module("mlp", input_shape=(10,), n_classes=3,
                       module_params={"hidden_layer_sizes": (32, 32)})
    masks = _random_masks(net, [0.1, 0.1, 1.0], torch.Generator().manual_seed(0))
    return net, masks, export_sparse(net, masks, density_threshold=density_threshold)


def test_tracing_scripting_and_export_are_refused_with_the_remedy(chain_path):
    net, masks, export = _small_export()
    x = torch.randn(16, 10)
    # a traced copy of the kernel path recorded none of its products and returned garbage
    with pytest.raises(RuntimeError, match=r"torch\.jit\.trace .*density_threshold=0\.0"):
        torch.jit.trace(export, x)
    with pytest.raises(RuntimeError, match=r"torch\.export .*density_threshold=0\.0"):
        torch.export.export(export, (x,))
    with pytest.raises(RuntimeError, match=r"torch\.jit\.script cannot compile"):
        torch.jit.script(export)
    with pytest.raises(RuntimeError, match=r"torch\.jit\.script cannot compile"):
        torch.jit.script(export.module)  # the chain inside refuses too
    # the remedy the message names: a dense masked copy records and computes the same
    dense = export_sparse(net, masks, density_threshold=0.0)
    traced = torch.jit.trace(dense, x)
    z = torch.randn(5, 10)
    with torch.no_grad():
        torch.testing.assert_close(traced(z), export(z), rtol=1e-5, atol=1e-5)
        exported = torch.export.export(dense, (x,)).module()
        torch.testing.assert_close(exported(x), export(x), rtol=1e-5, atol=1e-5)


def test_inputs_and_casts_the_sparse_products_cannot_take_are_named(chain_path):
    _, _, export = _small_export()
    x = torch.randn(16, 10)
    with pytest.raises(TypeError, match=r"compute in torch\.float32; got a torch\.float64 "
                                        r"input.*\.to\(torch\.float64\)"):
        export(x.double())
    for dtype in (torch.uint8, torch.bfloat16):  # no network cast that would compute them
        with pytest.raises(TypeError, match=r"got a torch\.\w+ input\. Convert the input "
                                            r"\(x\.to\(torch\.float32\)\)\.$"):
            export(x.to(dtype))
    half = copy.deepcopy(export).half()
    with pytest.raises(TypeError, match=r"CPU in float32 or float64 only.*torch\.float16"):
        half(x.half())
    with torch.no_grad():  # the casts the message names work
        torch.testing.assert_close(copy.deepcopy(export).double()(x.double()).float(),
                                   export(x), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
@pytest.mark.parametrize("fast_path", [True, False])
def test_a_transformer_layer_that_reads_its_linear_weights_runs(fast_path):
    # in evaluation mode nn.TransformerEncoderLayer reads linear1.weight and linear2.bias
    # itself (its fast path): a layer replaced on its own keeps them, dense
    torch.manual_seed(0)
    net = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 2)
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) < 0.1
             for n, p in net.named_parameters() if ".linear" in n and n.endswith("weight")}
    export = export_sparse(net, masks)
    layer = export.module.layers[0].linear1
    assert isinstance(layer, SparseLinearChain)
    torch.testing.assert_close(layer.weight, net.layers[0].linear1.weight * masks[
        "layers.0.linear1.weight"])
    torch.testing.assert_close(layer.bias, net.layers[0].linear1.bias)
    x = torch.randn(3, 5, 16, generator=g)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, 3:] = True
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(fast_path)
    try:
        with torch.no_grad():
            torch.testing.assert_close(export(x), _masked_copy(net, masks)(x))
            # further arguments reach the network
            torch.testing.assert_close(export(x, src_key_padding_mask=padding),
                                       _masked_copy(net, masks)(x, src_key_padding_mask=padding))
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
    chain = export_sparse(nn.Sequential(nn.Linear(10, 10), nn.ReLU()),
                          {"0.weight": torch.eye(10, dtype=torch.bool)}).module[0]
    with pytest.raises(AttributeError):
        chain.weight  # noqa: B018 -- a chain of several steps stands for no one layer


def test_a_sequential_subclass_with_its_own_forward_keeps_its_modules():
    class Residual(nn.Sequential):
        def forward(self, x):
            return self[2](self[1](self[0](x))) + x

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(),
                        Residual(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)))
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) < 0.1
             for n, p in net.named_parameters() if n.endswith("weight")}
    export = export_sparse(net, masks)
    residual = export.module[-1]
    assert len(residual) == 3  # each sparse linear replaced on its own
    assert isinstance(residual[0], SparseLinearChain)
    x = torch.randn(9, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(export(x), _masked_copy(net, masks)(x))


def test_a_state_dict_assigned_after_a_forward_is_used(chain_path):
    net, masks, export = _small_export()
    other = copy.deepcopy(net)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(3.0)
    want = export_sparse(other, masks)
    for x in (torch.randn(16, 10), torch.randn(2, 10)):  # both paths of a chain
        with torch.no_grad():
            export(x)  # the plan is built and points to the buffers
            export.load_state_dict(want.state_dict(), assign=True)
            torch.testing.assert_close(export(x), want(x))


def test_under_autocast_the_sparse_layers_compute_in_their_dtype(chain_path):
    _, _, export = _small_export()
    for batch in (3, 16):  # both paths of a chain
        x = torch.randn(batch, 10)
        with torch.no_grad():
            want = export(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = export(x)
        torch.testing.assert_close(got, want)
    # the chain after a convolution that autocast computes in bfloat16 gets its output
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(16, 32), nn.ReLU(),
                        nn.Linear(32, 3))
    masks = {"2.weight": torch.rand(32, 16) < 0.1, "4.weight": torch.rand(3, 32) < 0.1}
    export = export_sparse(net, masks)
    assert isinstance(export.module[2], SparseLinearChain)
    x = torch.randn(9, 2, 4, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = export(x)
    with torch.no_grad():
        torch.testing.assert_close(got, _masked_copy(net, masks)(x), rtol=0.05, atol=0.05)
