"""Hugging Face text classifiers: strings as X, tokenize once, dynamic padding, magnitude
masks on a saved model, local-first loading and fast offline failures."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch

from tests._support.backbones import save_tiny_distilbert, save_tiny_roberta

pytest.importorskip("transformers", reason="text models need rest-fair[text]")

from rest_fair import RESTClassifier
from rest_fair._data import make_source
from rest_fair.backbones import HFTextClassifier, build_hf, load_tokenizer
from rest_fair.models import build_module
from rest_fair.sparse import MaskSet, maskable_parameters
from rest_fair.text import TextSource, TokenizedText, is_text_input, make_text_source, tokenize

TEXTS = ["the article was kind", "idiot", "thanks great helpful agree kind thoughtful read",
         "stupid moron trash", "the city council budget", "pathetic"]
LABELS = np.array([0, 1, 0, 1, 0, 1])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_distilbert(tmp_path_factory.mktemp("hf") / "tiny-distilbert")


def _clf(tiny, **kw):
    params = {"module": f"hf:{tiny}", "module_params": {"max_length": 16}, "sparsity": 0.5,
              "max_epochs": 2, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3,
              "validation_fraction": 0.0, "device": "cpu", "random_state": 0}
    params.update(kw)
    return RESTClassifier(**params)


def test_is_text_input():
    assert is_text_input(["a", "b"]) and is_text_input(np.array(["a", "b"]))
    assert is_text_input(np.array(["a", "b"], dtype=object))
    import pandas as pd

    assert is_text_input(pd.Series(["a", "b"]))
    assert not is_text_input(np.zeros((3, 2))) and not is_text_input([1.0, 2.0])
    assert not is_text_input("abc") and not is_text_input([]) and not is_text_input(["a", 1])


def test_tokenize_once_and_pad_each_batch_to_its_longest(tiny):
    tokenizer = load_tokenizer(f"hf:{tiny}")
    tokens = tokenize(TEXTS, tokenizer, max_length=5)
    assert isinstance(tokens, TokenizedText) and len(tokens) == len(TEXTS)
    assert tokens.lengths.tolist() == [5, 3, 5, 5, 5, 3]  # [CLS] ... [SEP], truncated to 5
    source = make_source(tokens, device=torch.device("cpu"))
    assert isinstance(source, TextSource)
    with pytest.warns(FutureWarning, match="make_source"):
        assert isinstance(make_text_source(tokens), TextSource)
    batches = list(source.batches(torch.tensor([1, 5, 0, 2]), 2, torch.device("cpu")))
    first, idx = batches[0]
    assert idx.tolist() == [1, 5]
    assert first["input_ids"].shape == (2, 3)  # both texts are 3 tokens: no padding
    second, _ = batches[1]
    assert second["input_ids"].shape == (2, 5)
    expected = tokenizer(TEXTS[0], truncation=True, max_length=5)["input_ids"]
    assert second["input_ids"][0].tolist() == expected
    padded, mask = tokens.padded(np.array([1, 0]))
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert padded[0, 3:].tolist() == [tokenizer.pad_token_id] * 2
    sub = tokens[np.array([4, 1])]
    assert sub.lengths.tolist() == [5, 3]
    np.testing.assert_array_equal(sub.padded(np.array([1]))[0], tokens.padded(np.array([1]))[0])


def test_logits_do_not_depend_on_the_padding_of_the_batch(tiny):
    net = build_module(f"hf:{tiny}", input_shape=(), n_classes=2).eval()
    tokens = tokenize(TEXTS, net.tokenizer, max_length=16)
    alone = [net(b) for b, _ in TextSource(tokens).batches(torch.arange(6), 1,
                                                             torch.device("cpu"))]
    together = next(iter(TextSource(tokens).batches(torch.arange(6), 6, torch.device("cpu"))))
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(alone).detach(), net(together[0]),
                                   atol=1e-5, rtol=1e-4)


def test_magnitude_mask_on_a_saved_text_model(tiny):
    net = build_module(f"hf:{tiny}", input_shape=(), n_classes=3)
    assert isinstance(net, HFTextClassifier)
    assert net.model.classifier.out_features == 3
    names = [n for n, _ in maskable_parameters(net)]
    assert "model.distilbert.embeddings.word_embeddings.weight" in names
    assert "model.distilbert.embeddings.position_embeddings.weight" in names
    assert not any("LayerNorm" in n or "layer_norm" in n or n.endswith("bias") for n in names)
    masks = MaskSet.from_module(net, density=0.2, sparse_init="magnitude", dense_layers=("head",))
    assert "model.classifier.weight" not in masks.names
    params = dict(net.named_parameters())
    for name in masks.names:
        w = params[name].detach().abs().reshape(-1)
        keep = masks.mask(name).reshape(-1)
        assert keep.any(), name
        if (~keep).any():
            assert w[keep].min() >= w[~keep].max(), name
    assert masks.density() == pytest.approx(0.2, abs=0.01)


def test_fit_predict_strings_on_synthetic_civilcomments(tiny, tmp_path):
    pytest.importorskip("wilds", reason="needs rest-fair[wilds]")
    from rest_fair.wilds import (
        load_wilds,
        make_synthetic_layout,
        read_predictions,
        split_wilds,
        wilds_eval,
        write_submission,
    )

    make_synthetic_layout("civilcomments", tmp_path)
    dataset = load_wilds("civilcomments", tmp_path)
    parts = split_wilds(dataset)
    train, val, test = parts["train"], parts["val"], parts["test"]
    clf = _clf(tiny, sparse_init="magnitude", dense_layers=("head",), max_epochs=2,
               batch_size=16)
    clf.fit(train.X, train.y, groups=train.groups, validation_data=val.validation_data())
    assert clf.n_features_in_ == 1 and clf.input_shape_ == ()
    assert "model.distilbert.embeddings.word_embeddings.weight" in clf.masks_
    assert "model.classifier.weight" not in clf.masks_
    assert len(clf.history_) == 2 and "valid_worst_group_acc" in clf.history_[0]
    predictions = {"val": clf.predict(val.X), "test": clf.predict(list(test.X))}
    proba = clf.predict_proba(test.X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], predictions["test"])
    results = wilds_eval(test, predictions["test"])
    assert {"acc_avg", "acc_wg", "acc_y:1_black:1"} <= set(results)
    files = write_submission(predictions, dataset=dataset, out_dir=tmp_path / "sub", seed=0)
    for path in files:
        split = "val" if "split:val" in path.name else "test"
        np.testing.assert_array_equal(read_predictions(path), predictions[split])


def test_fitted_text_estimator_pickles_with_its_tokenizer(tiny):
    clf = _clf(tiny, max_epochs=1).fit(TEXTS, LABELS)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(again.predict_proba(TEXTS), clf.predict_proba(TEXTS))
    with pytest.raises(ValueError, match="text model and takes X as a list"):
        clf.predict(np.zeros((2, 3)))


def test_the_efficiency_report_of_a_text_fit_says_why_there_is_none(tiny):
    # it used to blame an input_shape the user never gave: "got ()"
    clf = _clf(tiny, max_epochs=1).fit(TEXTS, LABELS)
    with pytest.raises(ValueError, match=r"fitted on samples without one .*text"):
        clf.efficiency_report()
    assert len(clf.sparsity_report()) == len(clf.masks_)


def test_a_text_fit_predicts_through_its_exported_module(tiny):
    # the documented recipe said the estimator was "fitted on numeric input"
    import copy

    clf = _clf(tiny, max_epochs=1).fit(TEXTS, LABELS)
    fast = copy.copy(clf)
    fast.module_ = clf.export_sparse(density_threshold=1.0)
    np.testing.assert_allclose(fast.predict_proba(TEXTS), clf.predict_proba(TEXTS), atol=1e-5)


def test_held_out_validation_split_of_text(tiny):
    texts, labels = TEXTS * 3, np.tile(LABELS, 3)
    clf = _clf(tiny, validation_fraction=0.3, max_epochs=2).fit(texts, labels,
                                                                 groups=np.arange(18) % 2)
    assert "valid_worst_group_acc" in clf.history_[-1]
    assert clf.predict(texts).shape == (18,)


def test_jtt_on_text(tiny):
    clf = _clf(tiny, infer_groups="jtt", jtt_epochs=1, max_epochs=1).fit(TEXTS, LABELS)
    assert clf.inferred_groups_.shape == (6,)


def test_text_needs_an_hf_module_and_vice_versa(tiny):
    with pytest.raises(ValueError, match="X holds text"):
        RESTClassifier(module="mlp", max_epochs=1).fit(TEXTS, LABELS)
    with pytest.raises(ValueError, match="is a text model"):
        _clf(tiny).fit(np.zeros((6, 3)), LABELS)
    numeric = RESTClassifier(module="mlp", max_epochs=1, device="cpu").fit(
        np.random.default_rng(0).normal(size=(6, 3)), LABELS)
    with pytest.raises(ValueError, match="fitted on numeric input"):
        numeric.predict(TEXTS)


@pytest.mark.parametrize(
    ("params", "match"),
    [({"maxlen": 3}, r"takes module_params \['max_length'"), ({"max_length": 0}, "positive"),
     ({"model_kwargs": {"num_labels": 5}}, r"sets \['num_labels'\], which rest_fair sets"),
     ({"tokenizer_kwargs": {"local_files_only": True}}, r"sets \['local_files_only'\]"),
     ({"tokenizer_kwargs": ["x"]}, r"must be a dict of keyword arguments"),
     ({"local_files_only": "no"}, r"local_files_only'\] must be True, False or None"),
     ({"revision": 3}, r"module_params\['revision'\] must be None or a Hub revision .*got 3"),
     ({"revision": " "}, r"module_params\['revision'\] must be None"),  # both were ignored
     ({"model_kwargs": {"bogus": 1}}, r"module_params\['model_kwargs'\] \['bogus'\] of "
      r"module='hf:.*': the model refuses one \(.*unexpected keyword argument 'bogus'\)")],
)
def test_bad_module_params(tiny, params, match):
    with pytest.raises(ValueError, match=match):
        build_module(f"hf:{tiny}", input_shape=(), n_classes=2, module_params=params)


def test_max_length_may_be_a_numpy_integer(tiny):
    clf = _clf(tiny, module_params={"max_length": np.int64(8)}).fit(TEXTS, LABELS)
    assert clf.module_.max_length == 8


def test_missing_local_folder_is_named(tmp_path):
    missing = tmp_path / "no-model-here"
    with pytest.raises(FileNotFoundError, match=r"no-model-here.*does not exist"):
        build_hf(str(missing), n_classes=2)


def test_unreachable_hub_name_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    start = time.perf_counter()
    with pytest.raises(OSError) as info:
        build_module("hf:rest-fair-tests/no-such-model", input_shape=(), n_classes=2)
    # generous: the refused connection fails in well under a second here, so a machine
    # many times slower passes; waiting out a timeout or retries would not
    assert time.perf_counter() - start < 15
    message = str(info.value)
    assert "'rest-fair-tests/no-such-model'" in message and "cannot be reached" in message
    assert "http://127.0.0.1:9" in message


@pytest.fixture
def silent_hub(monkeypatch):
    """HF_ENDPOINT at a server that accepts connections and never answers."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:  # the server socket is closed
                return

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "https_proxy", "HTTPS_PROXY",
                "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    yield
    server.close()
    for conn in accepted:
        conn.close()


