"""The numpy interpreter: runs any graph node by node with the numpy kernels.

The default numpy backend compiles graphs instead (numpy_compiled.py); the interpreter is the
reference it is tested against, and it checks every node's result for `--check-numerics`."""
from __future__ import annotations

import numpy as np

from ..ir import ChainruleError, Graph, get_op
from ..ir.types import NUMPY_DTYPES
from .feeds import check_feeds
from .numpy_kernels import KERNELS


class ExecutionError(ChainruleError):
    """A kernel failed at run time; names the node and its DSL line."""


class NumpyBackend:
    name = "numpy"

    def __init__(self, check_numerics: bool = False):
        # With check_numerics, the first node whose float result holds a NaN or an Inf stops
        # the run, named with its DSL line.
        self.check_numerics = check_numerics

    def run(self, graph: Graph, inputs: dict, params: dict, *, training: bool = False,
            rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Every output by name; `training` switches stochastic ops such as dropout on, drawing
        from `rng`."""
        missing = sorted({n.op for n in graph.nodes if n.op not in KERNELS})
        if missing:
            raise ChainruleError(f"no numpy kernel for op(s): {', '.join(missing)}")
        check_feeds(graph, inputs, params)
        env = {v: np.asarray(inputs[v.name]) for v in graph.inputs}
        env.update((v, np.asarray(params[v.name])) for v in graph.param_values())
        for node in graph.nodes:
            args = [env[v] for v in node.inputs]
            mode = ({"training": training, "rng": rng}
                    if "stochastic" in get_op(node.op).traits else {})
            try:
                with np.errstate(all="ignore"):
                    result = KERNELS[node.op](*args, **node.attrs, **mode)
            except Exception as error:
                raise ExecutionError(f"while computing %{node.outputs[0].name} = {node.op}(...): "
                                     f"{error}", node.loc) from error
            out = node.outputs[0]
            result = np.asarray(result)
            if self.check_numerics and result.dtype.kind == "f" and not np.isfinite(result).all():
                bad = "NaN" if np.isnan(result).any() else "Inf"
                raise ExecutionError(f"%{out.name} = {node.op}(...) produced {bad} "
                                     f"(--check-numerics)", node.loc)
            expected = NUMPY_DTYPES[out.type.dtype]
            env[out] = result if result.dtype == expected else result.astype(expected)
        return {v.name: env[v] for v in graph.outputs}
