"""chainrule: a small compiler for neural networks.

Data flows one way: front ends (dsl, onnx_import) -> ir -> passes -> backends; `api` and
`cli` sit on top.

The names below load on first use, so `import chainrule` (and every command line call) costs
only what it uses: onnx, onnxruntime, Ray and numba load when a model is exported, imported,
run on onnxruntime, trained on workers or fused.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
PUBLIC = {
    "compile": "api", "import_onnx": "api", "Model": "api",
    "ChainruleError": "ir", "InputNote": "data",
    "OptimizerSpec": "passes.optimizers", "ParamGroup": "passes.optimizers",
    "Trainer": "train", "TrainConfig": "train", "History": "train",
}
__all__ = sorted(PUBLIC)


def __getattr__(name: str):
    if name not in PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{PUBLIC[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(PUBLIC))
