"""The graph IR: types, values, nodes, graphs, the op registry and the textual printer.

`ir` imports nothing from `dsl`, `passes` or `backends`: everything else builds on it.
"""
from .builder import GraphBuilder
from .dsl_printer import dsl_names, print_dsl
from .errors import ChainruleError, SourceLoc, file_error
from .graph import Derivation, Graph, InitSpec, Namer, Node, Param, Value
from .ops import OPS, OpDef, get_op, infer_type
from .printer import print_graph
from .shapes import OpTypeError
from .text import parse_graph
from .types import DTYPES, FLOAT_DTYPES, UNKNOWN, TensorType, numpy_dtype, scalar
from .verify import VerifyError, verify

__all__ = ["GraphBuilder", "ChainruleError", "SourceLoc", "file_error", "Graph", "InitSpec", "Namer", "Node",
           "Param", "Value", "OPS", "OpDef", "get_op", "infer_type", "print_graph",
           "OpTypeError", "DTYPES", "FLOAT_DTYPES", "numpy_dtype", "UNKNOWN", "TensorType",
           "scalar", "VerifyError", "verify", "parse_graph", "print_dsl", "dsl_names"]
