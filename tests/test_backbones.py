"""torchvision backbones: local and cached weights, checked keys, head replacement,
magnitude masks on pretrained weights, fitting on a synthetic WILDS layout, offline errors."""

from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests._support.backbones import save_torchvision_state_dict

tv = pytest.importorskip("torchvision", reason="torchvision backbones need rest-fair[vision]")

from rest_fair import RESTClassifier, backbones  # noqa: E402
from rest_fair.backbones import build_torchvision, load_state_dict_file  # noqa: E402
from rest_fair.models import ResNet18, build_module, check_module  # noqa: E402
from rest_fair.sparse import (  # noqa: E402
    MaskSet,
    active_counts,
    erk_densities,
    maskable_parameters,
    resolve_dense_layers,
    unmasked_weights,
)

UNREACHABLE_PROXY = "http://127.0.0.1:9"  # the discard port: connections are refused


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    return save_torchvision_state_dict("resnet50", tmp_path_factory.mktemp("ckpt") / "r50.pt")


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    return save_torchvision_state_dict("resnet18", tmp_path_factory.mktemp("ckpt") / "r18.pt")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch.hub cache and every HTTP(S) request sent to a closed port."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, UNREACHABLE_PROXY)
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "torch_home"


def test_resnet50_from_a_local_state_dict(resnet50_file):
    saved = torch.load(resnet50_file, weights_only=True)
    model = build_module("resnet50", input_shape=(3, 32, 32), n_classes=3,
                         module_params={"weights": str(resnet50_file)})
    assert isinstance(model, tv.models.ResNet)
    assert model.fc.out_features == 3 and model.fc.in_features == 2048
    state = model.state_dict()
    for key, value in saved.items():
        if key.startswith("fc."):
            continue
        assert torch.equal(state[key], value), key
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_magnitude_mask_keeps_the_largest_pretrained_weights(resnet50_file):
    model = build_module("resnet50", input_shape=(3, 32, 32), n_classes=2,
                         module_params={"weights": resnet50_file})
    masks = MaskSet.from_module(model, density=0.1, sparse_init="magnitude",
                                dense_layers=("first", "head"))
    assert "conv1.weight" not in masks.names and "fc.weight" not in masks.names
    assert not any("bn" in n or n.endswith("bias") for n in masks.names)
    assert len(masks.names) == len(list(maskable_parameters(model))) - 2
    params = dict(model.named_parameters())
    shapes = {n: tuple(params[n].shape) for n in masks.names}
    counts = active_counts(shapes, erk_densities(shapes, 0.1))
    assert masks.n_active() == counts
    n_sparse = 0
    for name in masks.names:
        w = params[name].detach().abs().reshape(-1)
        keep = masks.mask(name).reshape(-1)
        # exactly counts[name] weights kept, and none dropped is larger than one kept
        if (~keep).any():
            n_sparse += 1
            assert w[keep].min() >= w[~keep].max(), name
    assert n_sparse > 40  # all but ERK's few small layers made dense
    total = sum(params[n].numel() for n in masks.names)
    assert sum(masks.n_active().values()) == pytest.approx(0.1 * total, rel=1e-3)


