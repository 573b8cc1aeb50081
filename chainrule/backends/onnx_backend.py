"""Export to standard ONNX, and a backend that runs the export in onnxruntime."""
from __future__ import annotations

import itertools
import re
import weakref

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ir import ChainruleError, Graph, Value, dims
from ..ir.symbols import check_bound, symbol_sources
from ..ir.types import NARROW_DTYPES, NUMPY_NAMES, UNKNOWN, dtype_of_numpy, numpy_dtype
from .feeds import CheckedFeeds, check_arrays
from .onnx_lowering import LOWERINGS, ONNX_DTYPES
from .onnx_widening import widened
from .onnxruntime_edges import (carrier, fed_name, fetched_name, from_carrier, to_carrier,
                                value_edge_name, with_carried_edges)
from . import onnx_scan  # noqa: F401 - registers the scan's lowering
from .opset import DEFAULT_OPSET
from .threads import SESSION_POOL_MIN_FLOPS, threads_for

MIN_OPSET = 13
# The first opset whose Cast (and so whose tensors) has each of these dtypes: an export with
# values of one writes at least that opset, whatever was asked for.
DTYPE_OPSETS = {"f8e4m3fn": 19, "f8e4m3fnuz": 19, "f8e5m2": 19, "f8e5m2fnuz": 19, "u4": 21,
                "i4": 21, "f4e2m1": 23, "f8e8m0": 24, "u2": 25, "i2": 25}
# Reductions other than ReduceSum take their axes as an input from opset 18 on.
AXES_INPUT_SINCE = {"ReduceSum": 13}


