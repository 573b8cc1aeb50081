"""Backends execute IR graphs: chosen by name, each in its own module, each a `Backend`
(protocol.py)."""
from __future__ import annotations

from ..ir import ChainruleError
from .opset import DEFAULT_OPSET
from .protocol import CHECKING_BACKEND, Backend, StepRunner
from .threads import apply_blas_threads


def _numpy(donate_params: bool = False):
    from .numpy_compiled import CompiledNumpyBackend
    return CompiledNumpyBackend(donate_params)


def _onnxruntime(donate_params: bool = False):
    from .onnx_backend import OnnxRuntimeBackend
    return OnnxRuntimeBackend()


def _numpy_checking(donate_params: bool = False):
    from .numpy_backend import NumpyBackend
    return NumpyBackend(check_numerics=True)


# name -> factory; a new backend is one more entry. These are the implementations of their
# own that --backend offers and that gradcheck compares.
BACKENDS = {"numpy": _numpy, "onnxruntime": _onnxruntime}
EVERY_BACKEND = {**BACKENDS, CHECKING_BACKEND: _numpy_checking}  # what get_backend accepts

__all__ = ["BACKENDS", "CHECKING_BACKEND", "DEFAULT_OPSET", "Backend", "StepRunner",
           "get_backend"]


def get_backend(name, *, donate_params: bool = False) -> Backend:
    """The backend called `name` (a backend object is returned as it is). With donate_params
    the caller gives up the param arrays it passes, so a backend may write updated params into
    them (a train step's in-place update)."""
    if not isinstance(name, str):
        return name
    apply_blas_threads()  # numpy's BLAS takes chainrule's threads setting before it runs
    try:
        return EVERY_BACKEND[name](donate_params=donate_params)
    except KeyError:
        raise ChainruleError(f"unknown backend '{name}'; choose from "
                             f"{', '.join(EVERY_BACKEND)}") from None