def test_fit_resnet50_from_pretrained_on_synthetic_waterbirds(resnet50_file, tmp_path):
    wilds = pytest.importorskip("wilds", reason="needs rest-fair[wilds]")
    assert wilds
    from rest_fair.wilds import (
        load_wilds,
        make_synthetic_layout,
        read_predictions,
        split_wilds,
        wilds_eval,
        write_submission,
    )

    counts = {"train": (4, 2, 2, 4), "val": (2, 2, 2, 2), "test": (2, 2, 2, 2)}
    make_synthetic_layout("waterbirds", tmp_path, group_counts=counts, image_size=16)
    dataset = load_wilds("waterbirds", tmp_path)
    parts = split_wilds(dataset, image_size=32)
    train, val, test = parts["train"], parts["val"], parts["test"]
    clf = RESTClassifier(module="resnet50", module_params={"weights": resnet50_file},
                         sparse_init="magnitude", dense_layers=("first", "head"),
                         sparsity=0.9, max_epochs=1, batch_size=12, lr=1e-3,
                         device="cpu", random_state=0)
    clf.fit(train.X, train.y, groups=train.groups, validation_data=val.validation_data())
    assert clf.n_train_steps_ == 1
    assert "conv1.weight" not in clf.masks_ and "layer1.0.conv1.weight" in clf.masks_
    predictions = {"val": clf.predict(val.X), "test": clf.predict(test.X)}
    assert set(np.unique(predictions["test"])) <= {0, 1}
    results = wilds_eval(test, predictions["test"])
    assert 0.0 <= results["acc_wg"] <= 1.0 and "adj_acc_avg" in results
    files = write_submission(predictions, dataset=dataset, out_dir=tmp_path / "sub", seed=0)
    for path in files:
        split = "val" if "split:val" in path.name else "test"
        np.testing.assert_array_equal(read_predictions(path), predictions[split])


def test_head_of_the_checkpoint_is_kept_when_it_fits(tmp_path):
    path = save_torchvision_state_dict("resnet18", tmp_path / "r18_5.pt", num_classes=5)
    saved = torch.load(path, weights_only=True)
    same = build_torchvision("resnet18", n_classes=5, weights=path)
    assert torch.equal(same.fc.weight, saved["fc.weight"])
    other = build_torchvision("resnet18", n_classes=2, weights=path)
    assert other.fc.weight.shape == (2, 512)
    assert torch.equal(other.layer4[1].conv2.weight, saved["layer4.1.conv2.weight"])


def test_wrapped_checkpoints_and_safetensors_are_read(resnet18_file, tmp_path):
    state = torch.load(resnet18_file, weights_only=True)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    assert set(load_state_dict_file(tmp_path / "ckpt.pth")) == set(state)
    optimizer_state = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    torch.save({"model": state, "optimizer": optimizer_state, "epoch": 3, "best": 0.5},
               tmp_path / "full.pth")  # a training checkpoint with four entries
    assert set(load_state_dict_file(tmp_path / "full.pth")) == set(state)
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer_state_dict": optimizer_state,
                "loss": 0.5}, tmp_path / "tutorial.pth")  # PyTorch's tutorial's checkpoint
    assert set(load_state_dict_file(tmp_path / "tutorial.pth")) == set(state)
    torch.save({"epoch": 3, "net": state}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other.pth does not hold a state dict .* got dict "
                       r"with keys \['epoch', 'net'\]"):
        load_state_dict_file(tmp_path / "other.pth")
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "w.safetensors"))
    model = build_torchvision("resnet18", n_classes=2, weights=tmp_path / "w.safetensors")
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_state_dict_problems_name_the_keys(resnet18_file, tmp_path):
    state = torch.load(resnet18_file, weights_only=True)
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as info:
        build_torchvision("resnet18", n_classes=2, weights=tmp_path / "bad.pt")
    message = str(info.value)
    assert "missing keys: layer1.0.conv1.weight" in message
    assert "unexpected keys: extra.weight" in message
    assert "wrong shapes: conv1.weight (64, 3, 3, 3) != (64, 3, 7, 7)" in message
    with pytest.raises(ValueError, match="does not fit torchvision's resnet50"):
        build_torchvision("resnet50", n_classes=2, weights=resnet18_file)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        build_torchvision("resnet18", n_classes=2, weights=tmp_path / "list.pt")


