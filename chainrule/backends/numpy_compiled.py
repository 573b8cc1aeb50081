"""The compiled numpy backend: a graph becomes one generated Python function.

The function calls numpy directly, keeps values in locals, deletes each intermediate after its
last use, and writes an elementwise result into a dying operand's buffer (`out=`) when shape,
dtype and aliasing allow. A group of elementwise nodes (`graph.groups`, -O2) runs as one fused
kernel when numba is installed and the group is large enough (fused_kernels.py), else node by
node. `generate_source` returns the code, which `chainrule ir --emit python` prints;
`memory_plan` says which buffers were reused.
"""
from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, field

import numpy as np

from ..ir import OPS, Graph, Node, Value, dims, get_op
from ..ir.gcpause import gc_paused
from ..ir.symbols import attr_symbols, check_bound, dim_attrs, symbol_sources
from ..ir.types import ML_DTYPES, UNKNOWN, numpy_dtype
from . import fused_kernels
from .feeds import CheckedFeeds, check_arrays
from .numpy_backend import ExecutionError
from .numpy_kernels import KERNELS
from .numpy_products import HALF_FLOATS, in_dtype
from .numpy_scan import StepError, scan_loop
from .threads import use_blas_threads

# Ops numpy computes with a ufunc, called as np.<ufunc>(inputs..., out=buffer) when in place.
UFUNCS = {op.name: op.numpy for op in OPS.values()
          if op.numpy is not None and isinstance(getattr(np, op.numpy), np.ufunc)}
# Ops written as numpy expressions in the generated code rather than as kernel calls.
INLINE = {
    "gemm": lambda args, attrs: (f"np.matmul({args[0]}{'.T' if attrs['trans_a'] else ''}, "
                                 f"{args[1]}{'.T' if attrs['trans_b'] else ''})"),
    "transpose": lambda args, attrs: f"{args[0]}.transpose({attrs['perm']!r})",
    "relu": lambda args, attrs: f"np.maximum({args[0]}, 0)",
}
# Ufuncs whose output may overwrite an input (elementwise: each element read before written).
ELEMENTWISE_UFUNCS = {name for name in UFUNCS if "elementwise" in OPS[name].traits}
# Ops whose kernels always return a new array: a ufunc's result is one. Any other op's result
# may be a view of its inputs (transpose, reshape, broadcasts, slices...), so the memory plan
# treats it as one.
FRESH_RESULT_OPS = set(UFUNCS) | {name for name, op in OPS.items()
                                  if "fresh_result" in op.traits}

@dataclass
class Plan:
    """What the compiler decided: variable names, deletions and in-place reuses."""

    names: dict = field(default_factory=dict)        # Value -> local variable
    frees: dict = field(default_factory=dict)        # node index -> values deleted after it
    in_place: dict = field(default_factory=dict)     # node index -> input Value reused as output
    fused: dict = field(default_factory=dict)        # first node index -> FusedGroup
    checked: set = field(default_factory=set)        # nodes whose labels the feeds check reads
    symbols: dict = field(default_factory=dict)      # symbol the attrs use -> (local, input, axis)


@dataclass
class FusedGroup:
    """A group of consecutive nodes that runs as one kernel, or node by node when small."""

    nodes: tuple
    kernel: object                  # a fused_kernels.Kernel
    operands: list                  # the Values it reads, in the kernel's argument order
    sized_by: Value                 # an operand of the result's shape: the size test reads it
    always: bool                    # the size is known and large enough: no test, no fallback
    out: Value | None = None        # a dying operand whose buffer takes the result


def _fixed_shape(value: Value) -> bool:
    return UNKNOWN not in value.type.shape


