"""Model files from a forger or a damaged disk: refused with ModelFileError, before any
allocation that the file declares but does not hold."""

import io
import json
import struct
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from rest_fair import RESTClassifier
from rest_fair.efficiency import ModelFileError, load, save
from rest_fair.models import build_module
from rest_fair.persistence import model_file
from rest_fair.persistence.model_file import _digest

META = {"module": "mlp", "input_shape": (20,), "n_classes": 3,
        "module_params": {"hidden_layer_sizes": (64, 32)}}


def _saved(tmp_path, density=0.3, meta=META):
    torch.manual_seed(0)
    net = build_module(meta["module"], input_shape=meta["input_shape"],
                       n_classes=meta["n_classes"], module_params=meta["module_params"])
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) < density
             for n, p in net.named_parameters() if n.endswith("weight")}
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    path = tmp_path / "m.rest"
    save((net, masks, meta), path)
    return path


def _parts(path):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays.pop("__header__").tobytes())
    arrays.pop("__sha256__")
    return header, arrays


def _forge(path, header, arrays, header_bytes=None):
    """Write ``header`` and ``arrays`` with the checksum recomputed, as a forger would."""
    if header_bytes is None:
        header_bytes = json.dumps(header, sort_keys=True).encode()
    arrays = dict(arrays)
    digest = _digest(header_bytes, arrays)
    arrays["__header__"] = np.frombuffer(header_bytes, dtype=np.uint8)
    arrays["__sha256__"] = np.frombuffer(digest.encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return path


def _members(path):
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _write_zip(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def _npy(shape, descr="<f4", data=b""):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + data


def test_an_array_declaring_more_than_its_member_holds_is_refused_unallocated(tmp_path):
    path = _saved(tmp_path)
    members = [(n, _npy((10**12,), "<f4", bytes(64)) if n == "t1.data.npy" else data)
               for n, data in _members(path)]
    forged = _write_zip(tmp_path / "huge.rest", members)  # 4 TB declared, 64 bytes held
    with pytest.raises(ModelFileError, match=r"declares shape \(1000000000000,\)"):
        load(forged)


def test_a_member_declaring_more_than_deflate_can_inflate_is_refused(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("t1.data.npy")
    struct.pack_into("<I", data, info.header_offset + 22, 2**32 - 1)
    central = data.find(b"PK\x01\x02")
    while central >= 0:
        name_len = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46:central + 46 + name_len] == b"t1.data.npy":
            struct.pack_into("<I", data, central + 24, 2**32 - 1)
        central = data.find(b"PK\x01\x02", central + 4)
    lying = tmp_path / "lying.rest"
    lying.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="declares 4294967295 bytes from"):
        load(lying)


@pytest.mark.parametrize("name", ["../evil", "t1.data"])  # a path; a second member of a name
def test_members_are_plain_unique_array_names(tmp_path, name):
    header, arrays = _parts(_saved(tmp_path))
    forged = _forge(tmp_path / "f.rest", header, arrays)
    members = _members(forged)
    if name == "t1.data":  # the member zipfile reads is the last: the checksum covers it
        members = [(n, data) for n, data in members if n != "t1.data.npy"]
        members.insert(0, ("t1.data.npy", _npy((64,), "<f4", bytes(256))))
        members.append(("t1.data.npy", _npy((64,), "<f4", arrays["t1.data"].tobytes())))
        match = "two members are named 't1.data.npy'"
    else:
        members.append((name + ".npy", _npy((1,), "<f4", bytes(4))))
        match = r"member '\.\./evil\.npy' is not an array"
    with pytest.warns(UserWarning, match="Duplicate name") if name == "t1.data" else _no_op():
        _write_zip(forged, members)
    with pytest.raises(ModelFileError, match=match):
        load(forged)


class _no_op:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_damaged_zip_directory_is_a_model_file_error(tmp_path):
    path = _saved(tmp_path)
    members = [(n, b"not an array" if n == "__header__.npy" else data)
               for n, data in _members(path)]
    with pytest.raises(ModelFileError, match="corrupted or truncated"):
        load(_write_zip(tmp_path / "raw.rest", members))
    data = bytearray(path.read_bytes())
    data[6] |= 1  # the 'encrypted' flag of the first member, local and central
    data[data.find(b"PK\x01\x02") + 8] |= 1
    encrypted = tmp_path / "encrypted.rest"
    encrypted.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="is encrypted"):
        load(encrypted)


@pytest.mark.parametrize("change", [
    ("dtype", np.float64), ("dtype", np.complex64), ("shape", (1, 64)),
    ("header shape", [64.5]), ("header shape", ["64"]),
])
def test_tensor_arrays_must_be_exactly_what_their_entry_says(tmp_path, change):
    header, arrays = _parts(_saved(tmp_path))
    what, value = change
    if what == "dtype":  # values silently cast to the tensor's dtype before
        arrays["t1.data"] = arrays["t1.data"].astype(value)
    elif what == "shape":
        arrays["t1.data"] = arrays["t1.data"].reshape(value)
    else:
        header["tensors"][1]["shape"] = value
    forged = _forge(tmp_path / "f.rest", header, arrays)
    with pytest.raises(ModelFileError, match=r"inconsistent tensor 'layers\.1\.bias'"):
        load(forged)


