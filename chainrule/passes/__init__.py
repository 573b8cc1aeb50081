"""Passes over the IR: shape inference, autodiff, simplification, CSE, dead-code elimination.

`manager` names them, groups them into presets and runs pipelines.
"""
from .autodiff import autodiff, gradient_name, gradient_prefix
from .cse import eliminate_common_subexpressions
from .dce import eliminate_dead_code, select_outputs
from .infer import infer_shapes
from .simplify import simplify

__all__ = ["autodiff", "gradient_name", "gradient_prefix", "eliminate_common_subexpressions",
           "eliminate_dead_code", "select_outputs", "infer_shapes", "simplify"]
