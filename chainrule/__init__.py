"""chainrule: a small compiler for neural networks.

Data flows one way: dsl -> ir -> passes -> backends; `api` and `cli` sit on top.
"""
from .api import Model, compile
from .ir import ChainruleError
from .passes.optimizers import OptimizerSpec

__all__ = ["compile", "Model", "ChainruleError", "OptimizerSpec"]
__version__ = "0.1.0"
