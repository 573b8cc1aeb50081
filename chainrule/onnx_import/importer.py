"""Importing an ONNX model: its graph becomes chainrule IR through the same builder the DSL
uses. Float initializers become params (weights train; constants the exporter folded in stay
frozen), other constants are folded where they fix a shape, and every node that cannot be
imported is reported at once, by op type and node name, with every reason it has. The walk
goes on past a failed node: its outputs stand in with their declared types, so nodes
downstream are still tried on their own account."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper, version_converter

from ..fileio import MAX_ONNX_BYTES, read_bytes
from ..ir import ChainruleError, Graph, GraphBuilder, InitSpec, Param, Value, dims, file_error
from ..ir.errors import SourceLoc, onnx_node_loc, printable
from ..ir.limits import check_graph_sizes, type_size_problem
from ..ir.ops import OPS
from ..ir.symbols import dim_attrs, map_dims
from ..ir.types import DTYPE_OF_ONNX, UNKNOWN, TensorType, is_float
from .context import (ABSENT, CONVERTERS, PREVIEW_DOMAIN, Absent, Known, NodeContext,
                      TensorSequence, Unsupported, dim_hint, dtype_of_array)
from .data_dependent import DATA_DEPENDENT_LENGTHS, data_dependent_shape
from .external_data import external_array, is_external
from .folding import FOLDERS, substituted_shape
from .ml import ML_DOMAIN, ML_OPS
from .training_ops import TRAINING_DOMAIN, TRAINING_OPS

# What a converter's own bug raises (numpy on a malformed constant, an index past the end).
INTERNAL_ERRORS = (ArithmeticError, AttributeError, IndexError, KeyError, TypeError,
                   ValueError)
# The default domain's opsets chainrule reads: 13 (axes as inputs) to what onnx knows.
MIN_OPSET = 13
DEFAULT_DOMAINS = ("", "ai.onnx")
# A constant with more values than this stays a tensor rather than folding into attributes.
FOLD_LIMIT = 1 << 16
# Inputs that hold a constant of the model, never a weight: training an exponent changes what
# the model computes (and Pow's gradient there is NaN over negative bases).
CONSTANT_POSITIONS = {"Pow": (1,)}
# Inputs that hold a weight even when it is one value: PReLU's single slope, a one-channel
# norm's scale, the bias of a Linear with one output.
WEIGHT_POSITIONS = {"Gemm": (1, 2), "Conv": (1, 2), "ConvTranspose": (1, 2), "PRelu": (1,),
                    "BatchNormalization": (1, 2), "InstanceNormalization": (1, 2),
                    "LayerNormalization": (1, 2), "GroupNormalization": (1, 2)}
# Inputs whose fresh value is ones: a norm's scale, batch norm's running variance.
ONES_POSITIONS = {"BatchNormalization": (1, 4), "InstanceNormalization": (1,),
                  "LayerNormalization": (1,), "GroupNormalization": (1,)}
OP_NOT_SUPPORTED = "op not supported"


@dataclass(frozen=True)
class Problem:
    """One node that cannot be imported, and why."""

    op_type: str
    node: str
    reason: str
    # The ONNX value that would have to be known at import time, when that is the reason.
    needs_constant: str | None = None
    # chainrule itself failed on the node: a bug to report, not a limit of the op table.
    internal: bool = False
    # What the user can do about it, where something is known (a --dim for a symbolic dim).
    hint: str | None = None
    # The sequence- or optional-typed graph input whose element shapes must be given.
    needs_elements: str | None = None

    # The model's names are foreign text: printed escaped, so that each stays on its line.
    def __str__(self) -> str:
        return printable(f"{self.op_type} node '{self.node}': {self.reason}")

    @property
    def note(self) -> str:
        return printable(f"{self.op_type}: {self.reason}" +
                         (f" (hint: {self.hint})" if self.hint else ""))


class NodeFailure(Exception):
    """Every reason one node cannot be imported. `own` hold whatever its inputs are (its op,
    its attributes); `from_inputs` is the converter's refusal of the inputs it met, which says
    nothing when those inputs stand in for a failed node's outputs."""

    def __init__(self, own: list[Unsupported], from_inputs: Unsupported | None = None):
        super().__init__("; ".join(map(str, [*own, *filter(None, [from_inputs])])))
        self.own = own
        self.from_inputs = from_inputs


def missing_ops(file: str, problems: list[Problem]) -> tuple:
    """One closing note naming the ops chainrule would need to import the model."""
    ops = sorted({p.op_type for p in problems if p.reason == OP_NOT_SUPPORTED})
    if not ops:
        return ()
    return ((SourceLoc(file, 0, 0), f"the model needs ONNX ops chainrule does not import: "
                                    f"{', '.join(ops)}"),)


class UnsupportedModel(ChainruleError):
    """Every node of a model that chainrule cannot import, in one error; or, with `message`,
    the one reason the whole model cannot be (its opset)."""

    def __init__(self, file: str, problems: list[Problem], message: str | None = None):
        nodes = len({(p.op_type, p.node) for p in problems})
        count = f"{nodes} node{'s' if nodes != 1 else ''}"
        notes = () if message else tuple(
            (onnx_node_loc(file, p.node), p.note) for p in problems) + missing_ops(file, problems)
        super().__init__(message or f"cannot import {count} of this ONNX model",
                         SourceLoc(file, 0, 0), notes)
        self.problems = problems


@dataclass
class Imported:
    """An imported graph and the values of its params and frozen constants, by IR name."""

    graph: Graph
    params: dict[str, np.ndarray]
    # ONNX value name -> IR value name, for inputs, outputs and initializers.
    names: dict[str, str] = field(default_factory=dict)
    # What the import did that its user should know (an older opset converted).
    notes: list[str] = field(default_factory=list)
    # ONNX sequence-typed input or output name -> the IR names of its tensors, in order.
    sequences: dict[str, list[str]] = field(default_factory=dict)