def test_csr_columns_out_of_order_are_refused_not_permuted(tmp_path):
    header, arrays = _parts(_saved(tmp_path, density=0.01))
    index = next(i for i, e in enumerate(header["tensors"]) if e.get("encoding") == "csr")
    crow, col = arrays[f"t{index}.crow"], arrays[f"t{index}.col"].copy()
    row = next(r for r in range(len(crow) - 1) if crow[r + 1] - crow[r] >= 2)
    col[crow[row]], col[crow[row] + 1] = col[crow[row] + 1], col[crow[row]]
    arrays[f"t{index}.col"] = col
    with pytest.raises(ModelFileError, match="not strictly increasing"):
        load(_forge(tmp_path / "f.rest", header, arrays))
    crow = crow.copy()
    crow[row + 1] = crow[row] - 1 if crow[row] else crow[-1] + 1
    arrays[f"t{index}.crow"] = crow
    with pytest.raises(ModelFileError, match="invalid CSR row pointers"):
        load(_forge(tmp_path / "f.rest", header, arrays))


def test_a_deeply_nested_header_is_a_model_file_error(tmp_path):
    header, arrays = _parts(_saved(tmp_path))
    deep = (b'{"format": "rest_fair.model", "format_version": 1, "x": '
            + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(ModelFileError, match="no valid rest_fair header"):
        load(_forge(tmp_path / "f.rest", header, arrays, header_bytes=deep))


def test_a_header_longer_than_the_limit_is_neither_written_nor_read(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    header, arrays = _parts(path)
    header["metadata"]["note"] = "x" * 5000
    forged = _forge(tmp_path / "f.rest", header, arrays)
    monkeypatch.setattr(model_file, "MAX_HEADER_BYTES", 4096)
    with pytest.raises(ModelFileError, match="__header__ is not at most 4096 bytes"):
        load(forged)
    net, masks, _ = load(path)
    with pytest.raises(ValueError, match="MAX_HEADER_BYTES = 4096"):
        save((net, masks, {"note": "x" * 5000}), tmp_path / "long.rest")
    assert not (tmp_path / "long.rest").exists()


@pytest.mark.parametrize("dtype", ["(1000,)f8", "V4", "O"])
def test_an_encoded_array_in_the_header_has_a_plain_dtype(tmp_path, dtype):
    header, arrays = _parts(_saved(tmp_path))
    header["metadata"]["a"] = {"__ndarray__": [1, 2], "dtype": dtype}
    with pytest.raises(ModelFileError, match="no valid rest_fair header"):
        load(_forge(tmp_path / "f.rest", header, arrays))


def test_a_string_array_wider_than_its_values_is_read_in_the_width_they_need(tmp_path):
    # a forged width (400 kB a value) is not allocated; an honest wide one keeps its values
    header, arrays = _parts(_saved(tmp_path))
    header["metadata"]["a"] = {"__ndarray__": ["x", "yy"], "dtype": "<U100000"}
    _, _, meta = load(_forge(tmp_path / "f.rest", header, arrays))
    assert meta["a"].dtype == np.dtype("<U2") and meta["a"].tolist() == ["x", "yy"]
    labels = np.array(["cat", "dog"], dtype="<U40")  # wider than its values, as users make
    save((nn.Linear(2, 2), None, {"labels": labels}), tmp_path / "wide.rest")
    _, _, meta = load(tmp_path / "wide.rest", module=nn.Linear(2, 2))
    np.testing.assert_array_equal(meta["labels"], labels)
    assert meta["labels"].dtype == np.dtype("<U3")
    padded = np.array(["a"], dtype="<U16")  # up to 64 bytes a value: the dtype is kept
    save((nn.Linear(2, 2), None, {"padded": padded}), tmp_path / "padded.rest")
    assert load(tmp_path / "padded.rest", module=nn.Linear(2, 2))[2]["padded"].dtype == padded.dtype


def test_header_arrays_and_tensors_of_every_dtype_round_trip(tmp_path):
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fp16 = nn.Linear(4, 3).half()
            self.bf = nn.Linear(4, 3).bfloat16()
            self.norm = nn.BatchNorm1d(3)  # a 0-d int64 buffer
            self.register_buffer("flags", torch.tensor([True, False]))
            self.register_buffer("codes", torch.arange(6, dtype=torch.uint8))

    torch.manual_seed(0)
    net = Mixed()
    masks = {"fp16.weight": torch.rand(3, 4) < 0.5, "bf.weight": torch.rand(3, 4) < 0.5}
    with torch.no_grad():
        for name, mask in masks.items():
            net.get_parameter(name).mul_(mask)
    meta = {"labels": np.array(["a", "bb"]), "padded": np.array(["a"], dtype="U16"),
            "big": np.array([1], dtype=">i8")}
    save((net, masks, meta), tmp_path / "mixed.rest")
    net2, masks2, meta2 = load(tmp_path / "mixed.rest", module=Mixed())
    for key, value in net.state_dict().items():
        got = net2.state_dict()[key]
        assert got.dtype == value.dtype and got.shape == value.shape
        assert torch.equal(got, value)
    assert all(torch.equal(masks2[k], masks[k]) for k in masks)
    for key, value in meta.items():
        assert meta2[key].dtype == value.dtype and np.array_equal(meta2[key], value)


def test_a_file_naming_pretrained_weights_reads_no_other_file(tmp_path):
    pytest.importorskip("torchvision")
    weights = tmp_path / "resnet18-weights.pt"  # the file it names is not there
    meta = {"module": "resnet18", "input_shape": (3, 8, 8), "n_classes": 3,
            "module_params": {"weights": str(weights)}}
    net = build_module("resnet18", input_shape=(3, 8, 8), n_classes=3,
                       module_params={"weights": None})
    save((net, None, meta), tmp_path / "r.rest")
    net2, _, meta2 = load(tmp_path / "r.rest")
    assert meta2 == meta
    assert all(torch.equal(v, net2.state_dict()[k]) for k, v in net.state_dict().items())


def test_a_fitted_estimator_still_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    y = np.array(["no", "yes"])[(X[:, 0] > 0).astype(int)]
    clf = RESTClassifier(max_epochs=2, sparsity=0.9, random_state=0,
                         module_params={"hidden_layer_sizes": (16,)}).fit(X, y)
    clf.save(tmp_path / "clf.rest")
    clf2 = RESTClassifier.load(tmp_path / "clf.rest")
    assert list(clf2.classes_) == ["no", "yes"]
    np.testing.assert_array_equal(clf2.predict_proba(X), clf.predict_proba(X))


def test_max_parameters_refuses_a_network_larger_than_asked_before_allocating_it(tmp_path):
    path = _saved(tmp_path)
    net, _, _ = load(path)
    count = sum(t.numel() for t in net.state_dict().values())
    with pytest.raises(ModelFileError, match=rf"network of {count} values.*max_parameters="
                                             rf"{count - 1}; nothing was allocated"):
        load(path, max_parameters=count - 1)
    again, _, _ = load(path, max_parameters=count)
    for key, value in net.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    # a layer of 10^12 weights, all inactive, named by a file of a few kB: refused unbuilt
    header, arrays = _parts(path)
    first = header["tensors"][0]
    first.update(shape=[1, 10**12], encoding="csr", nnz=0)
    arrays = {k: v for k, v in arrays.items() if not k.startswith("t0.")}
    arrays.update({"t0.values": np.zeros(0, np.float32), "t0.crow": np.zeros(2, np.int32),
                   "t0.col": np.zeros(0, np.int32)})
    with pytest.raises(ModelFileError, match=r"network of 1000000\d+ values .*, more than "
                                             r"max_parameters=1000000;"):
        load(_forge(tmp_path / "huge.rest", header, arrays), max_parameters=10**6)


def test_max_parameters_takes_a_numpy_integer(tmp_path):
    path = _saved(tmp_path)
    net, _, _ = load(path)
    count = np.int64(sum(t.numel() for t in net.state_dict().values()))
    load(path, max_parameters=count)
    with pytest.raises(ModelFileError, match=rf"more than max_parameters={count - 1};"):
        load(path, max_parameters=count - 1)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "9", np.int64(0), np.bool_(True)])
def test_max_parameters_must_be_a_positive_int(tmp_path, value):
    path = _saved(tmp_path)
    with pytest.raises(ValueError, match="max_parameters must be a positive int or None"):
        load(path, max_parameters=value)
    with pytest.raises(ValueError, match="max_parameters must be a positive int or None"):
        RESTClassifier.load(path, max_parameters=value)


def test_an_estimator_file_is_bounded_by_max_parameters(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 5)).astype(np.float32), np.arange(60) % 2
    clf = RESTClassifier(max_epochs=1, random_state=0).fit(X, y)
    clf.save(tmp_path / "clf.rest")
    count = sum(t.numel() for t in clf.module_.state_dict().values())
    with pytest.raises(ModelFileError, match=f"network of {count} values"):
        RESTClassifier.load(tmp_path / "clf.rest", max_parameters=10)
    with pytest.warns(FutureWarning), pytest.raises(ModelFileError, match="max_parameters=10;"):
        load(tmp_path / "clf.rest", max_parameters=10)
    loaded = RESTClassifier.load(tmp_path / "clf.rest", max_parameters=count)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
