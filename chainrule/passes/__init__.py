"""Passes over the IR: shape inference, autodiff, dead-code elimination."""
from .autodiff import autodiff, gradient_name
from .dce import eliminate_dead_code, select_outputs
from .infer import infer_shapes

__all__ = ["autodiff", "gradient_name", "eliminate_dead_code", "select_outputs", "infer_shapes"]