def test_a_hub_that_never_answers_fails_fast(silent_hub):
    # the probe only opened a TCP connection, and transformers then waited on the
    # endpoint's answer without a timeout: forever
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"no-such-model'.*cannot be reached"):
        load_tokenizer("hf:rest-fair-tests/no-such-model")
    assert time.perf_counter() - start < 30  # the probe waits 5 s


def test_offline_mode_hub_name_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"no-such-model'.*downloads are off \(HF_HUB_OFFLINE=1\)"):
        load_tokenizer("hf:rest-fair-tests/no-such-model")
    assert time.perf_counter() - start < 15  # generous, as above


def test_sparse_compute_trains_a_transformer_like_the_masked_path(tiny):
    # the linear layers of a transformer see (batch, length, features) inputs
    texts, labels = TEXTS * 4, np.tile(LABELS, 4)
    masked = _clf(tiny, sparsity=0.97, sparse_compute="masked").fit(texts, labels)
    csr = _clf(tiny, sparsity=0.97, sparse_compute="csr").fit(texts, labels)
    assert csr.sparse_compute_layers_ and not masked.sparse_compute_layers_
    assert {k: int(v.sum()) for k, v in csr.masks_.items()} == {
        k: int(v.sum()) for k, v in masked.masks_.items()}
    np.testing.assert_allclose(csr.predict_proba(texts), masked.predict_proba(texts),
                               atol=1e-4)