def plan_memory(graph: Graph, donate_params: bool = False) -> Plan:
    """Choose local names, where each value dies, and which results overwrite a dying operand.

    A value may be overwritten when its memory is its own (not a view, not a caller's array
    unless params are donated), nothing reads it or a view of it later, and it is no output.
    """
    plan = Plan()
    plan.names = {value: f"v{index}" for index, value in enumerate(graph.values())}
    # The buffers each value may share memory with: itself, or for a possible view, whatever
    # its inputs share.
    shares = {v: {v} for v in graph.values()}
    for node in graph.nodes:
        if node.op not in FRESH_RESULT_OPS:
            for out in node.outputs:  # a scan's carried value may be its first value
                shares[out] = {out}.union(*(shares[v] for v in node.inputs))
    last_read, last_read_through_views = {}, {}
    for index, node in enumerate(graph.nodes):
        for value in node.inputs:
            last_read[value] = index
            for buffer in shares[value]:
                last_read_through_views[buffer] = index
    caller_owned = set(graph.inputs) | (set() if donate_params else set(graph.param_values()))
    kept = set().union(*(shares[v] for v in graph.outputs)) if graph.outputs else set()
    fresh = {out for n in graph.nodes if n.op in FRESH_RESULT_OPS for out in n.outputs}
    if donate_params:
        fresh.update(graph.param_values())
    for index, node in enumerate(graph.nodes):
        if len(node.outputs) != 1:
            continue
        out = node.output
        if node.op == "gemm_acc":
            candidates = node.inputs[2:3]  # the sum goes into c; a and b are read whole first
        elif node.op in ELEMENTWISE_UFUNCS and out.type.rank > 0 and _fixed_shape(out):
            candidates = node.inputs
        else:
            continue
        for value in candidates:
            if (value in fresh and value not in caller_owned and value not in kept
                    and last_read_through_views.get(value) == index and value.type == out.type
                    and not any(value in shares[other] for other in node.inputs
                                if other is not value)
                    and node.inputs.count(value) == 1):
                plan.in_place[index] = value
                break
    for start, group in _fused_groups(graph).items():
        plan.fused[start] = group
        end, out = start + len(group.nodes) - 1, group.nodes[-1].output
        for value in group.operands:
            if (value in fresh and value not in caller_owned and value not in kept
                    and start <= last_read_through_views.get(value, -1) <= end
                    and value.type == out.type
                    and not any(value in shares[other]
                                for other in group.operands if other is not value)):
                group.out = value
                break
    plan.checked = _labels_checked_by_feeds(graph)
    plan.symbols = _symbol_variables(graph)
    kept_alive = set(graph.inputs) | set(graph.param_values()) | set(graph.outputs)
    for value, index in last_read.items():
        if value not in kept_alive:
            plan.frees.setdefault(index, []).append(value)
    return plan


def _labels_checked_by_feeds(graph: Graph) -> set:
    """The nodes that read a graph input as labels, with a kernel that can skip checking them:
    the feeds check has range-checked every such input before each call."""
    inputs = set(graph.inputs)
    checked = set()
    for index, node in enumerate(graph.nodes):
        operand = get_op(node.op).index_input
        if (operand is not None and node.inputs[operand.position] in inputs
                and "checked" in inspect.signature(KERNELS[node.op]).parameters):
            checked.add(index)
    return checked


def _fused_groups(graph: Graph) -> dict:
    """The groups that run as kernels, by the index of their first node."""
    if not graph.groups or not fused_kernels.available():
        return {}
    position = {node: index for index, node in enumerate(graph.nodes)}
    fused = {}
    for nodes in graph.groups:
        start = position[nodes[0]]
        written = fused_kernels.kernel_source(nodes)
        if written is None or graph.nodes[start:start + len(nodes)] != list(nodes):
            continue
        source, operands = written
        shape = nodes[-1].output.type.shape
        static = all(isinstance(dim, int) for dim in shape)
        if static and int(np.prod(shape)) < fused_kernels.KERNEL_MIN_ELEMENTS:
            continue
        sized_by = next(v for v in operands if v.type.shape == shape)
        always = static  # and large enough, from the test above
        fused[start] = FusedGroup(nodes, fused_kernels.kernel_for(source), operands, sized_by,
                                  always)
    return fused


def _literal(value) -> str:
    if isinstance(value, float):
        return repr(value) if np.isfinite(value) else f"float('{value}')"
    return repr(value)


