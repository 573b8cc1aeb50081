"""Export to standard ONNX, and a backend that runs the export in onnxruntime."""
from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir import ChainruleError, Graph, Value
from ..ir.types import NUMPY_DTYPES, UNKNOWN
from .feeds import CheckedFeeds
from .onnx_lowering import LOWERINGS, ONNX_DTYPES

DEFAULT_OPSET = 18
MIN_OPSET = 13
# Reductions other than ReduceSum take their axes as an input from opset 18 on.
AXES_INPUT_SINCE = {"ReduceSum": 13}


class OnnxEmitter:
    """Collects ONNX nodes; fresh names never clash with the IR's, which contain no '#'.

    `training` tells stochastic ops' lowerings which mode the model is exported for.
    """

    def __init__(self, opset: int, training: bool = False):
        self.opset = opset
        self.training = training
        self.nodes: list[onnx.NodeProto] = []
        self.doc = ""
        self.lowering = ""  # the name of the IR value whose node is being lowered
        self.counter = 0

    def fresh(self, hint: str) -> str:
        """A new name, prefixed by the IR value being lowered (so `value#Hint7`): an
        onnxruntime error names the node, and the prefix leads back to the IR node."""
        self.counter += 1
        prefix = self.lowering or hint
        return f"{prefix}#{hint if self.lowering else ''}{self.counter}"

    def add(self, op_type: str, inputs, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type)
        # Named after its output: onnxruntime's errors name the node, which then leads back
        # to the IR value and its DSL line.
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out,
                                           doc_string=self.doc, **attrs))
        return out

    def tensor(self, array: np.ndarray, name: str) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array), name)

    def const(self, array: np.ndarray, hint: str = "const") -> str:
        name = self.fresh(hint)
        return self.add("Constant", [], name, value=self.tensor(array, name))

    def ints(self, values, hint: str = "ints") -> str:
        """A constant int64 tensor: 1-D from a list or tuple, a scalar from an int."""
        return self.const(np.asarray(values, dtype=np.int64), hint)

    def scalar(self, value: float, dtype: str) -> str:
        return self.const(np.asarray(value, dtype=NUMPY_DTYPES[dtype]), "scalar")

    def dim(self, x: str, axis: int) -> str:
        """x's size along `axis` at run time, as a 1-D tensor of one int64."""
        return self.add("Gather", [self.add("Shape", [x]), self.ints([axis], "axis")])

    def reduce(self, op_type, x, axes, keepdims: bool, out=None) -> str:
        keep = int(bool(keepdims))
        if axes is None:
            return self.add(op_type, [x], out, keepdims=keep)
        if self.opset >= AXES_INPUT_SINCE.get(op_type, 18):
            return self.add(op_type, [x, self.ints(axes, "axes")], out, keepdims=keep)
        return self.add(op_type, [x], out, axes=list(axes), keepdims=keep)

    def unsqueeze(self, x, axes, out=None) -> str:
        return self.add("Unsqueeze", [x, self.ints(axes, "axes")], out)


def _value_info(value: Value, name: str | None = None) -> onnx.ValueInfoProto:
    """The value's ONNX type (under `name`, by default its own): the full checker requires a
    shape on every graph output, even an input's copy."""
    shape = [None if d == UNKNOWN else d for d in value.type.shape]
    return helper.make_tensor_value_info(name or value.name, ONNX_DTYPES[value.type.dtype], shape)


def export_onnx(graph: Graph, params: dict | None = None, *, opset: int = DEFAULT_OPSET,
                params_as_inputs: bool = False, training: bool = False) -> onnx.ModelProto:
    """The graph as an ONNX model: params as initializers (or as inputs), locations as docs.

    `training` exports stochastic ops in training mode (dropout draws masks); by default they
    are exported for inference (dropout is the identity)."""
    if opset < MIN_OPSET or opset > onnx.defs.onnx_opset_version():
        raise ChainruleError(f"opset {opset} is not supported; use {MIN_OPSET} to "
                             f"{onnx.defs.onnx_opset_version()}")
    missing = sorted({n.op for n in graph.nodes if n.op not in LOWERINGS})
    if missing:
        raise ChainruleError(f"no ONNX lowering for op(s): {', '.join(missing)}")
    emitter = OnnxEmitter(opset, training)
    for node in graph.nodes:
        emitter.doc = node.loc.described() if node.loc else ""
        emitter.lowering = node.outputs[0].name
        LOWERINGS[node.op](emitter, node, node.outputs[0].name, *(v.name for v in node.inputs))
    emitter.doc = emitter.lowering = ""

    inputs = [_value_info(v) for v in graph.inputs]
    initializers = []
    if params_as_inputs:
        inputs += [_value_info(v) for v in graph.param_values()]
    else:
        params = params or {}
        initializers = [numpy_helper.from_array(np.asarray(params[v.name]), v.name)
                        for v in graph.param_values()]
    outputs = []
    for value in graph.outputs:
        name = output_name(value, graph)
        if name != value.name:  # an ONNX graph output must be produced by a node
            emitter.nodes.append(helper.make_node("Identity", [value.name], [name]))
        outputs.append(_value_info(value, name))
    output_names = {v.name for v in graph.outputs}
    value_infos = [_value_info(out) for node in graph.nodes for out in node.outputs
                   if out.name not in output_names]
    onnx_graph = helper.make_graph(emitter.nodes, graph.name, inputs, outputs, initializers,
                                   value_info=value_infos)
    opset_ids = [helper.make_opsetid("", opset)]
    model = helper.make_model(onnx_graph, opset_imports=opset_ids, producer_name="chainrule",
                              ir_version=helper.find_min_ir_version_for(opset_ids))
    return model


