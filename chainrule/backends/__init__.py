"""Backends execute IR graphs: chosen by name, each in its own module."""
from __future__ import annotations

from ..ir import ChainruleError


def _numpy():
    from .numpy_compiled import CompiledNumpyBackend
    return CompiledNumpyBackend()


def _onnxruntime():
    from .onnx_backend import OnnxRuntimeBackend
    return OnnxRuntimeBackend()


# name -> factory; a new backend is one more entry.
BACKENDS = {"numpy": _numpy, "onnxruntime": _onnxruntime}


def get_backend(name: str):
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ChainruleError(f"unknown backend '{name}'; choose from "
                             f"{', '.join(BACKENDS)}") from None