class OnnxEmitter:
    """Collects the ONNX nodes of one graph (the model's, or a scan's body); fresh names never
    clash with the IR's, which contain no '#'.

    `training` tells stochastic ops' lowerings which mode the model is exported for. A body's
    emitter has the emitter of the graph around it as `parent`, and shares its counter, so
    names stay unique across the model as ONNX requires of a graph and its subgraphs.
    """

    def __init__(self, opset: int, training: bool = False, symbols: dict | None = None,
                 parent: OnnxEmitter | None = None):
        self.opset = opset
        self.training = training
        # Each symbol's source, (ONNX name, axis), and its size as a tensor once computed.
        self.symbols = symbols or {}
        self.symbol_sizes: dict[str, str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.doc = ""
        self.lowering = ""  # the name of the IR value whose node is being lowered
        self.parent = parent
        self.counter = parent.counter if parent else itertools.count(1)
        # The ONNX name of each value of a body (its IR name may be taken outside it); the
        # model's own values keep their IR names.
        self.names: dict[Value, str] = {}

    def fresh(self, hint: str) -> str:
        """A new name, prefixed by the IR value being lowered (so `value#Hint7`): an
        onnxruntime error names the node, and the prefix leads back to the IR node."""
        count = next(self.counter)
        prefix = self.lowering or hint
        return f"{prefix}#{hint if self.lowering else ''}{count}"

    def name(self, value: Value) -> str:
        """The value's ONNX name in the graph being emitted."""
        return self.names.get(value, value.name)

    def lower(self, nodes) -> None:
        """Append the ONNX nodes of each IR node, through its op's lowering."""
        for node in nodes:
            self.doc = node.loc.described() if node.loc else ""
            self.lowering = self.name(node.outputs[0])
            LOWERINGS[node.op](self, node, self.lowering, *(self.name(v) for v in node.inputs))
        self.doc = self.lowering = ""

    def nested(self, body: Graph, prefix: str, outer: dict[Value, str]) -> OnnxEmitter:
        """The emitter of a body whose inputs in `outer` stand for the values of those ONNX
        names around it; its own values are named `prefix#body/value`, unique in the model
        when `prefix` is the name of the node that holds the body."""
        emitter = OnnxEmitter(self.opset, self.training, parent=self)
        own = [v for v in body.inputs if v not in outer]
        own += [v for node in body.nodes for v in node.outputs]
        emitter.names = {value: f"{prefix}#body/{value.name}" for value in own} | outer
        emitter.symbols = {symbol: (emitter.name(value), axis)
                           for symbol, (value, axis) in symbol_sources(body).items()}
        return emitter

    def branch(self) -> OnnxEmitter:
        """The emitter of a subgraph of no graph of its own (an If's branch): it reads this
        graph's values by their names, and sizes are computed in this graph, outside it."""
        emitter = OnnxEmitter(self.opset, self.training, parent=self)
        emitter.names = self.names
        return emitter

    def value_info(self, value: Value, name: str | None = None) -> onnx.ValueInfoProto:
        return _value_info(value, name or self.name(value))

    def add(self, op_type: str, inputs, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type)
        # Named after its output: onnxruntime's errors name the node, which then leads back
        # to the IR value and its DSL line.
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out,
                                           doc_string=self.doc, **attrs))
        return out

    def tensor(self, array: np.ndarray, name: str) -> onnx.TensorProto:
        return tensor_proto(array, name)

    def const(self, array: np.ndarray, hint: str = "const") -> str:
        name = self.fresh(hint)
        return self.add("Constant", [], name, value=self.tensor(array, name))

    def ints(self, values, hint: str = "ints") -> str:
        """A constant int64 tensor: 1-D from a list or tuple, a scalar from an int."""
        return self.const(np.asarray(values, dtype=np.int64), hint)

    def scalar(self, value: float, dtype: str) -> str:
        return self.const(np.asarray(value, dtype=numpy_dtype(dtype)), "scalar")

    def dim(self, x: str, axis: int) -> str:
        """x's size along `axis` at run time, as a 1-D tensor of one int64."""
        return self.add("Gather", [self.add("Shape", [x]), self.ints([axis], "axis")])

    def dims(self, values, hint: str = "shape") -> str:
        """A 1-D int64 tensor of `values`: numbers as a constant, symbolic dims (`B*H`)
        computed from the inputs' shapes with standard shape ops."""
        if all(isinstance(d, int) for d in values):
            return self.ints(list(values), hint)
        return self.add("Concat", [self.size(d) for d in values], axis=0)

    def size(self, dim) -> str:
        """One dim as a 1-D tensor of one int64."""
        return dims.compute(dim, _ShapeArithmetic(self))

    def symbol_size(self, symbol: str) -> str:
        """The symbol's size, read off the input that binds it (export_onnx has checked that
        one does for every size attr) once per graph. In a body, the graph around it computes
        the sizes it can, before the loop and once, and the body reads them from there."""
        if symbol not in self.symbol_sizes:
            if self.parent is not None and self.parent.binds(symbol):
                return self.parent.symbol_size(symbol)
            if symbol not in self.symbols:  # a type's symbol that only expressions hold
                raise ChainruleError(f"exporting %{self.lowering} needs the size {symbol}, "
                                     f"which no input declares as a dim of its own")
            self.symbol_sizes[symbol] = self.dim(*self.symbols[symbol])
        return self.symbol_sizes[symbol]

    def binds(self, symbol: str) -> bool:
        """Whether this graph, or one around it, has an input that gives the symbol's size."""
        return symbol in self.symbols or (self.parent is not None and self.parent.binds(symbol))

    def reduce(self, op_type, x, axes, keepdims: bool, out=None) -> str:
        keep = int(bool(keepdims))
        if axes is None:
            return self.add(op_type, [x], out, keepdims=keep)
        if self.opset >= AXES_INPUT_SINCE.get(op_type, 18):
            return self.add(op_type, [x, self.ints(axes, "axes")], out, keepdims=keep)
        return self.add(op_type, [x], out, axes=list(axes), keepdims=keep)

    def unsqueeze(self, x, axes, out=None) -> str:
        return self.add("Unsqueeze", [x, self.ints(axes, "axes")], out)


class _ShapeArithmetic:
    """dims.compute's arithmetic as ONNX nodes on 1-D int64 tensors of one element."""

    def __init__(self, emitter: OnnxEmitter):
        self.emitter = emitter

    def number(self, n: int) -> str:
        return self.emitter.ints([n], "size")

    def symbol(self, name: str) -> str:
        return self.emitter.symbol_size(name)

    def add(self, a, b):
        return self.emitter.add("Add", [a, b])

    def mul(self, a, b):
        return self.emitter.add("Mul", [a, b])

    def floordiv(self, a, b):
        # Div truncates, and a quotient's numerator may be negative: (a - a mod b) / b is
        # exact, and Mod takes the divisor's sign as Python's % does.
        exact = self.emitter.add("Sub", [a, self.mod(a, b)])
        return self.emitter.add("Div", [exact, b])

    def mod(self, a, b):
        return self.emitter.add("Mod", [a, b])