def test_a_state_dict_without_batch_norm_counters_is_read(resnet18_file, tmp_path):
    # as files saved before batch norm counted its batches (PyTorch 0.4.1) are
    state = {key: value for key, value in torch.load(resnet18_file, weights_only=True).items()
             if not key.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    model = build_torchvision("resnet18", n_classes=2, weights=tmp_path / "old.pt")
    assert torch.equal(model.bn1.running_var, state["bn1.running_var"])
    assert model.bn1.num_batches_tracked == 0


def test_auxiliary_classifiers_may_be_absent_from_a_state_dict_or_present(tmp_path):
    first = build_torchvision("googlenet", n_classes=2, init_weights=False)
    assert first.aux1 is None  # dropped: a fitted GoogLeNet's state dict has no aux1.*
    torch.save(first.state_dict(), tmp_path / "fitted.pt")
    again = build_torchvision("googlenet", n_classes=2, init_weights=False,
                              weights=tmp_path / "fitted.pt")
    assert torch.equal(again.fc.weight, first.fc.weight) and again.aux1 is None
    torch.save(tv.models.googlenet(init_weights=False).state_dict(), tmp_path / "aux.pt")
    without = build_torchvision("googlenet", n_classes=2, init_weights=False,
                                aux_logits=False, weights=tmp_path / "aux.pt")
    assert without.aux1 is None  # the file's aux1.* and aux2.* were not "unexpected keys"


def test_a_state_dict_of_a_wrapped_model_is_read_without_its_prefix(resnet18_file, tmp_path):
    state = torch.load(resnet18_file, weights_only=True)
    for prefix in ("module.", "_orig_mod.", "module._orig_mod."):  # DDP, torch.compile
        path = tmp_path / f"{prefix}pt"
        torch.save({prefix + key: value for key, value in state.items()}, path)
        model = build_torchvision("resnet18", n_classes=2, weights=path)
        assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    partly = {("module." + key if key.startswith("layer1.") else key): value
              for key, value in state.items()}
    torch.save(partly, tmp_path / "partly.pt")
    with pytest.raises(ValueError, match=r"missing keys: layer1\.0\.bn1\.bias.*unexpected "
                       r"keys: module\.layer1\.0\.bn1\.bias") as info:
        build_torchvision("resnet18", n_classes=2, weights=tmp_path / "partly.pt")
    assert "prefix" not in str(info.value)
    del state["conv1.weight"]
    torch.save({"module." + key: value for key, value in state.items()}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"missing keys: conv1\.weight \(keys read without "
                       r"the prefix 'module\.' every key has\)"):
        build_torchvision("resnet18", n_classes=2, weights=tmp_path / "bad.pt")


def test_a_lightning_checkpoint_is_read_without_its_attribute_prefix(resnet18_file, tmp_path):
    state = torch.load(resnet18_file, weights_only=True)
    for prefix in ("model.", "net.", "model._orig_mod."):  # a LightningModule's self.model
        path = tmp_path / f"{prefix}ckpt"
        torch.save({"epoch": 2, "global_step": 10, "pytorch-lightning_version": "2.4.0",
                    "state_dict": {prefix + key: value for key, value in state.items()}}, path)
        model = build_torchvision("resnet18", n_classes=2, weights=path)
        assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    resnet34 = torch.load(save_torchvision_state_dict("resnet34", tmp_path / "r34.pt"),
                          weights_only=True)
    torch.save({"state_dict": {"model." + key: value for key, value in resnet34.items()}},
               tmp_path / "r34.ckpt")  # another architecture: its keys named without prefix
    with pytest.raises(ValueError, match=r"unexpected keys: layer1\.2\.bn1\.bias.*\(keys read "
                       r"without the prefix 'model\.' every key has\)"):
        build_torchvision("resnet18", n_classes=2, weights=tmp_path / "r34.ckpt")
    other = {"model." + key: value for key, value in
             tv.models.squeezenet1_1().state_dict().items()}
    torch.save({"state_dict": other}, tmp_path / "squeeze.ckpt")  # no key fits either way
    with pytest.raises(ValueError, match=r"missing keys: bn1\.bias.*unexpected keys: "
                       r"model\.classifier\.1\.bias") as info:
        build_torchvision("resnet18", n_classes=2, weights=tmp_path / "squeeze.ckpt")
    assert "prefix" not in str(info.value)


@pytest.mark.parametrize("name, content", [
    ("garbage.pt", b"not a torch file"),
    ("empty.pt", b""),
    ("cut.pt", None),  # the first half of a real file
    ("pickled_model.pt", "module"),
    ("garbage.safetensors", b"\x10" + bytes(10)),
])
def test_an_unreadable_state_dict_file_is_named(resnet18_file, tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        data = resnet18_file.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "module":
        torch.save(nn.Linear(2, 2), path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="cannot be read as a state dict") as info:
        build_torchvision("resnet18", n_classes=2, weights=path)
    assert str(path) in str(info.value) and "weights_only=False" not in str(info.value)


def test_a_checkpoint_holding_other_objects_names_their_type(resnet18_file, tmp_path):
    state = torch.load(resnet18_file, weights_only=True)
    torch.save({"state_dict": {"model." + key: value for key, value in state.items()},
                "hyper_parameters": {"data_dir": Path("/data")}}, tmp_path / "hp.ckpt")
    with pytest.raises(ValueError, match=r"hp\.ckpt cannot be read as a state dict: it holds a "
                       r"pickled pathlib\.\w*Path .* Save the model's state dict alone") as info:
        build_torchvision("resnet18", n_classes=2, weights=tmp_path / "hp.ckpt")
    assert "weights_only=False" not in str(info.value)


def test_a_folder_as_weights_is_named(tmp_path):
    # it was reported as "looks like a file path, but there is no such file"
    with pytest.raises(IsADirectoryError, match="is a folder; give the path of a state-dict"):
        build_torchvision("resnet18", n_classes=2, weights=tmp_path)


def test_a_damaged_cached_weights_file_is_named(offline):
    member = tv.models.ResNet18_Weights.IMAGENET1K_V1
    cache = offline / "hub" / "checkpoints" / os.path.basename(member.url)
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"garbage\n")  # e.g. an interrupted copy
    with pytest.raises(OSError, match="damaged or incomplete") as info:
        build_module("resnet18", input_shape=(3, 32, 32), n_classes=2,
                     module_params={"weights": "DEFAULT"})
    assert str(cache) in str(info.value) and member.url in str(info.value)


def test_builtin_resnet18_stays_the_default_without_weights():
    assert isinstance(build_module("resnet18", input_shape=(3, 16, 16), n_classes=2), ResNet18)
    torchvision_one = build_module("resnet18", input_shape=(3, 16, 16), n_classes=2,
                                   module_params={"weights": None})
    assert isinstance(torchvision_one, tv.models.ResNet)
    with pytest.raises(ValueError, match="built-in network without pretrained weights"):
        build_module("mlp", input_shape=(4,), n_classes=2, module_params={"weights": "x.pt"})
    with pytest.raises(ValueError, match=r"\['pretrained'\] are not options of "
                       r"module='resnet18'; it takes \['stem', 'width'\] \(a 'weights' entry "
                       r"selects torchvision's ResNet-18 instead, with its own options: "
                       r"'DEFAULT' for its pretrained weights, None for a random start\)\.$"):
        check_module("resnet18", {"pretrained": True})


def test_every_weight_of_a_vit_is_masked():
    vit = tv.models.VisionTransformer(image_size=8, patch_size=4, num_layers=2, num_heads=2,
                                      hidden_dim=8, mlp_dim=16, num_classes=3)
    names = [name for name, _ in maskable_parameters(vit)]
    assert "encoder.layers.encoder_layer_1.self_attention.in_proj_weight" in names
    assert unmasked_weights(vit) == []  # the class token and position embedding are no weights
    assert resolve_dense_layers(vit, ["first", "head"]) == ["conv_proj.weight",
                                                             "heads.head.weight"]
    masks = MaskSet.from_module(vit, density=0.1, generator=torch.Generator().manual_seed(0))
    shapes = {name: tuple(p.shape) for name, p in maskable_parameters(vit)}
    assert masks.n_active() == active_counts(shapes, erk_densities(shapes, 0.1))


def test_other_torchvision_heads_are_replaced():
    vit = build_torchvision("vit_b_32", n_classes=3, image_size=32)  # kwargs reach the builder
    assert vit.heads.head.out_features == 3
    squeeze = build_torchvision("squeezenet1_1", n_classes=4)
    assert squeeze.classifier[1].out_channels == 4
    assert squeeze(torch.zeros(1, 3, 64, 64)).shape == (1, 4)
    inception = build_torchvision("googlenet", n_classes=2, init_weights=False)
    inception.train()
    assert inception(torch.zeros(2, 3, 64, 64)).shape == (2, 2)  # no auxiliary outputs


def test_a_vision_transformer_refuses_images_of_another_size_when_built():
    X, y = np.zeros((4, 3, 32, 32), dtype=np.float32), np.array([0, 1, 0, 1])
    clf = RESTClassifier(module="vit_b_32", module_params={"weights": None}, max_epochs=1,
                         device="cpu", validation_fraction=0)
    with pytest.raises(ValueError, match=r"vit_b_32 takes images of 224x224 pixels \(its "
                       r"image_size\); got samples of shape \(3, 32, 32\)\. Resize the images "
                       r"to 224x224 .*, or build it for them with module_params="
                       r"\{'image_size': 32\}"):
        clf.fit(X, y)  # torch's "Wrong image height!" came at the first forward pass
    with pytest.raises(ValueError, match=r"multiple of its patch size 32"):
        build_module("vit_b_32", input_shape=(3, 48, 48), n_classes=2,
                     module_params={"image_size": 32})
    vit = tv.models.VisionTransformer(image_size=8, patch_size=4, num_layers=1, num_heads=1,
                                      hidden_dim=4, mlp_dim=4)
    with pytest.raises(ValueError, match="pretrained position embeddings are those of this"):
        backbones._check_image_size(vit, "vit", (3, 4, 4), pretrained=True)
    backbones._check_image_size(vit, "vit", (3, 8, 8), pretrained=True)


@pytest.mark.parametrize(("module", "params", "side", "match"), [
    ("maxvit_t", {}, 64, r"maxvit_t takes images of 224x224 pixels \(its input_size\); got "
     r"samples of shape \(3, 64, 64\)\. Resize the images to 224x224 .*, or to a size it can "
     r"be built for \(its partition size 7 dividing"),
    ("maxvit_t", {}, 448, r"Resize the images to 224x224 .*, or build it for them with "
     r"module_params=\{'input_size': \(448, 448\)\}\.$"),
    ("maxvit_t", {"input_size": (448, 448)}, 224, r"takes images of 448x448 pixels"),
    ("inception_v3", {"init_weights": False}, 64, r"inception_v3 takes images of at least "
     r"75x75 pixels; got samples of shape \(3, 64, 64\), on which its forward pass fails "
     r"\(.*Kernel size can't be greater than actual input size\)\. Resize the images to at "
     r"least 75x75"),
    ("alexnet", {}, 32, r"alexnet takes images of at least 63x63 pixels"),
    ("swin_t", {}, 2, r"swin_t takes images of at least 4x4 pixels"),  # not its weights' 224
])
def test_images_a_model_cannot_take_are_refused_when_built(module, params, side, match):
    with pytest.raises(ValueError, match=match):  # torch's errors came at the forward pass
        build_module(module, input_shape=(3, side, side), n_classes=2,
                     module_params={"weights": None, **params})


def test_images_of_the_size_a_model_takes_are_not_refused():
    model = build_torchvision("inception_v3", input_shape=(3, 75, 90), n_classes=2,
                              init_weights=False)
    assert model.eval()(torch.zeros(1, 3, 75, 90)).shape == (1, 2)
    build_torchvision("maxvit_t", input_shape=(3, 222, 222), n_classes=2)  # 221 to 224 fit


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_checking_pretrained_weights_gives_no_initialisation_warning(name, recwarn):
    backbones.check_torchvision(name, "DEFAULT", input_shape=(3, 96, 96), aux_logits=True)
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_arguments_are_checked_before_weights_are_downloaded(monkeypatch):
    def download(member, name, timeout):
        raise AssertionError(f"{member} downloaded before the arguments were checked")

    monkeypatch.setattr(backbones, "_download", download)
    for name, params, shape, match in [
        ("resnet18", {"bogus": 1}, (3, 32, 32), r"module_params \['bogus'\] of "
         r"module='resnet18': torchvision's model refuses one \(.*unexpected keyword"),
        ("resnet18", {"num_classes": 5}, (3, 32, 32), r"module_params \['num_classes'\] .*"
         r"its weights ResNet18_Weights\.IMAGENET1K_V1 set num_classes=1000, not 5"),
        ("vit_b_16", {"image_size": 32}, (3, 32, 32), r"ViT_B_16_Weights\.IMAGENET1K_V1 set "
         r"image_size=224, not 32"),
        ("vit_b_16", {}, (3, 32, 32), r"vit_b_16 takes images of 224x224 pixels .* its "
         r"pretrained position embeddings"),
        ("inception_v3", {}, (3, 64, 64), r"inception_v3 takes images of at least 75x75"),
        ("regnet_y_400mf", {"bogus": 1}, (3, 32, 32), r"module_params \['bogus'\] of "
         r"module='regnet_y_400mf': torchvision's model refuses one \(.*unexpected keyword"),
        ("regnet_y_400mf", {"num_classes": 5}, (3, 32, 32), r"RegNet_Y_400MF_Weights\."
         r"IMAGENET1K_V2 set num_classes=1000, not 5"),
        ("googlenet", {"aux_logits": False}, (3, 96, 96), r"GoogLeNet_Weights\.IMAGENET1K_V1 "
         r"set aux_logits=True, not False; the model built drops the auxiliary classifiers"),
        ("inception_v3", {"init_weights": True}, (3, 96, 96), r"module_params "
         r"\['init_weights'\] .*Inception_V3_Weights\.IMAGENET1K_V1 set init_weights=False, "
         r"not True\)"),
        ("maxvit_t", {}, (3, 448, 448), r"maxvit_t takes images of 224x224 pixels .* "
         r"torchvision builds it for this size with its pretrained weights"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_module(name, input_shape=shape, n_classes=2,
                         module_params={"weights": "DEFAULT", **params})
    torch.manual_seed(0)
    state = torch.get_rng_state()
    backbones.check_torchvision("regnet_y_400mf", "DEFAULT", stem_width=16)  # built on the CPU
    assert torch.equal(torch.get_rng_state(), state)
    for name in ("googlenet", "inception_v3"):  # the weights' own values, and any transform
        backbones.check_torchvision(name, "DEFAULT", aux_logits=True, init_weights=False,
                                    transform_input=False)
    for timeout in (-1, 0, float("nan"), float("inf"), "5", True):  # -1 was a network error
        with pytest.raises(ValueError, match=r"module_params\['download_timeout'\] \(of a "
                           r"torchvision model\) must be a positive, finite number of seconds"):
            build_module("resnet18", input_shape=(3, 32, 32), n_classes=2,
                         module_params={"weights": "DEFAULT", "download_timeout": timeout})
    for params, match in [({"bogus": 1}, r"\['bogus'\] .*unexpected keyword"),
                          ({"num_classes": 5}, r"set num_classes=1000, not 5"),
                          ({"download_timeout": -1}, r"download_timeout"),
                          ({"n_classes": 3}, r"\['n_classes'\] .*rest_fair sets them from"),
                          ({"input_shape": (3, 8, 8)}, r"\['input_shape'\] .*rest_fair sets")]:
        with pytest.raises(ValueError, match=match):  # before any data, as a sweep does
            check_module("resnet18", {"weights": "DEFAULT", **params})
        with pytest.raises(ValueError, match=match):  # "n_classes" was a bare TypeError
            build_module("resnet18", input_shape=(3, 32, 32), n_classes=2,
                         module_params={"weights": "DEFAULT", **params})
    swag = tv.models.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1  # built for 384x384 images
    with pytest.raises(ValueError, match=r"vit_b_16 takes images of 384x384 pixels"):
        build_torchvision("vit_b_16", input_shape=(3, 224, 224), n_classes=2, weights=swag)


@pytest.mark.parametrize(
    ("module", "params", "error", "match"),
    [
        ("resnet5O", {}, ValueError, r"module must be one of .*did you mean 'resnet50'"),
        ("transformer", {}, ValueError, "module must be one of"),
        ("resnet18", {"weights": "IMAGENET9K"}, ValueError,
         r"IMAGENET9K.*weights are \['IMAGENET1K_V1', 'DEFAULT'\]"),
        ("resnet50", {"weights": "./no/such/file.pt"}, FileNotFoundError, "no such file"),
        ("resnet50", {"weights": 3}, ValueError, "must be None, a torchvision weights name"),
        ("resnet50", {"weights": ""}, ValueError, "must be None, a torchvision weights name"),
        ("resnet50", {"weights": {"conv1.weight": torch.zeros(64, 3, 7, 7)}}, ValueError,
         r"path to a state-dict file; got a dict of 1 entries: write a state dict to a file "
         r"with torch.save\(state_dict, path\) and give its path\.$"),  # not the tensors
        ("resnet18", {"weights": "https://download.pytorch.org/models/resnet18-f37072fd.pth"},
         ValueError, r"is a URL: weights are not downloaded from URLs; give a torchvision "
         r"weights name of resnet18 \(they are \['IMAGENET1K_V1', 'DEFAULT'\]"),
        ("resnet50", {"pretrained": True}, ValueError, r"\['pretrained'\] .*unexpected keyword "
         r"argument 'pretrained'; pretrained weights are chosen by 'weights' \('DEFAULT' or a "
         r"weights name\), not 'pretrained'\)"),  # as module_params and --module-params name it
        ("resnet50", {"weigths": None}, ValueError,
         r"module_params \['weigths'\] of module='resnet50': torchvision's model refuses"),
        ("vit_b_16", {"weights": None, "num_layers": 1}, ValueError,
         r"module_params \['num_layers'\] of module='vit_b_16': torchvision's model refuses"),
    ],
)
def test_bad_names_are_clear_errors(module, params, error, match):
    with pytest.raises(error, match=match):
        build_module(module, input_shape=(3, 32, 32), n_classes=2, module_params=params)


def test_missing_optional_package_names_the_install_command(monkeypatch):
    from rest_fair.exceptions import MissingDependencyError

    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(MissingDependencyError, match=r"module='resnet50' .*torchvision"
                       r".*pip install 'rest-fair\[vision\]'"):
        build_module("resnet50", input_shape=(3, 32, 32), n_classes=2)


def test_images_must_have_three_channels():
    with pytest.raises(ValueError, match=r"RGB images .* got samples of shape \(1, 28, 28\)\.$"):
        build_module("resnet50", input_shape=(1, 28, 28), n_classes=2,
                     module_params={"weights": None})
    with pytest.raises(ValueError, match=r"shape \(32, 32, 3\), which look channels-last "
                       r"\(height, width, channels\): pass X\.transpose\(0, 3, 1, 2\)\.$"):
        build_module("resnet50", input_shape=(32, 32, 3), n_classes=2,
                     module_params={"weights": None})


def test_unreachable_weights_fail_fast_offline(offline):
    start = time.perf_counter()
    with pytest.raises(OSError) as info:
        build_module("resnet18", input_shape=(3, 32, 32), n_classes=2,
                     module_params={"weights": "IMAGENET1K_V1"})
    # generous: failing takes a fraction of a second here, so a machine many times slower
    # passes; waiting out the 30 s download timeout would not
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in message and "resnet18-f37072fd.pth" in message
    assert str(offline) in message
    # module_params of Python, --module-params of rest-fair bench, --weights of rest-fair wilds
    assert message.endswith("or anywhere and give its path as the weights.")


def test_cached_torchvision_weights_load_without_network(offline, resnet18_file):
    member = tv.models.ResNet18_Weights.IMAGENET1K_V1
    cache = offline / "hub" / "checkpoints" / os.path.basename(member.url)
    cache.parent.mkdir(parents=True)
    cache.write_bytes(resnet18_file.read_bytes())
    model = build_module("resnet18", input_shape=(3, 32, 32), n_classes=2,
                         module_params={"weights": "DEFAULT"})
    saved = torch.load(resnet18_file, weights_only=True)
    assert torch.equal(model.conv1.weight, saved["conv1.weight"])
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == 2


@pytest.mark.parametrize("weights", [
    tv.models.ResNet18_Weights.IMAGENET1K_V1, tv.models.ResNet18_Weights.DEFAULT,
    "ResNet18_Weights.IMAGENET1K_V1",  # as str(member) writes it
])
def test_a_torchvision_weights_member_loads_as_its_name(offline, resnet18_file, weights):
    member = tv.models.ResNet18_Weights.IMAGENET1K_V1
    cache = offline / "hub" / "checkpoints" / os.path.basename(member.url)
    cache.parent.mkdir(parents=True)
    cache.write_bytes(resnet18_file.read_bytes())
    check_module("resnet18", {"weights": weights})
    model = build_module("resnet18", input_shape=(3, 32, 32), n_classes=2,
                         module_params={"weights": weights})
    saved = torch.load(resnet18_file, weights_only=True)
    assert torch.equal(model.conv1.weight, saved["conv1.weight"])


def test_an_estimator_with_weights_given_as_a_path_or_member_is_saved(offline, resnet18_file,
                                                                      tmp_path):
    member = tv.models.ResNet18_Weights.IMAGENET1K_V1
    cache = offline / "hub" / "checkpoints" / os.path.basename(member.url)
    cache.parent.mkdir(parents=True)
    cache.write_bytes(resnet18_file.read_bytes())
    X, y = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32), [0, 1, 0, 1]
    for weights, name in ((resnet18_file, str(resnet18_file)), (member, str(member))):
        clf = RESTClassifier(module="resnet18", module_params={"weights": weights},
                             max_epochs=1, drop_fraction=0, device="cpu",
                             validation_fraction=0, random_state=0).fit(X, y)
        clf.save(tmp_path / "clf.zip")  # TypeError: ... type PosixPath is not a plain JSON
        loaded = RESTClassifier.load(tmp_path / "clf.zip")
        assert clf.module_params == {"weights": weights}
        assert loaded.module_params == {"weights": name}
        np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
        check_module("resnet18", loaded.module_params)


def test_weights_of_another_model_are_refused():
    with pytest.raises(ValueError, match=r"weights=ResNet50_Weights.IMAGENET1K_V1 are not "
                       r"weights of torchvision's resnet18: its weights are \['IMAGENET1K_V1', "
                       r"'DEFAULT'\]"):
        check_module("resnet18", {"weights": tv.models.ResNet50_Weights.IMAGENET1K_V1})
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        check_module("resnet18", {"weights": "ResNet50_Weights.IMAGENET1K_V1"})


def test_core_and_backbone_modules_import_neither_torchvision_nor_transformers():
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        import rest_fair, rest_fair.models, rest_fair.backbones, rest_fair.text
        import rest_fair.wilds.features, rest_fair.wilds.protocol, rest_fair.wilds.cli
        from rest_fair import RESTClassifier
        bad = [m for m in ("torchvision", "transformers", "tokenizers", "wilds")
               if m in sys.modules]
        print("LOADED", bad)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stdout


@pytest.mark.parametrize(("sep", "altsep"), [("/", None), ("\\", "/")])
def test_a_hub_id_is_no_local_folder_on_any_os(monkeypatch, sep, altsep):
    # on Windows (sep "\\", altsep "/") every owner/name id was taken for a missing folder
    monkeypatch.setattr(backbones, "os", types.SimpleNamespace(sep=sep, altsep=altsep))
    assert not backbones._looks_like_folder("bert-base-uncased")
    assert not backbones._looks_like_folder("google/bert_uncased_L-2_H-128_A-2")
    assert backbones._looks_like_folder("models/google/bert")
    assert backbones._looks_like_folder("./bert")
    assert backbones._looks_like_folder("~/bert")
    assert backbones._looks_like_folder("models\\bert") is (sep == "\\")