def _dims_literal(value, symbols: dict) -> str:
    """Code for an attribute of sizes: a symbolic dim computes from the variables that hold
    its symbols' sizes (Plan.symbols)."""
    if isinstance(value, tuple):
        items = [_dims_literal(v, symbols) for v in value]
        return f"({', '.join(items)}{',' if len(items) == 1 else ''})"
    return dims.text(value, lambda symbol: symbols[symbol][0])


def _symbol_variables(graph: Graph) -> dict:
    """Each symbol the attributes use: its local variable, and the input and axis whose size
    it takes."""
    check_bound(graph)
    sources = symbol_sources(graph)
    return {symbol: (f"dim{index}", *sources[symbol])
            for index, symbol in enumerate(sorted(attr_symbols(graph)))}


def generate_source(graph: Graph, plan: Plan, function_name: str = "run") -> tuple[str, list]:
    """Python source of the compiled graph and the node of each generated line."""
    names = plan.names
    params = [names[v] for v in list(graph.inputs) + graph.param_values()]
    params += ["training", "rng"]
    lines = [f"def {function_name}({', '.join(params)}):"]
    line_nodes = [None]

    def emit(line: str, node: Node | None) -> None:
        lines.append(line)
        line_nodes.append(node)

    for symbol, (variable, value, axis) in plan.symbols.items():
        emit(f"    {variable} = {names[value]}.shape[{axis}]  # {symbol}", None)
    hoisted = _shape_dependent(graph)
    if hoisted:
        _emit_shape_values(graph, plan, hoisted, emit)
    index = 0
    while index < len(graph.nodes):
        group = plan.fused.get(index)
        if index in hoisted:
            index += 1
            continue
        if group is None:
            _emit_node(plan, index, graph.nodes[index], "    ", emit)
            index += 1
            continue
        _emit_kernel_call(plan, group, index, emit)
        if not group.always:
            emit("    else:", group.nodes[-1])
            for offset, node in enumerate(group.nodes):
                _emit_node(plan, index + offset, node, "        ", emit)
        index += len(group.nodes)
    outputs = ", ".join(names[v] for v in graph.outputs)
    emit(f"    return ({outputs}{',' if len(graph.outputs) == 1 else ''})", None)
    return "\n".join(lines) + "\n", line_nodes


def _shape_dependent(graph: Graph) -> list[int]:
    """The scalar nodes whose values follow from the inputs' shapes alone (a batch's numel, the
    1/B of a mean's gradient, and the constants they read), by index, or none if no node
    depends on a shape: computed once per shape signature rather than once per call."""
    returned = set(graph.outputs)
    dependent, constants = set(), {}
    for index, node in enumerate(graph.nodes):
        if len(node.outputs) != 1:
            continue
        out = node.output
        if node.op == "constant":
            constants[out] = index
        elif (out.type.rank != 0 or out in returned  # a caller may write into what it gets
              or "stochastic" in get_op(node.op).traits):
            continue
        elif node.op == "numel" and _input_shaped_like(node.inputs[0], graph) is not None:
            dependent.add(out)
        elif any(v in dependent for v in node.inputs) and all(
                v in dependent or v in constants for v in node.inputs):
            dependent.add(out)
    read = {constants[v] for node in graph.nodes if node.outputs[0] in dependent
            for v in node.inputs if v in constants}
    return sorted(read | {i for i, node in enumerate(graph.nodes)
                          if node.outputs[0] in dependent})


def _input_shaped_like(value: Value, graph: Graph) -> Value | None:
    """A graph input of value's shape (value itself if an input): the feeds check binds each
    symbolic dim to one size, so the two shapes are equal on every call."""
    if value in graph.inputs:
        return value
    if UNKNOWN in value.type.shape:
        return None
    return next((v for v in graph.inputs if v.type.shape == value.type.shape), None)