def upgraded(model: onnx.ModelProto, file: str) -> tuple[onnx.ModelProto, list[str]]:
    """The model at opset MIN_OPSET if it declares an older default-domain opset, converted by
    onnx.version_converter, with a note saying so; else the model itself."""
    old = [e.version for e in model.opset_import
           if e.domain in DEFAULT_DOMAINS and e.version < MIN_OPSET]
    if not old:
        return model, []
    version = old[0]
    if version < 9 and any(node.op_type == "Scan" for node in _every_node(model.graph)):
        # Scan 8 steps through a batch axis with per-row lengths; the converter keeps its
        # nodes as they are, which opset 9's Scan then reads otherwise.
        reason = f"Scan at opset {version} (a batch axis and sequence lengths) is not supported"
        raise UnsupportedModel(file, [Problem("opset", "", reason)],
                               f"{reason}; export the model at opset 9 or newer")
    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as error:  # noqa: BLE001 - the converter's own failure, reported
        reason = (f"opset {version} is older than chainrule reads ({MIN_OPSET} and newer), "
                  f"and onnx.version_converter could not convert it: {error}")
        raise UnsupportedModel(file, [Problem("opset", "", reason)], reason) from None
    return converted, [f"{printable(file)}: converted from opset {version} to {MIN_OPSET} "
                       f"with onnx.version_converter"]


