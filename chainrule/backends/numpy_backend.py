"""The numpy backend: runs any graph of the IR node by node with the numpy kernels."""
from __future__ import annotations

import numpy as np

from ..ir import ChainruleError, Graph
from ..ir.types import NUMPY_DTYPES
from .feeds import check_feeds
from .numpy_kernels import KERNELS


class ExecutionError(ChainruleError):
    """A kernel failed at run time; names the node and its DSL line."""


class NumpyBackend:
    name = "numpy"

    def run(self, graph: Graph, inputs: dict, params: dict) -> dict[str, np.ndarray]:
        check_feeds(graph, inputs, params)
        env = {v: np.asarray(inputs[v.name]) for v in graph.inputs}
        env.update((v, np.asarray(params[v.name])) for v in graph.param_values())
        for node in graph.nodes:
            args = [env[v] for v in node.inputs]
            try:
                with np.errstate(all="ignore"):
                    result = KERNELS[node.op](*args, **node.attrs)
            except Exception as error:
                raise ExecutionError(f"while computing %{node.outputs[0].name} = {node.op}(...): "
                                     f"{error}", node.loc) from error
            out = node.outputs[0]
            result = np.asarray(result)
            expected = NUMPY_DTYPES[out.type.dtype]
            env[out] = result if result.dtype == expected else result.astype(expected)
        return {v.name: env[v] for v in graph.outputs}