def _emit_shape_values(graph: Graph, plan: Plan, hoisted: list[int], emit) -> None:
    """The shape-dependent nodes, at the top, run only for a shape signature not seen before;
    their values the rest of the function reads are kept per signature in SHAPE_VALUES."""
    names = plan.names
    inside = set(hoisted)
    read_outside = set(graph.outputs).union(*(node.inputs for index, node in
                                              enumerate(graph.nodes) if index not in inside))
    kept = [graph.nodes[i].output for i in hoisted if graph.nodes[i].output in read_outside]
    # Each numel reads an input of its operand's shape: the block runs before the operand is.
    nodes = {index: graph.nodes[index] for index in hoisted}
    for index, node in nodes.items():
        if node.op == "numel":
            shaped_like = (_input_shaped_like(node.inputs[0], graph),)
            nodes[index] = Node(node.op, shaped_like, node.attrs, node.outputs, node.loc)
    shaped = list(dict.fromkeys(node.inputs[0] for node in nodes.values()
                                if node.op == "numel"))
    kept_names = ", ".join(names[v] for v in kept) + ","
    emit(f"    shapes = ({', '.join(f'{names[v]}.shape' for v in shaped)},)", None)
    emit("    known = SHAPE_VALUES.get(shapes)", None)
    emit("    if known is None:", None)
    # Only the block's own values that nothing after it reads are deleted in it.
    internal = {node.output for node in nodes.values()} - set(kept)
    for index, node in nodes.items():
        _emit_node(plan, index, node, "        ", emit, deletable=internal)
    emit(f"        known = SHAPE_VALUES[shapes] = ({kept_names})", None)
    emit("    else:", None)
    emit(f"        {kept_names} = known", None)


def _emit_kernel_call(plan: Plan, group: FusedGroup, start: int, emit) -> None:
    """The group's kernel call, under a size test unless its size is known to be large."""
    names, result = plan.names, group.nodes[-1]
    indent = "    "
    if not group.always:
        emit(f"    if {names[group.sized_by]}.size >= {fused_kernels.KERNEL_MIN_ELEMENTS}:",
             result)
        indent = "        "
    buffer = (names[group.out] if group.out is not None
              else f"np.empty({names[group.sized_by]}.shape, "
                   f"DTYPES[{result.output.type.dtype!r}])")
    args = ", ".join([names[v] for v in group.operands] + [buffer])
    members = ", ".join(f"%{node.output.name}" for node in group.nodes[:-1])
    comment = f"  # %{result.output.name}" + (f" (fused: {members})" if members else " (fused)")
    emit(f"{indent}{names[result.output]} = {group.kernel.name}({args}){comment}", result)
    inside = {node.output for node in group.nodes}
    dead = [names[v] for offset in range(len(group.nodes))
            for v in plan.frees.get(start + offset, []) if v not in inside]
    if dead:
        emit(f"{indent}del {', '.join(dead)}", result)


def _half_float(node: Node) -> bool:
    """Whether the node computes in f16 or bf16, whose products the gemm kernel runs in f32."""
    return numpy_dtype(node.output.type.dtype).name in HALF_FLOATS