def output_name(value: Value, graph: Graph) -> str:
    """The ONNX name of a graph output: an input or param returned as it is gets a copy."""
    outside = set(graph.inputs) | set(graph.param_values())
    return f"{value.name}#out" if value in outside else value.name


class OnnxRuntimeBackend:
    """Runs a graph by exporting it (params as inputs) and calling onnxruntime.

    In training mode dropout masks come from onnxruntime's own generator (seeded by the op's
    seed), so they differ from the numpy backend's; within one run the forward and backward
    passes share each mask because the mask is one value of the graph.
    """

    name = "onnxruntime"

    def __init__(self, opset: int = DEFAULT_OPSET):
        self.opset = opset

    def session(self, graph: Graph, training: bool = False):
        return self._runner(graph, training).session

    def _runner(self, graph: Graph, training: bool) -> _SessionRunner:
        runners = graph.compiled.setdefault(self, {})  # training -> _SessionRunner
        if training not in runners:
            model = export_onnx(graph, opset=self.opset, params_as_inputs=True,
                                training=training)
            runners[training] = _SessionRunner(graph, model)
        return runners[training]

    def run(self, graph: Graph, inputs: dict, params: dict, *,
            training: bool = False, rng=None) -> dict[str, np.ndarray]:
        return self._runner(graph, training).run(inputs, params)


class _SessionRunner:
    """One onnxruntime session and what each call needs: input and output names."""

    def __init__(self, graph: Graph, model: onnx.ModelProto):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 4  # fatal only: run() reports failures itself
        if any(value.type.dtype == "f64" for value in graph.values()):
            # onnxruntime's extended optimisations fuse standard ops into com.microsoft ones
            # (MatMul + Transpose into FusedMatMul) that some versions, 1.23 among them, only
            # implement for float32, so the session would fail to load. Basic optimisations
            # keep standard ops; float32 graphs keep every optimisation.
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                    providers=["CPUExecutionProvider"])
        self.graph = graph
        self.feeds = CheckedFeeds(graph)
        used = {i.name for i in self.session.get_inputs()}
        names = [v.name for v in list(graph.inputs) + graph.param_values()]
        # Positions of the arrays onnxruntime takes (an unused input is pruned from the model).
        self.fed = [(index, name) for index, name in enumerate(names) if name in used]
        self.output_names = [output_name(v, graph) for v in graph.outputs]
        self.nodes_by_output = {node.outputs[0].name: node for node in graph.nodes}

    def run(self, inputs: dict, params: dict) -> dict[str, np.ndarray]:
        arrays = self.feeds.arrays(inputs, params)
        try:
            results = self.session.run(self.output_names,
                                       {name: arrays[index] for index, name in self.fed})
        except Exception as error:  # noqa: BLE001 - onnxruntime's errors share no base class
            raise self.located(error) from None
        return {v.name: r for v, r in zip(self.graph.outputs, results, strict=True)}

    def located(self, error: Exception) -> ChainruleError:
        """onnxruntime's failure as a ChainruleError at the DSL line of the node it names."""
        message = str(error).split("Status Message:")[-1].strip()
        if message.startswith("/onnxruntime_src"):  # a source path and C++ signature first
            message = message.rsplit("] ", 1)[-1]
        named = re.search(r"node\. Name:'([^']*)'", str(error))
        node = self.nodes_by_output.get(named.group(1).split("#")[0]) if named else None
        where = f"while computing %{node.outputs[0].name} = {node.op}(...)" if node else \
            "while running the graph"
        return ChainruleError(f"onnxruntime failed {where}: {message}", node.loc if node else None)
