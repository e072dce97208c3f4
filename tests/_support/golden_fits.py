"""Fixed-seed fits whose predictions are kept in ``tests/data/golden_predictions.npz``.

They pin the library's behaviour across refactorings: ``tests/test_golden.py`` refits each
one and compares the predicted probabilities with the recorded ones, bitwise on a machine
like the one that recorded them (same torch version, CPU capability and CPU model) and to
a tolerance elsewhere, where float rounding may differ. The two-rank fits are the scenarios of
``tests/_support/ddp_worker.py`` (rank 0's logits), compared in
``tests/training/test_distributed.py``.

Record anew only after a deliberate change of behaviour, and say which in the commit::

    python -m tests._support.golden_fits          # single-process fits
    python -m tests._support.golden_fits --ddp    # also the two-rank gloo fits (torchrun)
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits, make_classification

from rest_fair import RESTClassifier
from rest_fair.callbacks import Callback, Checkpoint
from rest_fair.sparse import kernels

HERE = Path(__file__).resolve().parent
GOLDEN = HERE.parent / "data" / "golden_predictions.npz"
#: the ddp_worker.py scenarios whose rank-0 logits are kept (key ``ddp_<scenario>``)
DDP_SCENARIOS = ("rest", "groupdro", "jtt", "resume")

# sparse_compute is named everywhere: "auto" would decide by timing, i.e. by the machine
COMMON = dict(max_epochs=6, batch_size=64, lr=0.05, random_state=3, device="cpu",
              sparse_compute="masked", module_params={"hidden_layer_sizes": (48, 48)})


def _cpu_model() -> str:
    """The CPU's vendor, family and model as /proc/cpuinfo reports them ('' elsewhere).

    Math libraries choose their kernels by CPU model, not only by vector width: two
    AVX-512 machines of different models round dense products differently.
    """
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("vendor_id", "cpu family", "model", "model name"):
                    fields.setdefault(key, value.strip())
                if not line.strip() and fields:
                    break
    except OSError:
        return ""
    return " ".join(fields.get(k, "?") for k in ("vendor_id", "cpu family", "model",
                                                  "model name"))


def environment() -> str:
    """What decides float rounding: torch version, CPU capability and model, architecture,
    and whether the CSR layers run on the compiled kernels or on torch's products."""
    capability = torch.backends.cpu.get_cpu_capability()
    native = "compiled CSR kernels" if kernels.available() else "torch CSR products"
    return (f"torch {torch.__version__} | {capability} | {_cpu_model()} | "
            f"{platform.machine()} | {native}")


def table_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    X, y = make_classification(600, 12, n_informative=6, n_classes=3, random_state=0)
    groups = np.where(X[:, 0] > 0.8, "minority", "majority")
    return X.astype(np.float32), y, groups


def image_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    X = (digits.images[:500] / 16.0).astype(np.float32)[:, None]
    y = digits.target[:500]
    groups = (X.mean(axis=(1, 2, 3)) > np.median(X.mean(axis=(1, 2, 3)))).astype(int)
    return X, y, groups


class _Preempt(Callback):
    def on_epoch_begin(self, net, *, epoch, **kwargs):
        if epoch == 4:
            raise KeyboardInterrupt


def _resumed(**params) -> RESTClassifier:
    X, y, g = table_data()
    with tempfile.TemporaryDirectory() as directory:
        try:
            RESTClassifier(**params, callbacks=[Checkpoint(directory), _Preempt()]).fit(
                X, y, groups=g)
        except KeyboardInterrupt:
            pass
        return RESTClassifier(**params, callbacks=[Checkpoint(directory)]).fit(
            X, y, groups=g, resume_from=directory)


def _table(**params) -> Callable[[], tuple[RESTClassifier, np.ndarray]]:
    def fit() -> tuple[RESTClassifier, np.ndarray]:
        X, y, g = table_data()
        return RESTClassifier(**{**COMMON, **params}).fit(X, y, groups=g), X

    return fit