def _emit_node(plan: Plan, index: int, node: Node, indent: str, emit, deletable=None) -> None:
    if node.op == "scan":
        _emit_scan(plan, index, node, indent, emit)
        return
    names = plan.names
    out = names[node.output]
    args = [names[v] for v in node.inputs]
    reused = plan.in_place.get(index)
    if node.op == "constant":
        call = f"CONSTANTS[{index}]"
    elif node.op in INLINE and not (node.op == "gemm" and _half_float(node)):
        call = INLINE[node.op](args, node.attrs)
        if node.op == "gemm":  # the kernels set these threads in numpy_products.matmul
            columns = 0 if node.attrs["trans_b"] else 1
            emit(f"{indent}USE_BLAS_THREADS(2 * {args[0]}.size * {args[1]}.shape[{columns}])",
                 node)
    elif node.op in UFUNCS:
        out_arg = f", out={names[reused]}" if reused is not None else ""
        call = f"np.{UFUNCS[node.op]}({', '.join(args)}{out_arg})"
    else:
        sizes = dim_attrs(node)
        keywords = [f"{k}={_dims_literal(v, plan.symbols) if k in sizes else _literal(v)}"
                    for k, v in node.attrs.items()]
        if "stochastic" in get_op(node.op).traits:
            keywords += ["training=training", "rng=rng"]
        if reused is not None:  # gemm_acc, accumulating into its dying c
            keywords.append("overwrite=True")
        if index in plan.checked:
            keywords.append("checked=True")
        call = f"K_{node.op}({', '.join(args + keywords)})"
    dtype = node.output.type.dtype
    if dtype in ML_DTYPES and node.op not in UFUNCS:
        # A kernel's Python scalars meeting bfloat16 give float32 (numpy 2.0, ml_dtypes 0.5):
        # cast back, as the interpreter does.
        call = f"IN_DTYPE({call}, DTYPES[{dtype!r}])"
    comment = f"  # %{node.output.name}" + (" (in place)" if reused is not None else "")
    emit(f"{indent}{out} = {call}{comment}", node)
    dead = [names[v] for v in plan.frees.get(index, []) if v is not plan.in_place.get(index)
            and (deletable is None or v in deletable)]
    if dead:
        emit(f"{indent}del {', '.join(dead)}", node)


def _emit_scan(plan: Plan, index: int, node: Node, indent: str, emit) -> None:
    """A scan calls its loop (SCANS, made by compile_graph), which calls the compiled body."""
    names = plan.names
    outs = ", ".join(names[v] for v in node.outputs)
    # The outer values every step reads are made contiguous once: a transposed weight (a view)
    # multiplies at half BLAS's speed, at every step.
    first_outer = node.attrs["carried"] + node.attrs["scanned"]
    args = ", ".join(names[v] if position < first_outer or v.type.rank < 2
                     else f"np.ascontiguousarray({names[v]})"
                     for position, v in enumerate(node.inputs))
    length = _dims_literal(node.attrs["length"], plan.symbols)
    comment = "  # " + ", ".join(f"%{v.name}" for v in node.outputs)
    emit(f"{indent}{outs}, = SCANS[{index}](({args},), {length}, training, rng){comment}", node)
    dead = [names[v] for v in plan.frees.get(index, [])]
    if dead:
        emit(f"{indent}del {', '.join(dead)}", node)


class ScanRunner:
    """A scan node's loop around its compiled body: the body is compiled once, with the graph,
    and each step is one call of its function."""

    def __init__(self, node: Node):
        self.node = node
        # No feeds check runs on a body's inputs: its kernels check their labels themselves.
        self.body = compile_graph(node.attrs["body"], check_labels=True)

    def __call__(self, operands: tuple, length: int, training: bool, rng) -> tuple:
        function = self.body.function
        try:
            return scan_loop(lambda *inputs: function(*inputs, training, rng), self.node,
                             operands, length)
        except StepError as failed:
            raise self._located(failed) from failed.error

    def _located(self, failed: StepError) -> Exception:
        """The body's failure, named with the body's node and the step it failed at."""
        error = failed.error
        if isinstance(error, ExecutionError):
            return ExecutionError(f"at step {failed.step} of the scan: {error.message}",
                                  error.loc)
        node = self.body._failing_node(error)
        if node is None:
            return error
        return ExecutionError(f"at step {failed.step} of the scan, while computing "
                              f"%{node.outputs[0].name} = {node.op}(...): {error}", node.loc)