@pytest.mark.parametrize(("X", "match"), [
    ([*TEXTS[:-1], None], "element 5 is NoneType"),
    ([*TEXTS[:-1], 3], "element 5 is int"),
    (np.array([*TEXTS[:-1], np.nan], dtype=object), "element 5 is float"),
    ([b"\xff\xfe", *(t.encode() for t in TEXTS[1:])],
     "bytes that are not UTF-8 text at element 0"),
    # the fast tokenizer's "TextEncodeInput must be Union[...]" named no text
    ([*TEXTS[:-2], b"caf\xe9".decode("utf-8", "surrogateescape"), TEXTS[-1]],
     r"not Unicode text at element 4 \('utf-8' codec can't encode character '\\udce9'"),
    ([], "empty list of strings"),
])
def test_bad_text_items_are_named(tiny, X, match):
    with pytest.raises(ValueError, match=match):
        _clf(tiny).fit(X, LABELS[:len(X)])


def test_a_list_of_bytes_is_text(tiny):
    clf = _clf(tiny, max_epochs=1).fit([t.encode() for t in TEXTS], LABELS)
    assert clf.predict([t.encode() for t in TEXTS]).shape == (6,)
    with pytest.raises(ValueError, match="empty list of strings"):
        clf.predict([])


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json"])
def test_a_model_folder_missing_a_file_is_named(tiny, tmp_path, missing):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(tiny, folder)
    (folder / missing).unlink()
    with pytest.raises(OSError, match=r"(?s)could not load .* config.json, the weights and the "
                                      r"tokenizer files"):
        _clf(folder).fit(TEXTS, LABELS)