def _value_info(value: Value, name: str | None = None) -> onnx.ValueInfoProto:
    """The value's ONNX type (under `name`, by default its own): the full checker requires a
    shape on every graph output, even an input's copy. A symbolic dim is a dim_param written
    as the IR writes it (`B*H`)."""
    shape = [None if d == UNKNOWN else d if isinstance(d, int) else str(d)
             for d in value.type.shape]
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
    opset = max(opset, _dtype_opset(graph))
    check_bound(graph)
    # Where each symbol's size is read, should a lowering need it (a size attr, a reshape to
    # a type's symbolic dims): only what is asked for is computed.
    symbols = {symbol: (value.name, axis)
               for symbol, (value, axis) in symbol_sources(graph).items()}
    emitter = OnnxEmitter(opset, training, symbols)
    emitter.lower(graph.nodes)

    inputs = [_value_info(v) for v in graph.inputs]
    initializers = []
    if params_as_inputs:
        inputs += [_value_info(v) for v in graph.param_values()]
    else:
        params = params or {}
        initializers = [tensor_proto(params[v.name], v.name)
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
    return widened(model)


def tensor_proto(array, name: str) -> onnx.TensorProto:
    """An array as an ONNX tensor. bf16 and float8 arrays are written as their raw bytes, which
    are ONNX's layout: onnx before 1.17 does not read ml_dtypes arrays."""
    array = np.asarray(array)
    if array.dtype.name in ("bfloat16", *(NUMPY_NAMES[d] for d in NARROW_DTYPES
                                           if d.startswith("f8"))):
        return helper.make_tensor(name, ONNX_DTYPES[dtype_of_numpy(array.dtype)], array.shape,
                                  np.ascontiguousarray(array).tobytes(), raw=True)
    return numpy_helper.from_array(array, name)


def _dtype_opset(graph: Graph) -> int:
    """The least opset that has every dtype of the graph's values."""
    values = itertools.chain(graph.inputs, graph.param_values(),
                             (out for node in graph.nodes for out in node.outputs))
    needed = max((DTYPE_OPSETS.get(v.type.dtype, MIN_OPSET) for v in values), default=MIN_OPSET)
    if needed > onnx.defs.onnx_opset_version():
        raise ChainruleError(f"the graph's dtypes need ONNX opset {needed}, and onnx "
                             f"{onnx.__version__} writes at most opset "
                             f"{onnx.defs.onnx_opset_version()}")
    return needed


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
        # The sessions this backend made, by graph and then by mode (training or not): an
        # entry goes with its graph, which a session runner refers to weakly.
        self.runners: weakref.WeakKeyDictionary[Graph, dict[bool, _SessionRunner]] = (
            weakref.WeakKeyDictionary())

    def session(self, graph: Graph, training: bool = False):
        return self._runner(graph, training).session

    def _runner(self, graph: Graph, training: bool) -> _SessionRunner:
        runners = self.runners.get(graph)  # a lookup makes a weak reference: one per call
        if runners is None:
            runners = self.runners[graph] = {}
        if training not in runners:
            model = export_onnx(graph, opset=self.opset, params_as_inputs=True,
                                training=training)
            # Through a proxy: an entry holding its own key would never leave the cache.
            runners[training] = _SessionRunner(weakref.proxy(graph), model)
        return runners[training]

    def run(self, graph: Graph, inputs: dict, params: dict, *,
            training: bool = False, rng=None) -> dict[str, np.ndarray]:
        return self._runner(graph, training).run(inputs, params)

    def step_runner(self, graph: Graph, carried: dict[str, str], rng=None) -> ResidentStep:
        """A train step (`graph` in training mode) that keeps its params and the inputs named
        in `carried` (optimizer state) in onnxruntime from call to call; `carried` maps each
        held value to the output that replaces it after a step. (`rng` is not used: onnxruntime
        draws dropout masks from its own generator.)"""
        return ResidentStep(self._runner(graph, True), graph, carried)


def session_options(graph: Graph, threads: int | None = None):
    """The options every session is created with, chosen by measurement (README, Performance:
    the 2-core machine, alone and beside numpy's BLAS in one process, quiet and with one core
    kept busy by another process); `threads` in place of the setting's choice at the graph's
    fixed sizes."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # fatal only: run() reports failures itself
    # chainrule's threads setting; under auto, a pool of the free cores only for a graph with
    # a product large enough at its fixed sizes, or at the first call's (_SessionRunner.
    # size_for). A pool's sleeping threads cost a wake-up in every op onnxruntime splits,
    # which took small steps up to 3x their time on one thread (docs/performance.md,
    # threads). One intra-op thread means no pool at all: the calling thread computes, and
    # nothing waits for a descheduled worker.
    options.intra_op_num_threads = threads or session_threads(graph)
    # The graphs are chains: nodes run one after another, so no inter-op pool either.
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    # Pool threads that spin between ops keep a core at 100% (CPU/wall 2.0 on a tiny model)
    # and take it from numpy's BLAS threads in the same process and from other processes;
    # without spinning a second thread pays a wake-up per op instead.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if any(value.type.dtype == "f64" for value in graph.values()):
        # onnxruntime's extended optimisations fuse standard ops into com.microsoft ones
        # (MatMul + Transpose into FusedMatMul) that some versions, 1.23 among them, only
        # implement for float32, so the session would fail to load. Basic optimisations
        # keep standard ops.
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    elif any(0 in value.type.shape for value in graph.values()):
        # A dim fixed at 0 (--dim T=0): onnxruntime 1.32's optimisations, basic ones too,
        # fold an Expand to the shape [0, 0, 8] as [0, 1, 8], and a MatMul after it fails.
        # An empty graph has nothing worth optimising.
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    else:
        # Every optimisation for float32 graphs: measured no slower than basic or extended
        # on the train steps, and sessions are created once per graph.
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def session_threads(graph: Graph, sizes: dict | None = None) -> int:
    """A session's intra-op threads: the setting's, or under auto a pool of the free cores for
    a graph whose largest product at `sizes` pays for one (threads.SESSION_POOL_MIN_FLOPS)."""
    return threads_for(largest_product_flops(graph, sizes), SESSION_POOL_MIN_FLOPS)


def _gemm_inner(node):
    return node.inputs[0].type.shape[-2 if node.attrs["trans_a"] else -1]


# What one output element of each product costs, in multiply-adds: its inner size.
_INNER_SIZE = {
    "matmul": lambda node: node.inputs[0].type.shape[-1],
    "gemm": _gemm_inner,
    "gemm_acc": _gemm_inner,
    "conv": lambda node: dims.product(node.inputs[1].type.shape[1:]),
    "conv_transpose": lambda node: dims.product(node.inputs[1].type.shape[1:]),
    "conv_weight_grad": lambda node: dims.product(node.output.type.shape[1:]),
}


def largest_product_flops(graph: Graph, sizes: dict | None = None) -> int:
    """The floating-point operations of the graph's largest matrix product or convolution, its
    symbolic dims at `sizes` and any other at 1; 0 without one. conv_transpose is counted per
    input element, as it computes."""
    sizes = sizes or {}
    largest = 0
    for node in graph.nodes:
        inner = _INNER_SIZE.get(node.op)
        if inner is None:
            continue
        outer = node.inputs[0].type.shape if node.op == "conv_transpose" else (
            node.inputs[1].type.shape if node.op == "conv_weight_grad" else node.output.type.shape)
        factors = [_size(d, sizes) for d in (*outer, inner(node))]
        if all(factor is not None for factor in factors):
            largest = max(largest, 2 * int(np.prod(factors, dtype=np.float64)))
    return largest


def _size(dim, sizes: dict) -> int | None:
    """A dim's size with its symbols at `sizes`, or at 1 where not given; None if unknown."""
    if dim == UNKNOWN:
        return None
    return dims.evaluate(dim, {symbol: sizes.get(symbol, 1) for symbol in dims.symbols(dim)})


class _SessionRunner:
    """One onnxruntime session and what each call needs: input and output names."""

    def __init__(self, graph: Graph, model: onnx.ModelProto):
        self.graph, self.model = graph, with_carried_edges(model).SerializeToString()
        self.session = self.new_session(session_options(graph))
        self.sized = False  # whether the first call's sizes have chosen the session's threads
        self.feeds = CheckedFeeds(graph)
        used = {i.name for i in self.session.get_inputs()}
        values = list(graph.inputs) + graph.param_values()
        # Positions of the arrays onnxruntime takes (an unused input is pruned from the model),
        # each with its name and the cast to its carrier at the session's edge.
        self.fed = [(index, edge, to_carrier_cast(value.type.dtype))
                    for index, value in enumerate(values)
                    if (edge := value_edge_name(value.name, value.type.dtype, fed_name))
                    in used]
        self.output_names = [value_edge_name(output_name(v, graph), v.type.dtype, fetched_name)
                             for v in graph.outputs]
        self.fetched = [(v.name, from_carrier_cast(v.type.dtype)) for v in graph.outputs]
        self.nodes_by_output = {out.name: node for node in graph.nodes for out in node.outputs}

    def new_session(self, options):
        import onnxruntime

        try:
            return onnxruntime.InferenceSession(self.model, options,
                                                providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime's errors share no base class
            # The exporter wrote a model onnxruntime cannot load: chainrule's fault, said so
            # in one line rather than a traceback, with the -b numpy way around it.
            raise ChainruleError(f"onnxruntime could not load the exported graph "
                                 f"({_status_message(error)}); this is a chainrule bug, and "
                                 f"the numpy backend may run the model meanwhile",
                                 self.graph.loc) from None

    def size_for(self, feeds: CheckedFeeds) -> None:
        """At the first call, whose arrays `feeds` has checked: the session is made anew with a
        pool of more threads if the setting gives them to a product at that call's sizes (a
        session is first made before any batch, its symbolic dims at 1); later calls keep it."""
        if self.sized:
            return
        self.sized = True
        threads = session_threads(self.graph, feeds.first_dims)
        if threads > self.session.get_session_options().intra_op_num_threads:
            self.session = self.new_session(session_options(self.graph, threads))

    def run(self, inputs: dict, params: dict) -> dict[str, np.ndarray]:
        arrays = self.feeds.arrays(inputs, params)
        self.size_for(self.feeds)
        feeds = {}
        for index, name, cast in self.fed:
            feeds[name] = arrays[index] if cast is None else arrays[index].astype(cast)
        try:
            results = self.session.run(self.output_names, feeds)
        except Exception as error:  # noqa: BLE001 - onnxruntime's errors share no base class
            raise self.located(error) from None
        return {name: result if cast is None else result.astype(cast)
                for (name, cast), result in zip(self.fetched, results, strict=True)}

    def located(self, error: Exception) -> ChainruleError:
        """onnxruntime's failure as a ChainruleError at the DSL line of the node it names."""
        message = _status_message(error)
        named = re.search(r"node\. Name:'([^']*)'", str(error))
        node = self.nodes_by_output.get(named.group(1).split("#")[0]) if named else None
        where = f"while computing %{node.outputs[0].name} = {node.op}(...)" if node else \
            "while running the graph"
        return ChainruleError(f"onnxruntime failed {where}: {message}", node.loc if node else None)


def _fixed_buffer(value: Value) -> np.ndarray | None:
    """An array for an output of a fixed shape to be written into (as its carrier), or None."""
    if not all(isinstance(dim, int) for dim in value.type.shape):
        return None
    return np.zeros(value.type.shape, numpy_dtype(carrier(value.type.dtype)))


def to_carrier_cast(dtype: str) -> np.dtype | None:
    """The cast a checked array of `dtype` takes to cross into a session: to its carrier, or
    None when it crosses as it is (onnxruntime_edges.to_carrier, worked out once)."""
    return numpy_dtype(carrier(dtype)) if carrier(dtype) != dtype else None


def from_carrier_cast(dtype: str) -> np.dtype | None:
    """The cast a fetched array of `dtype` takes back from its carrier, or None."""
    return numpy_dtype(dtype) if carrier(dtype) != dtype else None


def _status_message(error: Exception) -> str:
    """onnxruntime's own words, without the source path and C++ signature it may start with."""
    message = str(error).split("Status Message:")[-1].strip()
    if message.startswith("/onnxruntime_src"):
        message = message.rsplit("] ", 1)[-1]
    return message


class ResidentStep:
    """A train step whose params and optimizer state stay in onnxruntime between calls.

    Each carried value (one that an output of the step replaces) has two buffers, numpy arrays
    that OrtValues wrap without a copy. A step reads one and writes the other through IO
    binding, and then they swap: no step allocates, copies or converts them. Held values
    that no output replaces (frozen params) are bound once. Two bindings, one per direction
    of the swap, are made up front, so a step binds only the batch and the learning rate.
    """

    def __init__(self, runner: _SessionRunner, graph: Graph, carried: dict[str, str]):
        # The graph itself, not the cache's proxy: a runner works on after its caller lets
        # the graph go.
        self.runner, self.graph = runner, graph
        self.held_values = [v for v in graph.inputs if v.name in carried] + graph.param_values()
        self.feeds = CheckedFeeds(graph, held={v.name for v in self.held_values})
        used = {i.name for i in runner.session.get_inputs()}
        # Names and arrays at the session's edge: a dtype numpy holds through ml_dtypes is
        # fed, fetched and held as its carrier (onnxruntime_edges.py).
        self.fed = [(index, edge, to_carrier_cast(v.type.dtype))
                    for index, v in enumerate(self.feeds.fed)
                    if (edge := value_edge_name(v.name, v.type.dtype, fed_name)) in used]
        onnx_names = {v.name: value_edge_name(output_name(v, graph), v.type.dtype, fetched_name)
                      for v in graph.outputs}
        self.dtypes = {v.name: v.type.dtype for v in [*self.held_values, *graph.outputs]}
        buffers = [{}, {}]  # the two sets of held arrays, by name
        for value in self.held_values:
            array = np.zeros(value.type.shape, numpy_dtype(carrier(value.type.dtype)))
            buffers[0][value.name] = array
            buffers[1][value.name] = np.zeros_like(array) if value.name in carried else array
        self.buffers = buffers
        self.parity = 0  # buffers[parity] holds the current values
        # Outputs other than the carried ones (objective, metrics) come back as numpy. One of
        # a fixed shape is written into a buffer of its own and copied out: fetching it with
        # get_outputs() costs about 3 µs a step, as much as the rest of the step's Python.
        replaced = {onnx_names[name] for name in carried.values()}
        returned = [v for v in graph.outputs if onnx_names[v.name] not in replaced]
        self.returned = [(index, v.name, _fixed_buffer(v), from_carrier_cast(v.type.dtype))
                         for index, v in enumerate(returned)]
        self.fetches = any(buffer is None for _, _, buffer, _ in self.returned)
        self.used, self.onnx_names, self.carried = used, onnx_names, carried
        self.bind(runner.session)

    def bind(self, session) -> None:
        """The two bindings of `session`, one per parity: the held buffers (wrapped, not
        copied) as inputs, and the other parity's as the carried outputs."""
        import onnxruntime

        self.bound_session, self.bindings = session, []
        self.ort_values = []  # kept alive as long as the bindings that use them
        for parity in (0, 1):
            binding = session.io_binding()
            for name, array in self.buffers[parity].items():
                edge = value_edge_name(name, self.dtypes[name], fed_name)
                if edge in self.used:
                    value = onnxruntime.OrtValue.ortvalue_from_numpy(array)
                    self.ort_values.append(value)
                    binding.bind_ortvalue_input(edge, value)
            for _, name, buffer, _ in self.returned:  # first, so get_outputs() lists them
                if buffer is None:
                    binding.bind_output(self.onnx_names[name], "cpu")
                else:
                    out = onnxruntime.OrtValue.ortvalue_from_numpy(buffer)
                    self.ort_values.append(out)
                    binding.bind_ortvalue_output(self.onnx_names[name], out)
            for name, next_name in self.carried.items():
                out = onnxruntime.OrtValue.ortvalue_from_numpy(self.buffers[1 - parity][name])
                self.ort_values.append(out)
                binding.bind_ortvalue_output(self.onnx_names[next_name], out)
            self.bindings.append(binding)

    def load(self, values: dict) -> None:
        """Copy `values` (every held value by name) into the current buffers."""
        check_arrays(self.held_values, values, "param or state")
        for name, array in self.buffers[self.parity].items():
            np.copyto(array, to_carrier(np.asarray(values[name]), self.dtypes[name]))

    def values(self) -> dict[str, np.ndarray]:
        """The current held values: the live buffers (which the step after next overwrites),
        or copies of those a carrier holds."""
        return {name: from_carrier(array, self.dtypes[name])
                for name, array in self.buffers[self.parity].items()}

    def step(self, inputs: dict) -> dict[str, np.ndarray]:
        """One step on `inputs` (the batch and the learning rate): the outputs that replace
        no held value, by name."""
        arrays = self.feeds.fed_arrays(inputs, self.values)
        runner = self.runner
        runner.size_for(self.feeds)
        if runner.session is not self.bound_session:  # made anew for this batch's size
            self.bind(runner.session)
        binding = self.bindings[self.parity]
        for index, name, cast in self.fed:
            binding.bind_cpu_input(name, arrays[index] if cast is None
                                   else arrays[index].astype(cast))
        try:
            self.runner.session.run_with_iobinding(binding)
        except Exception as error:  # noqa: BLE001 - onnxruntime's errors share no base class
            raise self.runner.located(error) from None
        self.parity = 1 - self.parity
        outputs = binding.get_outputs() if self.fetches else None
        results = {}
        for index, name, buffer, cast in self.returned:
            # A buffer is the next step's too: what is returned is a copy.
            array = outputs[index].numpy() if buffer is None else buffer.copy()
            results[name] = array if cast is None else array.astype(cast)
        return results
