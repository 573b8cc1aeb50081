"""chainrule: a small compiler for neural networks.

Data flows one way: front ends (dsl, onnx_import) -> ir -> passes -> backends; `api` and
`cli` sit on top.
"""
from .api import Model, compile, import_onnx
from .ir import ChainruleError
from .passes.optimizers import OptimizerSpec

__all__ = ["compile", "import_onnx", "Model", "ChainruleError", "OptimizerSpec"]
__version__ = "0.1.0"