def _every_node(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for body in [attribute.g, *attribute.graphs]:
                yield from _every_node(body)


def load_model(path_or_proto) -> tuple[onnx.ModelProto, str]:
    """The model and the file name its errors cite."""
    if isinstance(path_or_proto, onnx.ModelProto):
        path = f"<{path_or_proto.graph.name or 'model'}>.onnx"
        return checked_names(path_or_proto, path), path
    path = str(path_or_proto)
    data = read_bytes(path, MAX_ONNX_BYTES, "ONNX")
    try:
        model = onnx.load_from_string(data)
    except Exception as error:  # protobuf's DecodeError and friends
        raise file_error(path, f"not an ONNX model ({type(error).__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise file_error(path, "not an ONNX model (it has no graph)")
    return checked_names(model, path), path


def checked_names(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    """The model, unless protobuf could not decode one of its names (it gives such a string
    as bytes, which every later step would stumble on)."""
    graph = model.graph
    names = [graph.name]
    for node in graph.node:
        names += [node.name, node.op_type, node.domain, *node.input, *node.output,
                  *(a.name for a in node.attribute)]
    for info in (*graph.input, *graph.output):
        names += [info.name, *(d.dim_param for d in info.type.tensor_type.shape.dim)]
    names += [tensor.name for tensor in graph.initializer]
    undecodable = next((name for name in names if isinstance(name, bytes)), None)
    if undecodable is not None:
        raise file_error(path, f"not an ONNX model (the name {undecodable!r} is not UTF-8)")
    return model


def identifier(name: str, fallback: str = "v") -> str:
    """An ONNX name as an IR value name: `/fc1/Gemm_output_0` -> `fc1/Gemm_output_0`,
    `onnx::MatMul_12` -> `onnx_MatMul_12`."""
    cleaned = re.sub(r"[^A-Za-z0-9_./]", "_", name).lstrip("./")
    if not cleaned or not (cleaned[0].isalpha() or cleaned[0] == "_"):
        cleaned = f"{fallback}_{cleaned}" if cleaned else fallback
    return cleaned


def dim_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return cleaned if cleaned[:1].isalpha() or cleaned[:1] == "_" else f"d_{cleaned}"


# The expressions torch's dynamo exporter writes as dim_params, over its symbols s0, s1...
# (`2*s0`, `s0 + 1`), or over the names of the torch.export.Dim a user gave (`4*B`, `S - 1`,
# as sympy prints them: a minus between spaces); any other text with a letter in it is a name
# (`batch-size` is one).
DYNAMO_EXPRESSION = re.compile(r"(?:\s|\d|[-+*/%()]|s\d+)*[-+*/%](?:\s|\d|[-+*/%()]|s\d+)*")
ARITHMETIC = re.compile(r"[*+/%()]| - ")


def declared_dim(dim_param: str, fresh: str):
    """An input's dim as its dim_param declares it: a symbol (`batch-size` as batch_size), an
    expression the dynamo exporter writes (`2*s0`, `4*B`), or, where it names nothing (`?`, `-1`),
    the fresh symbol `fresh`."""
    if DYNAMO_EXPRESSION.fullmatch(dim_param) or ARITHMETIC.search(dim_param):
        try:
            expression = dims.parse(dim_param)
        except dims.NotADim:
            expression = None
        if isinstance(expression, int):
            return fresh  # `-1`, `0`: no size a dim can be
        if expression is not None:
            return dims.substitute(expression,
                                   {s: dim_name(s) for s in dims.symbols(expression)})
    return dim_name(dim_param) if re.search(r"[A-Za-z]", dim_param) else fresh


def tied_dims(op: str, shapes, fresh: set[str]) -> tuple[str, object] | None:
    """A fresh symbol and the dim an op's rule ties it to, where they differ: broadcasting
    lines the operands' dims up from the right, matmul its inner dims and batch dims."""
    if op == "matmul" and all(len(s) >= 2 for s in shapes):
        a, b = shapes
        pairs = [(a[-1], b[-2]), *_right_aligned([a[:-2], b[:-2]])]
    elif "elementwise" in OPS[op].traits:
        pairs = _right_aligned(shapes)
    else:
        return None
    for first, second in pairs:
        if first == second or 1 in (first, second) or UNKNOWN in (first, second):
            continue
        for symbol, dim in ((first, second), (second, first)):
            if symbol in fresh and symbol not in dims.symbols(dim):
                return symbol, dim
    return None


def _right_aligned(shapes) -> list[tuple]:
    """Every pair of dims that broadcasting lines up, of every two shapes."""
    pairs = []
    for index, first in enumerate(shapes):
        for second in shapes[index + 1:]:
            pairs += zip(reversed(first), reversed(second))
    return pairs


class Importer:
    def __init__(self, model: onnx.ModelProto, file: str, *, trainable=None, freeze=(),
                 dims=None, sequences=None, from_path: bool = False):
        self.model = model
        self.file = file
        # Whether `file` is the model's path, whose folder holds its external data.
        self.from_path = from_path
        # A graph's name is a plain name in the IR text: no `.` or `/` as a value's may hold.
        self.graph = Graph(re.sub(r"[./]", "_", identifier(model.graph.name or "imported",
                                                            "model")),
                           loc=SourceLoc(file, 0, 0))
        self.builder = GraphBuilder(self.graph)
        self.dims = dict(dims or {})
        # Sequence- and optional-typed input name -> the shapes of the tensors it holds.
        self.element_shapes = dict(sequences or {})
        self.sequence_names: dict[str, list[str]] = {}
        self.values: dict[str, Value | Known] = {}
        self.initializers: dict[str, np.ndarray] = {}
        self.params: dict[str, np.ndarray] = {}
        self.constants: dict[str, Value] = {}  # known ONNX values used as tensors
        self.names: dict[str, str] = {}
        self.trainable = None if trainable is None else set(trainable)
        self.freeze = set(freeze)
        self.problems: list[Problem] = []
        # What the import did that its user should know (a ZipMap read as a tensor).
        self.notes: list[str] = []
        # The Identity nodes that gave a merged initializer its own name (untie_initializers).
        self.untied: set[int] = set()
        # ONNX values nothing can stand in for (their type is unknown): a node reading one
        # inherits a failure, and is not reported.
        self.poisoned: set[str] = set()
        # ONNX values computed from a failed node's outputs, through stand-ins of their
        # declared type: nodes reading them are still tried, for problems of their own.
        self.tainted: set[str] = set()
        self.declared_infos: dict | None = None
        # Inputs chainrule cannot take at run time (empty, or int32) that could be constants.
        self.constant_only: set[str] = set()
        self.uses = self._count_uses()
        self.positions = self._input_positions()
        self.bound: set[Value] = set()  # values that already carry an ONNX name
        # The symbols made for input dims no name described: an op's rule may tie one to
        # another dim, which then replaces it everywhere (`unify`).
        self.fresh_symbols: set[str] = set()

    # ---- the walk -----------------------------------------------------------------------------

    def run(self) -> Imported:
        self.check_opsets()
        self.read_initializers()
        self.read_inputs()
        needed = needed_nodes(self.model.graph) - self.untied
        for index, node in enumerate(self.model.graph.node):
            if index in needed:
                self.convert(node, index)
        self.check_choice("--trainable", self.trainable)
        self.check_choice("--freeze", self.freeze)
        outputs = self.read_outputs()
        if self.problems:
            raise UnsupportedModel(self.file, self.problems)
        outputs += self.update_outputs()
        self.graph.outputs = [self.builder.current(v) for v in outputs]
        self.graph.objective = self.graph.outputs[0] if self.graph.outputs else None
        check_graph_sizes(self.graph)
        return Imported(self.graph, self.params, self.names, self.notes, self.sequence_names)

    def check_opsets(self) -> None:
        for entry in self.model.opset_import:
            if entry.domain in DEFAULT_DOMAINS and entry.version < MIN_OPSET:
                reason = (f"opset {entry.version} is older than chainrule reads ({MIN_OPSET} "
                          f"and newer)")
                raise UnsupportedModel(self.file, [Problem("opset", entry.domain, reason)],
                                       f"{reason}; convert the model with "
                                       f"onnx.version_converter first")
        self.opset = next((e.version for e in self.model.opset_import
                           if e.domain in DEFAULT_DOMAINS), MIN_OPSET)
        newest = onnx.defs.onnx_opset_version()
        if self.opset > newest:
            reason = f"opset {self.opset} is newer than the installed onnx knows ({newest})"
            raise UnsupportedModel(self.file, [Problem("opset", "", reason)],
                                   f"{reason}; upgrade onnx to import it")

    def read_initializers(self) -> None:
        for tensor in self.model.graph.initializer:
            array = self.initializer_array(tensor)
            self.initializers[tensor.name] = array
            if not is_float_array(array):
                self.values[tensor.name] = Known(array)
        self.untie_initializers()
        if self.model.graph.sparse_initializer:
            self.problems.append(Problem("graph", self.model.graph.name,
                                         "sparse initializers are not supported"))

    def untie_initializers(self) -> None:
        """PyTorch's exporter merges initializers of equal values into one and reads the others
        through Identity nodes: a fresh batch norm's running variance is `Identity(weight)`,
        a second layer's weight `Identity` of the first's. Each such output is a value of its
        own, as it was in the model: a copy of the values, trained or updated on its own."""
        merged = []
        for index, node in enumerate(self.model.graph.node):
            if node.op_type != "Identity" or node.domain not in DEFAULT_DOMAINS or \
                    len(node.input) != 1 or len(node.output) != 1 or not node.output[0]:
                continue
            source = node.input[0]
            if source in self.initializers and is_float_array(self.initializers[source]):
                self.initializers[node.output[0]] = self.initializers[source].copy()
                self.untied.add(index)
                merged.append(f"{node.output[0]} (= {source})")
        if merged:
            self.notes.append(printable(
                f"initializers the exporter merged with an equal one (read through Identity) "
                f"are imported as values of their own: {', '.join(merged)}"))

    def initializer_array(self, tensor) -> np.ndarray:
        if is_external(tensor):
            return external_array(tensor, self.file if self.from_path else None)
        try:
            return numpy_helper.to_array(tensor)
        except Exception as error:
            raise file_error(self.file, printable(f"initializer '{tensor.name}' cannot be "
                                                  f"read: {error}")) from None

    def read_inputs(self) -> None:
        for info in self.model.graph.input:
            if info.name in self.initializers:  # older exporters list initializers as inputs
                continue
            try:
                if info.type.WhichOneof("value") in ("sequence_type", "optional_type"):
                    value = self.structured_input(info)
                else:
                    value = self.graph_input(info.name, info)
            except Unsupported as error:
                self.problems.append(Problem("input", info.name, str(error), hint=error.hint,
                                             needs_elements=error.needs_elements))
                self.poisoned.add(info.name)
                if error.needs_constant:  # a node reading it as a constant says so
                    self.constant_only.add(info.name)
                continue
            self.values[info.name] = value
            if isinstance(value, Value):
                self.names[info.name] = value.name

    def graph_input(self, name: str, info) -> Value:
        """A tensor input of the graph, of the type `info` declares, named after `name`."""
        value_type = self.tensor_type(info)
        value = Value(self.builder.namer.fresh(identifier(name, "input")), value_type)
        self.graph.inputs.append(value)
        self.graph.input_locs[value.name] = SourceLoc(self.file, 0, 0, node=name)
        self.bound.add(value)
        return value

    def structured_input(self, info):
        """A sequence- or optional-typed input, as the shapes given for it lay it out: a
        sequence of n tensors is n graph inputs `name.0` ... `name.{n-1}`; an optional is
        ABSENT (given None) or what it holds."""
        if info.name not in self.element_shapes:
            kind = info.type.WhichOneof("value").removesuffix("_type")
            raise Unsupported(f"the {kind} input '{info.name}' has no element shapes given "
                              f"(chainrule fixes a sequence's length at import time)",
                              hint=f"give them as sequences={{'{info.name}': [shape, ...]}}",
                              needs_elements=info.name)
        return self.structured_value(info.name, info.type, self.element_shapes[info.name])

    def structured_value(self, name: str, declared, shapes):
        kind = declared.WhichOneof("value")
        if kind == "optional_type":
            if shapes is None:
                return ABSENT
            return self.structured_value(name, declared.optional_type.elem_type, shapes)
        if kind == "sequence_type" and shapes is not None:
            element = declared.sequence_type.elem_type
            values = TensorSequence(self.structured_value(f"{name}.{index}", element, shape)
                                    for index, shape in enumerate(shapes))
            self.sequence_names[name] = [value.name for value in values]
            return values
        if kind == "tensor_type" and shapes is not None:
            tensor = declared.tensor_type
            if tensor.HasField("shape") and len(tensor.shape.dim) != len(shapes):
                raise Unsupported(f"'{name}' is given the shape {list(shapes)}, where the model "
                                  f"declares a tensor of rank {len(tensor.shape.dim)}")
            return self.graph_input(name, onnx.helper.make_tensor_value_info(
                name, tensor.elem_type, list(shapes)))
        raise Unsupported(f"values of ONNX type '{kind}' (chainrule reads tensors, and "
                          f"sequences and optionals of them)")

    def tensor_type(self, info) -> TensorType:
        kind = info.type.WhichOneof("value")
        if kind != "tensor_type":
            raise Unsupported(f"values of ONNX type '{kind}' (chainrule reads tensors)")
        tensor = info.type.tensor_type
        if tensor.elem_type not in DTYPE_OF_ONNX:
            raise Unsupported(f"tensors of dtype {TensorProto.DataType.Name(tensor.elem_type)} "
                              f"(chainrule reads every dtype but strings and complex numbers)")
        if not tensor.HasField("shape"):
            raise Unsupported("a tensor of unknown rank")
        shape = []
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            else:
                fresh = dim_name(f"{identifier(info.name)}_{axis}")
                declared = declared_dim(dim.dim_param, fresh) if dim.dim_param else fresh
                if declared == fresh:
                    self.fresh_symbols.add(fresh)
                shape.append(dims.substitute(declared, self.dims))
        value_type = TensorType(DTYPE_OF_ONNX[tensor.elem_type], tuple(shape))
        problem = type_size_problem(value_type)
        if problem:
            raise Unsupported(problem)
        return value_type

    def convert(self, node, index: int) -> None:
        name = node.name or f"{node.op_type}_{index}"
        blocked = {i for i in node.input if i in self.poisoned}
        if blocked - self.constant_only:
            # Its inputs' failure is reported where it started; what is wrong with the node
            # whatever its inputs is its own.
            problem = self.fixed_problem(node)
            if problem is None:
                unknown = unknown_attributes(node, *self.opset_of(node))
                problem = Unsupported(attributes_not_supported(unknown)) if unknown else None
            if problem:
                self.problems.append(Problem(node.op_type, name, str(problem)))
            self.stand_in(node.output)
            return
        inherited = any(i in self.tainted for i in node.input)
        try:
            results = self.results_of(node, name)
        except INTERNAL_ERRORS as error:
            # A node no schema check caught (a constant of the wrong shape, an axis out of
            # range) must not end the import with a traceback: it is reported as the others.
            if not inherited:
                self.problems.append(Problem(node.op_type, name, f"chainrule failed on this "
                                             f"node ({type(error).__name__}: {error}); please "
                                             f"report it", internal=True))
            self.stand_in(node.output)
            return
        except NodeFailure as failure:
            errors = failure.own + ([failure.from_inputs] if failure.from_inputs and
                                    not inherited else [])
            # With an input only a constant could be, the node is at fault only when it needs
            # a constant; otherwise that input's own problem says it all.
            for error in errors:
                if not blocked or error.needs_constant:
                    needed = self.input_behind(error.needs_constant)
                    reason = str(error) + (f", computed from input '{needed}'"
                                           if needed != error.needs_constant else "")
                    self.problems.append(Problem(node.op_type, name, reason, needed,
                                                 hint=error.hint))
            self.stand_in(node.output)
            return
        if inherited:
            self.tainted.update(node.output)
        for output, result in zip(node.output, results):
            if output:
                self.bind(output, result)

    def input_behind(self, name: str | None) -> str | None:
        """Where a value must be a constant: the graph input it is computed from, which a user
        can make one (an expanded function computes a Range's limit from its size input), or
        the value itself when no graph input feeds it."""
        graph_inputs = [i.name for i in self.model.graph.input if i.name not in self.initializers]
        if name is None or name in graph_inputs:
            return name
        producers = {output: node for node in self.model.graph.node for output in node.output}
        seen, frontier = set(), [name]
        while frontier:
            current = frontier.pop()
            if current not in seen:
                seen.add(current)
                frontier.extend(i for i in getattr(producers.get(current), "input", ()) if i)
        return next((i for i in graph_inputs if i in seen), name)

    def stand_in(self, outputs) -> None:
        """A failed node's outputs, as values of their declared type, so that the nodes
        reading them are still tried; without a type they are poisoned."""
        for output in filter(None, outputs):
            info = self.declared_info(output)
            try:
                value_type = self.tensor_type(info) if info is not None else None
            except Unsupported:
                value_type = None
            if value_type is None:
                self.poisoned.add(output)
                continue
            value = Value(self.builder.namer.fresh(identifier(output)), value_type)
            self.values[output] = value
            self.bound.add(value)  # no node computes it, so nothing can rename it
            self.tainted.add(output)

    def declared_info(self, name: str):
        """The type the model declares for the value `name` (its value_info or outputs, which
        exporters write), or None. Not ONNX's shape inference: a stand-in is needed when a
        node has failed, and on a damaged node some onnx releases crash the process inside
        inference (1.16 did, in the tests)."""
        if self.declared_infos is None:
            graph = self.model.graph
            self.declared_infos = {info.name: info for info in (*graph.value_info, *graph.output)}
        return self.declared_infos.get(name)

    def results_of(self, node, name: str) -> list:
        """The node's results; NodeFailure with every reason it has, where they are many."""
        fixed = self.fixed_problem(node)
        if fixed:
            raise NodeFailure([fixed])
        ctx = NodeContext(self, node, onnx_node_loc(self.file, name))
        unknown = unknown_attributes(node, *self.opset_of(node))
        if unknown:  # onnx.checker refuses them too; the converter goes on without them
            for attr_name in unknown:
                del ctx.attributes[attr_name]
            ctx.attribute_problems.append(Unsupported(attributes_not_supported(unknown)))
        try:
            results = self.converted(ctx)
        except Unsupported as error:
            raise NodeFailure(ctx.attribute_problems, error) from None
        if ctx.attribute_problems:
            raise NodeFailure(ctx.attribute_problems)
        results = list(results)
        for index, output in enumerate(node.output):
            if output and index >= len(results) and self.is_used(output):
                raise NodeFailure([], Unsupported(f"output {index} ('{output}') is not "
                                                  f"supported"))
        return results

    def fixed_problem(self, node) -> Unsupported | None:
        """What stops the node whatever its inputs: its domain, its op, its schema."""
        if node.domain not in (*DEFAULT_DOMAINS, ML_DOMAIN, TRAINING_DOMAIN, PREVIEW_DOMAIN):
            return Unsupported(f"domain '{node.domain}' (chainrule reads the default domain, "
                               f"{ML_DOMAIN}, {TRAINING_DOMAIN} and {PREVIEW_DOMAIN})")
        if node.domain in DEFAULT_DOMAINS and node.op_type in DATA_DEPENDENT_LENGTHS:
            return Unsupported(data_dependent_shape(node.op_type))
        if node.domain == ML_DOMAIN and node.op_type not in ML_OPS or \
                node.domain == TRAINING_DOMAIN and node.op_type not in TRAINING_OPS or \
                node.op_type not in FOLDERS and node.op_type not in CONVERTERS:
            return Unsupported(OP_NOT_SUPPORTED)
        malformed = schema_violation(node, *self.opset_of(node))
        return Unsupported(malformed) if malformed else None

    def opset_of(self, node) -> tuple[int, str]:
        """The opset version the model imports for the node's domain, and the domain as
        onnx.defs names it."""
        if node.domain in DEFAULT_DOMAINS:
            return self.opset, ""
        return next((e.version for e in self.model.opset_import if e.domain == node.domain),
                    1), node.domain

    def converted(self, ctx: NodeContext) -> list:
        results = self.folded(ctx)
        if results is None:
            converter = CONVERTERS.get(ctx.node.op_type)
            if converter is None:
                raise Unsupported(OP_NOT_SUPPORTED)
            results = converter(ctx)
        unread = ctx.unread_attrs()
        if unread:
            ctx.attribute_problems.append(Unsupported(attributes_not_supported(unread)))
        return results

    def folded(self, ctx: NodeContext) -> list | None:
        """The node evaluated on its constant inputs, or None when it runs in the graph. numpy
        refusing the constants (shapes that do not broadcast, an index past the end, more dims
        than an array may have) means the model is malformed: that is reported, as an
        unsupported node is."""
        folder = FOLDERS.get(ctx.node.op_type)
        if folder is None:
            return None
        try:
            return folder(ctx)
        except (ArithmeticError, IndexError, TypeError, ValueError, RuntimeError) as error:
            raise Unsupported(f"its constant inputs cannot be evaluated ({error})") from None

    def bind(self, onnx_name: str, result) -> None:
        if isinstance(result, Value) and result not in self.bound:
            result = self.builder.rename(result, identifier(onnx_name))
            self.bound.add(result)
        if isinstance(result, TensorSequence):
            # Its tensors keep their names: a SequenceAt that reads one out must not rename
            # the value the sequence still holds.
            self.bound.update(v for v in result if isinstance(v, Value))
        self.values[onnx_name] = result

    def read_outputs(self) -> list[Value]:
        outputs = []
        for info in self.model.graph.output:
            if info.name in self.poisoned or info.name in self.tainted:
                continue
            if info.name not in self.values and info.name not in self.initializers:
                self.problems.append(Problem("output", info.name, "no node computes it"))
                continue
            held = self.values.get(info.name)
            if isinstance(held, TensorSequence):  # one output per tensor, as inputs are
                elements = [self.output_value(value, f"{info.name}.{index}", outputs)
                            for index, value in enumerate(held)]
                self.sequence_names[info.name] = [value.name for value in elements]
                outputs += elements
                continue
            try:
                value = self.tensor(info.name, None)
            except Unsupported as error:
                self.problems.append(Problem("output", info.name, str(error)))
                continue
            disagreement = declared_disagreement(info, value.type)
            if disagreement:
                self.problems.append(Problem("output", info.name, disagreement))
                continue
            value = self.output_value(value, info.name, outputs)
            self.names[info.name] = value.name
            outputs.append(value)
        return outputs

    def output_value(self, value: Value, onnx_name: str, outputs: list[Value]) -> Value:
        """`value` as the graph output `onnx_name`: renamed after it, or a copy so named where
        the value is already an input, a param or another output."""
        if value in outputs or value in self.graph.inputs or \
                value in self.graph.param_values():  # an output of its own: a copy
            op = "logical_or" if value.type.dtype == "bool" else "add"
            return self.builder.emit(op, (value, self.builder.constant(0, value.type.dtype)),
                                     name=identifier(onnx_name))
        if value.name != identifier(onnx_name) and value.name not in self.names.values() \
                and value.name not in self.graph.updates.values():
            # Read through an Identity (the dynamo exporter's, unoptimised): the value
            # takes the output's name, which the run's results are keyed by.
            return self.builder.rename(value, identifier(onnx_name))
        return value

    # ---- values -------------------------------------------------------------------------------

    def known_value(self, name: str) -> Known | None:
        """A constant that folding may use; float initializers are params, so not these."""
        value = self.values.get(name)
        return value if isinstance(value, Known) else None

    def static_value(self, name: str) -> Known | None:
        """A value fixed when the model is imported: a constant, or any initializer read as an
        attribute (a Clip bound, a Pad value) rather than as a tensor."""
        known = self.known_value(name)
        if known is None and name in self.initializers:
            return Known(self.initializers[name])
        return known

    def type_of(self, name: str) -> TensorType:
        value = self.values.get(name)
        if isinstance(value, Value):
            return value.type
        if isinstance(value, (TensorSequence, Absent)):
            raise tensor_expected(name, value)
        known = self.static_value(name)
        if known is None:
            raise Unsupported(f"value '{name}' is not defined before its use")
        if known.symbolic:
            return TensorType("i64", known.array.shape)
        return TensorType(dtype_of_array(known.array), known.array.shape)

    def tensor(self, name: str, ctx: NodeContext | None) -> Value:
        value = self.values.get(name)
        if isinstance(value, Value):
            return value
        if value is None and name in self.initializers:
            return self.initializer_param(name)
        if value is None:
            raise Unsupported(f"value '{name}' is not defined before its use")
        if isinstance(value, (TensorSequence, Absent)):
            raise tensor_expected(name, value)
        return self.materialise(value, name, ctx)

    def element(self, name: str, ctx: NodeContext | None):
        """The value `name` as whatever it holds: a tensor, a TensorSequence or ABSENT."""
        value = self.values.get(name)
        if isinstance(value, (TensorSequence, Absent)):
            return value
        return self.tensor(name, ctx)

    def initializer_param(self, name: str) -> Value:
        """A float initializer read as a tensor: a param, trainable if `--trainable` names it
        or, without that option, if it is a weight; `--freeze` keeps it fixed either way."""
        array = self.initializers[name]
        if array.size == 0:  # nothing to learn: an empty constant, not a param
            return self.bind_param(name, self.materialise(Known(array), name, None))
        chosen = self.is_weight(name) if self.trainable is None else name in self.trainable
        return self.bind_param(name, self.add_param(name, array,
                                                    chosen and name not in self.freeze))

    def is_weight(self, name: str) -> bool:
        """Whether an initializer is a weight rather than a constant the exporter folded in
        (an attention scale, a mask fill of -3.4e38, GELU's 0.044715, which exporters write as
        0-d tensors): a 0-d tensor is a constant unless it sits where a weight goes, and so is
        any tensor read only as an exponent. A one-value tensor of rank 1 or more trains: a
        layer with one output has a bias of shape (1,), added as any constant is."""
        positions = self.positions.get(name, ())
        if any(index in WEIGHT_POSITIONS.get(op, ()) for op, index in positions):
            return True
        if positions and all(index in CONSTANT_POSITIONS.get(op, ()) for op, index in positions):
            return False
        return self.initializers[name].ndim > 0

    def state_param(self, name: str) -> Value:
        """A float initializer that training updates itself (running statistics)."""
        value = self.values.get(name)
        if isinstance(value, Value):
            if any(p.value is value and p.trainable for p in self.graph.params):
                raise Unsupported(f"'{name}' is both a trained param and running statistics")
            return value
        if name not in self.initializers or not is_float_array(self.initializers[name]):
            raise Unsupported(f"running statistics '{name}' must be float initializers")
        return self.bind_param(name, self.add_param(name, self.initializers[name],
                                                    trainable=False))

    def add_param(self, hint: str, array: np.ndarray, trainable: bool,
                  prefix: str = "param") -> Value:
        value_type = TensorType(dtype_of_array(array), array.shape)
        # A name that cannot start a value (PyTorch's `0.weight`) gets `prefix` in front.
        value = Value(self.builder.namer.fresh(identifier(hint, prefix)), value_type)
        # The file holds the values; the init spec says what re-initialising would draw.
        init = InitSpec(self.fresh_init(hint, array, trainable))
        self.graph.params.append(Param(value, init, SourceLoc(self.file, 0, 0, node=hint),
                                       trainable=trainable))
        # C order without ascontiguousarray, which makes a 0-d array 1-d (a scalar param then
        # was declared f32[] but held f32[1]).
        self.params[value.name] = np.require(array, requirements="C")
        self.bound.add(value)
        return value

    def fresh_init(self, name: str, array: np.ndarray, trainable: bool) -> str:
        """What a param starts from without the file's values: a norm's scale and a running
        variance from ones (zeros would silence the layer), a weight of rank 2 or more from
        glorot, the rest from zeros."""
        if any(index in ONES_POSITIONS.get(op, ()) for op, index in self.positions.get(name, ())):
            return "ones"
        return "glorot" if trainable and array.ndim >= 2 else "zeros"

    def bind_param(self, onnx_name: str, value: Value) -> Value:
        self.values[onnx_name] = value
        self.names[onnx_name] = value.name
        return value

    def materialise(self, known: Known, name: str, ctx: NodeContext | None,
                    hint: str | None = None) -> Value:
        """A constant as an IR value: a scalar constant, a constant broadcast to its shape, or
        (for a tensor of differing values) a frozen param holding it. `name` is the ONNX value
        it is (a tensor is made once per name, and the value stays known for folding), or
        None for a constant a converter made, which `hint` names."""
        what = name or hint
        loc = ctx.loc if ctx else None
        if known.symbolic:
            if name is None:
                return self.dims_tensor(known.array, what, loc)
            if name not in self.constants:  # computed once, however many nodes read it
                self.constants[name] = self.dims_tensor(known.array, name, loc)
            return self.constants[name]
        array = known.array
        dtype = dtype_of_array(array)
        first = array.flat[0] if array.size else 0  # an empty array: any value fills it
        exact = is_float(dtype) or abs(int(first)) <= 2 ** 53  # a constant holds a float
        if exact and (np.all(array == first) or (is_float(dtype) and np.all(np.isnan(array)))):
            scalar = self.builder.constant(float(first), dtype, loc=loc)
            if array.ndim == 0:
                return scalar
            return self.builder.emit("broadcast_to", (scalar,), {"shape": array.shape},
                                     loc=loc)
        if name is None:
            return self.constant_tensor(hint, array, loc)
        if name not in self.constants:
            self.constants[name] = self.constant_tensor(name, array, loc)
            self.names[name] = self.constants[name].name
        return self.constants[name]

    def dims_tensor(self, array: np.ndarray, what: str, loc) -> Value:
        """A folded shape that holds symbolic dims (`[B, S*4]`), as the i64 tensor the run
        computes: each dim d is the element count of arange(d)."""
        if not all(isinstance(d, int) or dims.is_symbolic(d) for d in array.ravel()):
            raise Unsupported(f"the constant '{what}' holds values of another kind than "
                              f"numbers ({type(array.flat[0]).__name__})")
        if array.ndim > 1:
            raise Unsupported(f"the shape value '{what}' of rank {array.ndim} holds symbolic "
                              f"dims and is used as a tensor",
                              hint=dim_hint(array.ravel()))
        elements = []
        for dim in map(dims.canonical, array.ravel()):
            if dims.is_symbolic(dim):
                count = self.builder.emit("arange", (), {"n": dim}, loc=loc)
                element = self.builder.emit("numel", (count,), {"dtype": "i64"}, loc=loc)
            else:
                element = self.builder.constant(dim, "i64", loc=loc)
            elements.append(element)
        if array.ndim == 0:
            return elements[0]
        columns = [self.builder.emit("unsqueeze", (e,), {"axes": (0,)}, loc=loc)
                   for e in elements]
        if len(columns) == 1:
            return columns[0]
        return self.builder.emit("concat", tuple(columns), {"axis": 0}, loc=loc)

    def constant_tensor(self, hint: str, array: np.ndarray, loc) -> Value:
        """A frozen param holding `array`; params are floats, so integers and bools are held
        as float64 (exact up to 2**53) and cast back."""
        dtype = dtype_of_array(array)
        if is_float(dtype):
            return self.add_param(hint, array, trainable=False, prefix="const")
        if dtype == "i64" and np.abs(array).max() > 2 ** 53:
            raise Unsupported(f"the int64 constant '{hint}' holds values beyond 2**53 (chainrule "
                              f"keeps constant tensors as float64)")
        stored = self.add_param(hint, array.astype(np.float64), trainable=False,
                                prefix="const")
        return self.builder.emit("cast", (stored,), {"dtype": dtype}, loc=loc)

    def update_state(self, state: Value, new: Value) -> None:
        if state.name in self.graph.updates:
            raise Unsupported(f"running statistics '{state.name}' are updated twice")
        self.graph.updates[state.name] = new.name

    def update_outputs(self) -> list[Value]:
        outputs = []
        producers = self.graph.producers()
        by_name = {v.name: v for v in producers}
        for state, next_name in list(self.graph.updates.items()):
            value = by_name[next_name]
            value = self.builder.rename(value, f"{state}.next")
            self.graph.updates[state] = value.name
            outputs.append(value)
        return outputs

    def unify(self, op: str, inputs) -> bool:
        """Tie a fresh symbol to the dim `op`'s rule says it equals (`[x_0, 16] + [B, 16]`
        makes x_0 B), in every type, size attr and folded shape made so far; whether one
        was tied."""
        tied = tied_dims(op, [v.type.shape for v in inputs], self.fresh_symbols)
        if tied is None:
            return False
        symbol, dim = tied
        self.fresh_symbols.discard(symbol)
        replace = {symbol: dim}
        for value in self.graph.values():
            value.type = value.type.with_shape(dims.substitute(d, replace)
                                               for d in value.type.shape)
        for node in self.graph.nodes:
            for name in dim_attrs(node):
                node.attrs[name] = map_dims(node.attrs[name],
                                            lambda d: dims.substitute(d, replace))
        for name, known in self.values.items():
            if isinstance(known, Known) and known.symbolic:
                self.values[name] = Known(substituted_shape(known.array, replace))
        return True

    def is_initializer(self, name: str) -> bool:
        return name in self.initializers

    def is_used(self, name: str) -> bool:
        return self.uses.get(name, 0) > 0

    def _count_uses(self) -> dict[str, int]:
        """How many times each ONNX value is read, by nodes, by the bodies of Scan and Loop
        nodes (which may read the enclosing graph's values) and as a graph output."""
        uses: dict[str, int] = {}
        for node in nodes_within(self.model.graph):
            for name in node.input:
                uses[name] = uses.get(name, 0) + 1
        for info in self.model.graph.output:
            uses[info.name] = uses.get(info.name, 0) + 1
        return uses

    def _input_positions(self) -> dict[str, list[tuple[str, int]]]:
        """Each ONNX value -> the (op type, input index) pairs that read it."""
        positions: dict[str, list[tuple[str, int]]] = {}
        for node in self.model.graph.node:
            for index, name in enumerate(node.input):
                positions.setdefault(name, []).append((node.op_type, index))
        return positions

    def check_choice(self, flag: str, names) -> None:
        if not names:
            return
        floats = {n for n, a in self.initializers.items() if is_float_array(a)}
        unknown = sorted(set(names) - floats)
        if unknown:
            raise ChainruleError(printable(f"{flag}: {', '.join(unknown)} "
                                           f"{'is' if len(unknown) == 1 else 'are'} not float "
                                           f"initializers of this model; they are: "
                                           f"{', '.join(sorted(floats)) or '(none)'}"),
                                 SourceLoc(self.file, 0, 0))


def needed_nodes(graph) -> set[int]:
    """The positions of the nodes the graph's outputs need, directly or through others: a node
    nothing reads (a ZipMap's sibling output, a branch the exporter left) is not imported, so
    an op chainrule lacks there does not stop the model."""
    wanted = {info.name for info in graph.output}
    needed = set()
    for index in reversed(range(len(graph.node))):
        node = graph.node[index]
        if wanted.isdisjoint(node.output):
            continue
        needed.add(index)
        # A body reads the enclosing graph's values by name, as an input would.
        wanted.update(name for inner in nodes_within_node(node) for name in inner.input)
    return needed


def nodes_within_node(node):
    """The node and the nodes of the subgraphs its attributes hold."""
    yield node
    for attribute in node.attribute:
        subgraphs = [attribute.g] if attribute.HasField("g") else []
        for subgraph in subgraphs + list(attribute.graphs):
            yield from nodes_within(subgraph)


def nodes_within(graph):
    """The graph's nodes and, depth first, those of the subgraphs their attributes hold."""
    for node in graph.node:
        yield from nodes_within_node(node)


def tensor_expected(name: str, value) -> Unsupported:
    """A sequence or an empty optional (sequences.py) reaches what only a tensor can be."""
    if isinstance(value, Absent):
        return Unsupported(f"value '{name}' is an optional that holds nothing, where a tensor "
                           f"is needed")
    return Unsupported(f"value '{name}' is a sequence of tensors, where a tensor is needed",
                       hint="use its tensors one by one (SequenceAt)")


def schema_violation(node, opset: int, domain: str = "") -> str | None:
    """How `node` breaks its op's ONNX schema at `opset` of `domain` (input and output counts,
    required inputs and attributes, attribute kinds), so that converters meet well-formed nodes
    only."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, domain)
    except onnx.defs.SchemaError:
        return f"no {node.op_type} in opset {opset}"
    if not schema.min_input <= len(node.input) <= schema.max_input:
        return (f"{len(node.input)} inputs, where opset {opset}'s {node.op_type} takes "
                f"{schema.min_input} to {schema.max_input}")
    if not schema.min_output <= len(node.output) <= schema.max_output:
        return (f"{len(node.output)} outputs, where opset {opset}'s {node.op_type} gives "
                f"{schema.min_output} to {schema.max_output}")
    optional = onnx.defs.OpSchema.FormalParameterOption.Optional
    for index, name in enumerate(node.input):
        formal = schema.inputs[min(index, len(schema.inputs) - 1)]  # the last one variadic
        if not name and formal.option != optional:
            return f"input {index} ({formal.name}) is required"
    given = {a.name: a for a in node.attribute}
    for attr_name, spec in schema.attributes.items():
        if spec.required and attr_name not in given:
            return f"attribute {attr_name} is required"
        if attr_name in given and given[attr_name].type != spec.type.value:
            kind = onnx.AttributeProto.AttributeType.Name(given[attr_name].type)
            return f"attribute {attr_name} is {kind}, not {spec.type.name}"
    return None


def unknown_attributes(node, opset: int, domain: str = "") -> list[str]:
    """The node's attributes its op's schema does not have (schema_violation found it)."""
    schema = onnx.defs.get_schema(node.op_type, opset, domain)
    return sorted({a.name for a in node.attribute} - set(schema.attributes))


def attributes_not_supported(names: list[str]) -> str:
    return f"attribute{'s' if len(names) > 1 else ''} {', '.join(names)} not supported"


def declared_disagreement(info, computed: TensorType) -> str | None:
    """How an output's declared type (when it declares one) differs from what the graph
    computes: another dtype, rank or fixed dim means a model chainrule would read wrongly."""
    if info.type.WhichOneof("value") != "tensor_type" or not info.type.tensor_type.elem_type:
        return None
    tensor = info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
            for d in tensor.shape.dim]
    dtype = TensorProto.DataType.Name(tensor.elem_type).lower()
    problem = f"declared {dtype}[{', '.join(map(str, dims))}], but the graph computes {computed}"
    if DTYPE_OF_ONNX.get(tensor.elem_type) != computed.dtype:
        return problem
    if tensor.HasField("shape") and (len(dims) != computed.rank or any(
            isinstance(have, int) and isinstance(want, int) and have != want
            for have, want in zip(computed.shape, dims, strict=True))):
        return problem
    return None


def is_float_array(array: np.ndarray) -> bool:
    return array.dtype in (np.float32, np.float64)
