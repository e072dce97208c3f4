"""Make sparsity pay: FLOPs accounting, real sparse inference and compressed model files.

- :func:`efficiency_report`: parameters and inference/training FLOPs of a masked network;
- :func:`export_sparse`: a copy whose sparse linear layers compute in CSR form;
- :func:`save` / :func:`load` (from :mod:`rest_fair.persistence`): compressed, pickle-free
  model files;
- :func:`to_sparse_training`: very sparse linear layers trained as CSR (optional path).
"""

from __future__ import annotations

from ..persistence import FORMAT_VERSION, ModelFileError, load, save
from .export import SparseExport, SparseLinearChain, export_sparse, module_nbytes
from .flops import efficiency_report
from .sparse_training import SparseTrainableLinear, load_dense_weights, to_sparse_training

__all__ = [
    "FORMAT_VERSION",
    "ModelFileError",
    "SparseExport",
    "SparseLinearChain",
    "SparseTrainableLinear",
    "efficiency_report",
    "export_sparse",
    "load",
    "load_dense_weights",
    "module_nbytes",
    "save",
    "to_sparse_training",
]