@dataclass
class CompiledGraph:
    graph: Graph  # a weak proxy when a backend's cache keyed by the graph holds it
    source: str
    function: object
    line_nodes: list
    plan: Plan
    scans: dict = field(default_factory=dict)  # node index -> ScanRunner

    feeds: CheckedFeeds = None

    def __post_init__(self):
        self.feeds = CheckedFeeds(self.graph)
        self.output_names = [v.name for v in self.graph.outputs]
        # Overflow and invalid values are the model's own (run and train report NaN and Inf
        # themselves). As a decorator errstate costs a quarter of a `with` block per call.
        self.quiet_function = np.errstate(all="ignore")(self.function)

    def __call__(self, inputs: dict, params: dict, training: bool = False, rng=None) -> dict:
        return self.call(self.feeds.arrays(inputs, params), training, rng)

    def listing(self) -> str:
        """The generated source, followed by each scan body's (`ir --emit python`)."""
        parts = [self.source]
        for index, runner in self.scans.items():
            results = ", ".join(f"%{v.name}" for v in runner.node.outputs)
            parts.append(f"\n# SCANS[{index}]: the body of {results}, called once per step\n"
                         + runner.body.listing())
        return "".join(parts)

    def call(self, arrays: list, training: bool = False, rng=None) -> dict:
        """Run on the inputs' then the params' arrays, in the graph's order, as the feeds check
        returns them: kernels leave out the label checks it has made."""
        return dict(zip(self.output_names, self.results(arrays, training, rng), strict=True))

    def results(self, arrays: list, training: bool = False, rng=None) -> list[np.ndarray]:
        """`call`'s outputs as a list, in the graph's order."""
        try:
            results = self.quiet_function(*arrays, training, rng)
        except ExecutionError:
            raise  # a scan's body failed: located at the body's node already
        except Exception as error:
            node = self._failing_node(error)
            if node is None:
                raise
            raise ExecutionError(f"while computing %{node.outputs[0].name} = {node.op}(...): "
                                 f"{error}", node.loc) from error
        return [result if type(result) is np.ndarray else np.asarray(result)
                for result in results]

    def _failing_node(self, error) -> Node | None:
        traceback = error.__traceback__
        while traceback is not None:
            if traceback.tb_frame.f_code is self.function.__code__:
                return self.line_nodes[traceback.tb_lineno - 1]
            traceback = traceback.tb_next
        return None


@gc_paused
def compile_graph(graph: Graph, donate_params: bool = False,
                  check_labels: bool = False) -> CompiledGraph:
    """The graph as a Python function; with `check_labels` its kernels check the labels they
    read, else they leave that to the feeds check of the graph's inputs."""
    plan = plan_memory(graph, donate_params)
    if check_labels:
        plan.checked = set()
    source, line_nodes = generate_source(graph, plan)
    namespace = {"np": np, "CONSTANTS": {}, "SHAPE_VALUES": {},
                 "SCANS": {index: ScanRunner(node) for index, node in enumerate(graph.nodes)
                           if node.op == "scan"}}
    namespace.update((f"K_{op}", kernel) for op, kernel in KERNELS.items())
    namespace.update((group.kernel.name, group.kernel) for group in plan.fused.values())
    # By chainrule's names: bfloat16 and the narrow dtypes are ml_dtypes', not attributes of np.
    namespace["DTYPES"] = {v.type.dtype: numpy_dtype(v.type.dtype) for v in graph.values()}
    namespace["IN_DTYPE"] = in_dtype
    namespace["USE_BLAS_THREADS"] = use_blas_threads
    for index, node in enumerate(graph.nodes):
        if node.op == "constant":
            namespace["CONSTANTS"][index] = KERNELS["constant"](**node.attrs)
    code = compile(source, f"<chainrule:{graph.name}>", "exec")
    exec(code, namespace)
    return CompiledGraph(graph, source, namespace["run"], line_nodes, plan, namespace["SCANS"])


