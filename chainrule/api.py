"""The Python API: `chainrule.compile(path_or_source)` and the Model it returns."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .backends import get_backend
from .backends.feeds import check_arrays
from .backends.onnx_backend import DEFAULT_OPSET, export_onnx
from .dsl import lower_source
from .fileio import atomic_write_bytes
from .ir import ChainruleError, Graph, print_graph
from .ir.init import initial_params
from .passes import autodiff, eliminate_dead_code, infer_shapes, select_outputs


def compile(path_or_source, *, seed: int = 0) -> Model:
    """Compile a `.nn` file (a path) or DSL source text into a Model.

    Params start from their init specs, drawn with numpy's Generator(seed).
    """
    text = str(path_or_source)
    if "\n" not in text and "{" not in text and Path(text).is_file():
        filename = text
        source = Path(text).read_text()
    else:
        filename, source = "<string>", text
    graph = lower_source(source, filename)
    graph, _ = infer_shapes(graph)
    return Model(graph, source, filename, seed=seed)


class Model:
    def __init__(self, graph: Graph, source: str, filename: str, *, seed: int = 0):
        self.graph = graph
        self.source = source
        self.filename = filename
        self.params = initial_params(graph, seed)

    # ---- interface ----------------------------------------------------------------------------

    @property
    def objective(self):
        return self.graph.outputs[0]

    def source_lines(self, file: str):
        return self.source.splitlines() if file == self.filename else None

    def set_params(self, arrays: dict) -> None:
        """Replace the named params' values; a name that is no param, or a wrong shape or
        dtype, is an error. Params not named keep their values."""
        by_name = {p.value.name: p.value for p in self.graph.params}
        unknown = sorted(set(arrays) - set(by_name))
        if unknown:
            raise ChainruleError(f"unknown param(s) {', '.join(unknown)}; the model's params "
                                 f"are {', '.join(by_name) or '(none)'}")
        named = [by_name[name] for name in arrays]
        check_arrays(named, {k: np.asarray(v) for k, v in arrays.items()}, "param")
        self.params.update({k: np.asarray(v) for k, v in arrays.items()})

    # ---- graphs -------------------------------------------------------------------------------

    def wrt_values(self, wrt=None):
        if wrt is None:
            return self.graph.param_values()
        by_name = {v.name: v for v in list(self.graph.inputs) + self.graph.param_values()}
        unknown = [name for name in wrt if name not in by_name]
        if unknown:
            raise ChainruleError(f"cannot differentiate with respect to {', '.join(unknown)}: "
                                 f"not an input or param (those are {', '.join(by_name)})")
        return [by_name[name] for name in wrt]

    def grad_graph(self, wrt=None) -> tuple[Graph, dict]:
        """The forward graph extended with the backward graph of the objective."""
        graph, grads = autodiff(self.graph, self.objective, self.wrt_values(wrt))
        graph, _ = eliminate_dead_code(graph)
        return graph, grads

    def ir(self, grad: bool = False) -> str:
        return print_graph(self.grad_graph()[0] if grad else self.graph)

    # ---- execution ----------------------------------------------------------------------------

    def run(self, backend: str = "numpy", **inputs) -> dict[str, np.ndarray]:
        """Every output of the model, by name."""
        return get_backend(backend).run(self.graph, inputs, self.params)

    def grad(self, wrt=None, backend: str = "numpy", **inputs) -> dict[str, np.ndarray]:
        """The objective under its name and each gradient under the name it differentiates."""
        graph, grads = self.grad_graph(wrt)
        results = get_backend(backend).run(graph, inputs, self.params)
        out = {self.objective.name: results[self.objective.name]}
        out.update((name, results[value.name]) for name, value in grads.items())
        return out

    def export_graph(self, grad: bool = False, outputs=None, wrt=None) -> Graph:
        graph = self.grad_graph(wrt)[0] if grad else self.graph
        if outputs:
            graph = select_outputs(graph, list(outputs))
        return graph

    def to_onnx(self, path=None, *, grad: bool = False, outputs=None, wrt=None,
                opset: int = DEFAULT_OPSET):
        """An ONNX ModelProto (written atomically to `path` when given)."""
        graph = self.export_graph(grad, outputs, wrt)
        model = export_onnx(graph, self.params, opset=opset)
        if path is not None:
            atomic_write_bytes(path, model.SerializeToString())
        return model