def test_a_file_given_as_the_model_folder_is_named(tmp_path):
    # it was reported as a folder that "does not exist"
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="looks like a local folder but is a file"):
        build_hf(str(tmp_path / "model.bin"), n_classes=2)


def test_an_empty_model_name_is_refused():
    with pytest.raises(ValueError, match="names no model"):
        RESTClassifier(module="hf:", max_epochs=1, device="cpu").fit(TEXTS, LABELS)


def test_a_max_length_below_the_special_tokens_is_named(tiny):
    long_text = "stupid moron trash " * 100  # 300 words: untruncated, beyond the 64 positions
    with pytest.raises(ValueError, match=r"max_length=1 is too short .* adds 2 special tokens"):
        _clf(tiny, module_params={"max_length": 1}).fit([*TEXTS[:-1], long_text], LABELS)
    tokens = tokenize(["idiot", long_text], load_tokenizer(f"hf:{tiny}"), max_length=2)
    assert tokens.lengths.tolist() == [2, 2]


def test_max_length_must_fit_the_position_embeddings(tiny, tmp_path):
    import json
    import shutil

    with pytest.raises(ValueError, match=r"longer than .* position embeddings take 64"):
        _clf(tiny, module_params={"max_length": 200}).fit(TEXTS, LABELS)
    # a tokenizer that does not say its length: the default is capped by the model's
    folder = tmp_path / "no_length"
    shutil.copytree(tiny, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("model_max_length", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    long = [" ".join(["kind"] * 100), *TEXTS[1:]]
    clf = _clf(folder, module_params={}, max_epochs=1).fit(long, LABELS)
    assert clf.predict(long).shape == (6,)



def test_roberta_reads_its_positions_less_the_padding_offset(tmp_path):
    folder = save_tiny_roberta(tmp_path / "roberta")  # 34 positions from id 2 on: 32 tokens
    net = build_hf(str(folder), n_classes=2)
    assert net.token_limits()[1] == 32 and net.tokenizer.model_max_length == 32
    with pytest.raises(ValueError, match=r"longer than .* position embeddings take 32"):
        build_hf(str(folder), n_classes=2, max_length=33)
    long = [" ".join(["kind"] * 100), *TEXTS[1:]]  # the default length, 32, is read
    clf = _clf(folder, module_params={}, max_epochs=1).fit(long, LABELS)
    assert clf.predict(long).shape == (6,)
    tokens = TokenizedText(np.full(34, 7), np.array([0, 1, 34]), pad_token_id=1)
    with pytest.raises(ValueError, match=r"33 tokens in text 1, more than .* take 32 tokens"):
        clf.predict(tokens)


def test_a_half_precision_checkpoint_trains_in_float32(tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "bf16"
    AutoModelForSequenceClassification.from_pretrained(tiny).to(torch.bfloat16).save_pretrained(
        folder)
    load_tokenizer(f"hf:{tiny}").save_pretrained(folder)
    net = build_hf(str(folder), n_classes=2)
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    kept = build_hf(str(folder), n_classes=2, model_kwargs={"dtype": "auto"})
    assert {p.dtype for p in kept.parameters()} == {torch.bfloat16}

def test_a_tokenizer_without_padding_or_end_token_is_named(tiny, monkeypatch):
    import rest_fair.backbones as backbones

    load = backbones.load_tokenizer

    def without_padding(*args, **kwargs):
        tokenizer = load(*args, **kwargs)
        tokenizer.pad_token = None  # as a GPT-2 style tokenizer without EOS would be
        return tokenizer

    monkeypatch.setattr(backbones, "load_tokenizer", without_padding)
    with pytest.raises(ValueError, match="no padding token and no end-of-sequence token"):
        build_module(f"hf:{tiny}", input_shape=(), n_classes=2)



def test_a_token_the_model_does_not_embed_is_named(tiny):
    params = {"tokenizer_kwargs": {"pad_token": "<new-pad>"}}
    with pytest.raises(ValueError, match=r"tokens \['<new-pad>'\] .* embeds ids 0 to 33"):
        build_module(f"hf:{tiny}", input_shape=(), n_classes=2, module_params=params)
    net = build_module(f"hf:{tiny}", input_shape=(), n_classes=2,
                       module_params={"tokenizer_kwargs": {"pad_token": "[SEP]"}})
    assert net.tokenizer.pad_token_id == 3

@pytest.mark.parametrize("ids, offsets, match", [
    (np.array([1.5, 2.0]), np.array([0, 2]), "ids must be .* integers.*dtype float64"),
    (np.array([1, -2]), np.array([0, 2]), "ids must be .* range from -2 to 1"),
    (np.array([1, 2**31]), np.array([0, 2]), "ids must be .* range from 1 to 2147483648"),
    (np.array([[1, 2]]), np.array([0, 2]), "ids must be a 1-D .* 2 dimensions"),
    (np.array([1, 2, 3]), np.array([0, 2, 1, 3]), r"offsets .* decrease after text 1"),
    (np.array([1, 2, 3]), np.array([0, 2, 9]), r"offsets .* ends at the number of ids \(3\); "
                                               r"they run from 0 to 9"),
    (np.array([1, 2, 3]), np.array([1, 3]), "they run from 1 to 3"),
    (np.array([], dtype=int), np.array([], dtype=int), "they are empty"),
])
def test_tokenized_text_refuses_ids_and_offsets_that_are_not_texts(ids, offsets, match):
    with pytest.raises(ValueError, match=match):
        TokenizedText(ids, offsets, pad_token_id=0)
    with pytest.raises(ValueError, match="pad_token_id must be a non-negative integer"):
        TokenizedText(np.array([1]), np.array([0, 1]), pad_token_id=-1)


def test_tokenized_text_must_fit_the_vocabulary_and_positions_of_the_model(tiny):
    tokens = tokenize(TEXTS, load_tokenizer(f"hf:{tiny}"), max_length=16)
    clf = _clf(tiny, max_epochs=1).fit(tokens, LABELS)
    np.testing.assert_array_equal(clf.predict(tokens), clf.predict(TEXTS))
    foreign = TokenizedText(np.array([2, 7, 3, 2, 999, 3]), np.array([0, 3, 6]), pad_token_id=0)
    beyond = r"holds token id 999 in text 1, but .* embeds ids 0 to 33 only"
    with pytest.raises(ValueError, match=beyond):
        clf.predict(foreign)
    with pytest.raises(ValueError, match=beyond):
        _clf(tiny).fit(foreign, LABELS[:2])
    with pytest.raises(ValueError, match=beyond):
        _clf(tiny).fit(tokens, LABELS, validation_data=(foreign, LABELS[:2]))
    with pytest.raises(ValueError, match="pads with token id 50"):
        clf.predict(TokenizedText(tokens.ids, tokens.offsets, pad_token_id=50))
    long = TokenizedText(np.full(71, 7), np.array([0, 1, 71]), pad_token_id=0)
    with pytest.raises(ValueError, match=r"70 tokens in text 1, more than .* take 64 tokens"):
        clf.predict(long)
    with pytest.raises(ValueError, match=r"70 tokens in text 1"):
        _clf(tiny).fit(long, LABELS[:2])


def test_an_estimator_fitted_on_numbers_refuses_tokenized_text(tiny):
    clf = RESTClassifier(max_epochs=1, device="cpu", random_state=0,
                         validation_fraction=0.0).fit(np.random.default_rng(0).random((6, 3)),
                                                      LABELS)
    tokens = tokenize(TEXTS, load_tokenizer(f"hf:{tiny}"), max_length=16)
    with pytest.raises(ValueError, match="fitted on numeric input; it cannot predict from text"):
        clf.predict(tokens)


def test_check_hf_refuses_what_build_hf_refuses_without_reading_the_weights(
        tiny, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    from rest_fair.backbones import check_hf

    def unread(*args, **kwargs):
        raise AssertionError("the weights were read")

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", unread)
    check_hf(f"hf:{tiny}", {"max_length": 64})
    with pytest.raises(ValueError, match=r"max_length'\]=65 is longer .* take 64 tokens"):
        check_hf(f"hf:{tiny}", {"max_length": 65})
    with pytest.raises(ValueError, match=r"tokens \['<new-pad>'\] .* embeds ids 0 to 33"):
        check_hf(f"hf:{tiny}", {"tokenizer_kwargs": {"pad_token": "<new-pad>"}})
    check_hf(f"hf:{tiny}", {"max_length": 2})  # [CLS] [SEP]
    with pytest.raises(ValueError, match=r"max_length'\]=1 is shorter than the 2 special"):
        check_hf(f"hf:{tiny}", {"max_length": 1})
    with pytest.raises(ValueError, match=r"longer than .* position embeddings take 32"):
        check_hf(f"hf:{save_tiny_roberta(tmp_path / 'roberta')}", {"max_length": 33})
    folder = tmp_path / "no_pad"
    tokenizer = load_tokenizer(f"hf:{tiny}")
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    with pytest.raises(OSError, match="could not load the model's configuration"):
        check_hf(f"hf:{folder}")
    (folder / "config.json").write_bytes((tiny / "config.json").read_bytes())
    with pytest.raises(ValueError, match="no padding token and no end-of-sequence token"):
        check_hf(f"hf:{folder}")


def test_check_hf_reads_the_configuration_with_the_settings_model_kwargs_override(tiny):
    # it read the saved configuration: a longer model was refused and a shorter one passed
    from rest_fair.backbones import check_hf

    check_hf(f"hf:{tiny}", {"max_length": 100,
                            "model_kwargs": {"max_position_embeddings": 128}})
    with pytest.raises(ValueError, match=r"max_length'\]=32 is longer .* take 16 tokens"):
        check_hf(f"hf:{tiny}", {"max_length": 32,
                                "model_kwargs": {"max_position_embeddings": 16}})
    check_hf(f"hf:{tiny}", {"tokenizer_kwargs": {"pad_token": "<new-pad>"},
                            "model_kwargs": {"vocab_size": 35}})  # embeds the new id 34


def test_a_configuration_object_in_model_kwargs_is_read_as_given_and_left_as_it_was(
        tiny, tmp_path):
    # transformers passed our num_labels to the model's __init__ (refused) when
    # model_kwargs held a configuration object, and check_hf read the model's own
    # configuration instead of it
    import transformers

    from rest_fair.backbones import check_hf

    config = transformers.AutoConfig.from_pretrained(tiny)
    config.max_position_embeddings = 16
    before = config.to_dict()
    with pytest.raises(ValueError, match=r"max_length'\]=32 is longer .* take 16 tokens"):
        check_hf(f"hf:{tiny}", {"max_length": 32, "model_kwargs": {"config": config}})
    clf = RESTClassifier(module=f"hf:{tiny}", max_epochs=1, device="cpu", random_state=0,
                         validation_fraction=0.0,
                         module_params={"model_kwargs": {"config": config, "hidden_dim": 24}})
    clf.fit(TEXTS, LABELS)
    built = clf.module_.model.config
    assert built is not config
    assert (built.max_position_embeddings, built.num_labels, built.hidden_dim) == (16, 2, 24)
    assert config.to_dict() == before  # the caller's object, unchanged
    # a configuration named by its folder is read from there
    config.save_pretrained(tmp_path / "short")
    with pytest.raises(ValueError, match=r"max_length'\]=32 is longer .* take 16 tokens"):
        check_hf(f"hf:{tiny}", {"max_length": 32,
                                "model_kwargs": {"config": str(tmp_path / "short")}})


def test_the_default_length_fits_the_positions_model_kwargs_give(tiny):
    # texts were cut to the saved configuration's 64 positions, not the model's 16
    texts = ["the article was kind " * 6, "idiot " * 20, *TEXTS[2:]]
    clf = RESTClassifier(module=f"hf:{tiny}", max_epochs=1, device="cpu", random_state=0,
                         validation_fraction=0.0,
                         module_params={"model_kwargs": {"max_position_embeddings": 16}})
    assert clf.fit(texts, LABELS).predict(texts).shape == (6,)