class CompiledNumpyBackend:
    """The numpy backend: each graph compiled once to a Python function, then called."""

    name = "numpy"

    def __init__(self, donate_params: bool = False):
        self.donate_params = donate_params
        # What this backend compiled, by graph: an entry goes with its graph, which the
        # compiled graph refers to weakly.
        self.compiled_graphs: weakref.WeakKeyDictionary[Graph, CompiledGraph] = (
            weakref.WeakKeyDictionary())

    def compiled(self, graph: Graph) -> CompiledGraph:
        compiled = self.compiled_graphs.get(graph)  # one lookup: each makes a weak reference
        if compiled is None:
            # Through a proxy: an entry holding its own key would never leave the cache.
            compiled = self.compiled_graphs[graph] = compile_graph(weakref.proxy(graph),
                                                                   self.donate_params)
        return compiled

    def run(self, graph: Graph, inputs: dict, params: dict, *, training: bool = False,
            rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        compiled = self.compiled(graph)
        return compiled.call(compiled.feeds.arrays(inputs, params), training, rng)

    def step_runner(self, graph: Graph, carried: dict[str, str], rng=None) -> ResidentStep:
        """A train step (`graph`, run in training mode with `rng` for its dropout masks) that
        holds its params and the inputs named in `carried` from call to call; `carried` maps
        each held value to the output that replaces it after a step."""
        return ResidentStep(self.compiled(graph), graph, carried, rng)


class ResidentStep:
    """A train step whose params and optimizer state stay with the numpy backend between calls,
    as onnxruntime's do (onnx_backend.ResidentStep): a step checks and passes only the batch and
    the learning rate, and the outputs that replace a held value become the held value. With
    params donated the step writes their next values into their own buffers where it can, so
    `load` copies the caller's arrays in rather than holding them."""

    def __init__(self, compiled: CompiledGraph, graph: Graph, carried: dict[str, str], rng):
        # The graph itself, not the cache's proxy: a runner works on after its caller lets
        # the graph go.
        self.compiled, self.graph, self.rng = compiled, graph, rng
        self.held_values = [v for v in graph.inputs if v.name in carried] + graph.param_values()
        self.feeds = CheckedFeeds(graph, held={v.name for v in self.held_values})
        fed_position = {v.name: index for index, v in enumerate(self.feeds.fed)}
        # Each argument of the function: the position of a fed array, or None for a held one.
        self.arguments = [(fed_position.get(v.name), v.name)
                          for v in list(graph.inputs) + graph.param_values()]
        self.current = {v.name: np.zeros(v.type.shape, numpy_dtype(v.type.dtype))
                        for v in self.held_values}
        position = {v.name: index for index, v in enumerate(graph.outputs)}
        self.replaced = [(position[next_name], name) for name, next_name in carried.items()]
        replacing = set(carried.values())
        self.returned = [(index, v.name) for index, v in enumerate(graph.outputs)
                         if v.name not in replacing]

    def load(self, values: dict) -> None:
        """Copy `values` (every held value by name) in."""
        check_arrays(self.held_values, values, "param or state")
        self.current = {v.name: np.array(values[v.name], numpy_dtype(v.type.dtype))
                        for v in self.held_values}

    def values(self) -> dict[str, np.ndarray]:
        """The current held values: the live arrays, which a later step may overwrite."""
        return dict(self.current)

    def step(self, inputs: dict) -> dict[str, np.ndarray]:
        """One step on `inputs` (the batch and the learning rate): the outputs that replace
        no held value, by name."""
        current = self.current
        fed = self.feeds.fed_arrays(inputs, self.values)
        results = self.compiled.results([current[name] if index is None else fed[index]
                                         for index, name in self.arguments], True, self.rng)
        for index, name in self.replaced:
            current[name] = results[index]
        return {name: results[index] for index, name in self.returned}


def describe_plan(graph: Graph, plan: Plan) -> str:
    """`--print-memory-plan`: which results overwrite which buffers, and when values die."""
    lines = [f"# memory plan for {graph.name}: {len(plan.in_place)} results computed in place, "
             f"{sum(len(v) for v in plan.frees.values())} intermediates freed after last use"]
    for index, node in enumerate(graph.nodes):
        notes = []
        group = plan.fused.get(index)
        if group is not None:
            into = f", writing into %{group.out.name}" if group.out is not None else ""
            lines.append(f"#   %{group.nodes[-1].output.name}: one kernel for "
                         f"{len(group.nodes)} nodes{into}")
        if index in plan.in_place:
            notes.append(f"writes into %{plan.in_place[index].name}")
        freed = [f"%{v.name}" for v in plan.frees.get(index, [])]
        if freed:
            notes.append("frees " + ", ".join(freed))
        if notes:
            lines.append(f"#   %{node.outputs[0].name} = {node.op}: {'; '.join(notes)}")
    return "\n".join(lines)