def _images(**params) -> Callable[[], tuple[RESTClassifier, np.ndarray]]:
    def fit() -> tuple[RESTClassifier, np.ndarray]:
        X, y, g = image_data()
        clf = RESTClassifier(**{**COMMON, "module": "cnn", "module_params": None,
                                "max_epochs": 3, **params})
        return clf.fit(X, y, groups=g), X

    return fit


def _resume() -> tuple[RESTClassifier, np.ndarray]:
    return _resumed(**COMMON, sparsity=0.9, update_interval=3), table_data()[0]


#: name -> a function returning (fitted estimator, the X to predict)
FITS: dict[str, Callable[[], tuple[RESTClassifier, np.ndarray]]] = {
    "dense_erm": _table(sparsity=0.0, upweight=None),
    "dense_reweighting": _table(sparsity=0.0, upweight="balanced"),
    "rest_rigl_masked": _table(sparsity=0.9, update_interval=3, sparse_compute="masked"),
    "rest_rigl_csr": _table(sparsity=0.95, update_interval=3, sparse_compute="csr"),
    "rest_set_masked": _table(sparsity=0.9, regrow="random", update_interval=3,
                              sparse_compute="masked"),
    "rest_set_csr": _table(sparsity=0.95, regrow="random", update_interval=3,
                           sparse_compute="csr"),
    "rest_uniform_loss_reweight": _table(sparsity=0.8, layer_density="uniform",
                                         reweight="loss", optimizer="adam", lr=0.01),
    "groupdro": _table(sparsity=0.9, objective="groupdro", upweight=None,
                       groupdro_eta=0.1),
    "jtt": _table(sparsity=0.9, infer_groups="jtt", jtt_epochs=2),
    "cnn_rest": _images(sparsity=0.9, update_interval=4),
    "resumed": _resume,
}


def load_golden() -> dict[str, np.ndarray]:
    """The recorded arrays, with ``"_environment"`` naming where they were recorded."""
    with np.load(GOLDEN) as recorded:
        return {k: recorded[k] for k in recorded.files}


def assert_same_as_recorded(recorded: dict, key: str, value: np.ndarray) -> None:
    """Bitwise on the recording environment; close and the same classes elsewhere."""
    expected = recorded[key]
    assert value.shape == expected.shape and value.dtype == expected.dtype, key
    if str(recorded["_environment"]) == environment():
        assert np.array_equal(value, expected), (
            f"{key}: predictions changed (max abs difference "
            f"{np.max(np.abs(value - expected)):.3g}); if deliberate, record anew with "
            "`python -m tests._support.golden_fits` and say why in the commit")
    else:
        assert np.mean(value.argmax(1) == expected.argmax(1)) >= 0.97, key
        np.testing.assert_allclose(value, expected, atol=0.05, err_msg=key)


def predict(name: str) -> np.ndarray:
    """The predicted probabilities of fit ``name`` on its own training inputs."""
    clf, X = FITS[name]()
    return clf.predict_proba(X)


def _ddp_logits() -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(HERE.parents[1])}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(HERE / "ddp_worker.py"), out, "all"]
        subprocess.run(cmd, env=env, check=True, timeout=900)
        return {f"ddp_{name}": np.asarray(torch.load(Path(out) / f"{name}-rank0.pt",
                                                     weights_only=False)["logits"])
                for name in DDP_SCENARIOS}


def record(with_ddp: bool) -> None:
    """Refit everything and write :data:`GOLDEN` (keeping the ddp entries unless redone)."""
    arrays = {}
    if GOLDEN.exists() and not with_ddp:
        with np.load(GOLDEN) as old:
            arrays = {k: old[k] for k in old.files if k.startswith("ddp_")}
    arrays.update({name: predict(name) for name in FITS})
    if with_ddp:
        arrays.update(_ddp_logits())
    GOLDEN.parent.mkdir(exist_ok=True)
    np.savez_compressed(GOLDEN, _environment=np.array(environment()), **arrays)
    print(f"wrote {len(arrays)} arrays to {GOLDEN} ({environment()})")


if __name__ == "__main__":
    record(with_ddp="--ddp" in sys.argv[1:])
