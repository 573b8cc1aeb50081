"""What a converter sees of one ONNX node: its inputs as IR values or as constants known at
import time, its attributes (each one it reads is marked, so that one it ignores is reported
rather than silently dropped), and a builder that locates every node it emits."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from onnx.checker import ValidationError

from ..ir import ChainruleError, GraphBuilder, Value, dims
from ..ir.limits import type_size_problem
from ..ir.ops import OPS, rule_table
from ..ir.shapes import simplest_dim
from ..ir.types import UNKNOWN, TensorType, dtype_of_numpy


# ONNX op type -> the function converting such a node (converters.py, layout.py).
CONVERTERS, converter = rule_table()
# The domain of ONNX's preview ops, which import where ONNX defines them as functions
# (functions.py).
PREVIEW_DOMAIN = "ai.onnx.preview"


class Unsupported(Exception):
    """A node chainrule cannot import: the message says what (an op, attribute or shape).
    `needs_constant` names the ONNX value that would have to be known at import time when
    that is the reason (a Reshape's shape computed at run time); `hint` says what the user
    can do about it, where something is known."""

    def __init__(self, message: str, needs_constant: str | None = None,
                 hint: str | None = None, needs_elements: str | None = None):
        super().__init__(message)
        self.needs_constant = needs_constant
        self.hint = hint
        # A sequence- or optional-typed graph input whose element shapes must be given.
        self.needs_elements = needs_elements


def dim_hint(items) -> str | None:
    """What fixes a problem with symbolic dims (`B`, `B*4`): giving each symbol its size (2
    stands for it). A dim left UNKNOWN has no name to give a size to."""
    symbols = sorted(symbols_in(items))
    if not symbols:
        return None
    flags = " ".join(f"--dim {symbol}=2" for symbol in symbols)
    return f"fix the dim{'s' if len(symbols) > 1 else ''} with {flags}"


def symbols_in(items) -> set[str]:
    """The symbols the dims among `items` are written with (other items are skipped)."""
    found = set()
    for item in items:
        if dims.is_symbolic(item):
            found |= dims.symbols(item)
    return found


class Known:
    """A value known when the model is imported: a numpy array, or for shapes with symbolic
    dims an object array holding ints and dim expressions (`[B, 6, 16]`, `[B*4, S, 4]`)."""

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = np.asarray(array)

    @property
    def symbolic(self) -> bool:
        return self.array.dtype == object

    def __repr__(self) -> str:
        return f"Known({self.array!r})"


class TensorSequence(tuple):
    """An ONNX sequence whose tensors the import knows one by one: its length is fixed at
    import time, so it lives only while importing, as a tuple of IR values that the sequence
    ops (sequences.py) build and pick from."""


class Absent:
    """What an ONNX optional holds when it holds nothing (an optional that holds something is
    that tensor or sequence itself): known at import time, as a sequence's length is."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = Absent()


class NodeContext:
    """One ONNX node under conversion. `importer` owns the value table and the builder."""

    def __init__(self, importer, node, loc):
        self.importer = importer
        self.node = node
        self.loc = loc
        self.attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.read: set[str] = set()
        # Attribute values chainrule does not support: every one is reported, so the
        # converter goes on with a supported value instead of stopping at the first.
        self.attribute_problems: list[Unsupported] = []

    # ---- inputs -------------------------------------------------------------------------------

    def has_input(self, index: int) -> bool:
        return index < len(self.node.input) and self.node.input[index] != ""

    @property
    def input_count(self) -> int:
        return sum(1 for name in self.node.input if name)

    def input(self, index: int) -> Value:
        """Input `index` as an IR value (a constant becomes a constant node or frozen param)."""
        if not self.has_input(index):
            raise Unsupported(f"input {index} is required")
        return self.importer.tensor(self.node.input[index], self)

    def inputs(self) -> list[Value]:
        return [self.input(i) for i in range(len(self.node.input)) if self.has_input(i)]

    def element(self, index: int):
        """Input `index` as whatever it holds: a tensor, a TensorSequence, or ABSENT (an
        optional that holds nothing, or an input not given)."""
        if not self.has_input(index):
            return ABSENT
        return self.importer.element(self.node.input[index], self)

    def sequence(self, index: int) -> TensorSequence:
        element = self.element(index)
        if not isinstance(element, TensorSequence):
            raise Unsupported(f"{self.node.op_type}'s input '{self.node.input[index]}' is not "
                              f"a sequence of tensors")
        return element

    def static(self, index: int, what: str, default=None) -> np.ndarray | None:
        """Input `index` as an array known at import time (a shape, axes, bounds); `default`
        when the input is absent. A value computed at run time cannot be used here."""
        if not self.has_input(index):
            return default
        known = self.importer.static_value(self.node.input[index])
        if known is None:
            raise self.not_constant(index, what)
        if known.symbolic:
            symbols = ", ".join(sorted(symbols_in(known.array.ravel())))
            raise Unsupported(f"{what} (input '{self.node.input[index]}') depends on the "
                              f"symbolic dims {symbols}", hint=dim_hint(known.array.ravel()))
        return known.array

    def static_dims(self, index: int, what: str, default=None) -> tuple | None:
        """Input `index` as dims known at import time (a shape, a slice's bounds): ints and,
        where the exporter computed them from a symbolic shape, dim expressions."""
        if not self.has_input(index):
            return default
        known = self.importer.static_value(self.node.input[index])
        if known is None:
            raise self.not_constant(index, what)
        values = known.array.ravel().tolist()
        if known.array.dtype.kind not in "iuO" or \
                not all(dims.is_symbolic(v) or isinstance(v, int) for v in values):
            raise Unsupported(f"{what} (input '{self.node.input[index]}') must be integers, "
                              f"not {values[:8]}")
        return tuple(dims.canonical(v) for v in values)

    def not_constant(self, index: int, what: str) -> Unsupported:
        name = self.node.input[index]
        return Unsupported(f"{what} (input '{name}') must be a constant, not a value computed "
                           f"at run time", needs_constant=name)

    def static_ints(self, index: int, what: str, default=None) -> tuple[int, ...] | None:
        array = self.static(index, what)
        if array is None:
            return default
        if array.dtype.kind not in "iu":
            raise Unsupported(f"{what} (input '{self.node.input[index]}') must be integers, "
                              f"not {array.dtype}")
        return tuple(int(v) for v in np.ravel(array))

    def static_int(self, index: int, what: str, default=None) -> int | None:
        """Input `index` as one integer known at import time (an axis, a diagonal)."""
        values = self.static_ints(index, what)
        if values is None:
            return default
        return self.require_length(values, 1, what)[0]

    def static_scalar(self, index: int, what: str, default=None) -> np.ndarray | None:
        """Input `index` as one value known at import time (a 0-d array)."""
        array = self.static(index, what)
        if array is None:
            return default
        if array.size != 1:
            raise Unsupported(f"{what} (input '{self.node.input[index]}') must be one value, "
                              f"not a tensor of shape {list(array.shape)}")
        return array.reshape(())

    def known(self, index: int) -> Known | None:
        """Input `index` when it is known at import time (symbolic shapes included)."""
        if not self.has_input(index):
            return None
        return self.importer.known_value(self.node.input[index])

    def type_of(self, index: int):
        """The IR type of input `index`, without materialising a constant."""
        return self.importer.type_of(self.node.input[index])

    def rank(self, index: int = 0) -> int:
        return len(self.type_of(index).shape)

    @staticmethod
    def axis(value, rank: int, what: str = "axis") -> int:
        """An axis counted ONNX's way (negative from the end), checked against `rank`."""
        if np.ndim(value) or np.asarray(value).dtype.kind not in "iu":
            raise Unsupported(f"{what} {value!r} is not an integer")
        value = int(value)
        if not -rank <= value < rank:
            raise Unsupported(f"{what} {value} is out of range for rank {rank}")
        return value % rank

    def axes(self, values, rank: int, what: str = "axes") -> list[int]:
        return [self.axis(value, rank, what) for value in values]

    def require_rank(self, value: Value, lowest: int, highest: int | None = None,
                     what: str = "input") -> Value:
        """`value` when its rank is from `lowest` to `highest` (no bound when None)."""
        rank = value.type.rank
        if rank < lowest or highest is not None and rank > highest:
            takes = f"rank {lowest}" if highest == lowest else \
                f"rank {lowest} or more" if highest is None else f"rank {lowest} to {highest}"
            raise Unsupported(f"{self.node.op_type} of the {what} {value.type} (it takes "
                              f"{takes})")
        return value

    @staticmethod
    def require_length(values, length: int, what: str) -> tuple:
        """`values` (an attribute's list, a constant's ints) when they are `length` many."""
        values = tuple(values)
        if len(values) != length:
            raise Unsupported(f"{what} {list(values)} hold {len(values)} values, where "
                              f"{length} are needed")
        return values

    def require_size(self, dtype: str, shape) -> None:
        """A tensor this node would make, checked against chainrule's size limits before the
        converter computes anything of that size."""
        if any(isinstance(d, int) and d < 0 for d in shape):
            raise Unsupported(f"it would make a tensor of shape {list(shape)}")
        problem = type_size_problem(TensorType(dtype, tuple(shape)))
        if problem:
            raise Unsupported(f"it would make {problem}")

    # ---- attributes ---------------------------------------------------------------------------

    def attr(self, name: str, default=None):
        self.read.add(name)
        value = self.attributes.get(name, default)
        if not isinstance(value, bytes):
            return value
        try:
            return value.decode()
        except UnicodeDecodeError:
            self.attribute_problems.append(
                Unsupported(f"attribute {name}={value!r} is not UTF-8 text"))
            return default

    def float_attr(self, name: str, default: float) -> float:
        """A float attribute: ONNX stores float32, so 1e-5 arrives as 9.99999974e-06; the
        shortest decimal that rounds to the same float32 is what the exporter meant."""
        return float(str(np.float32(self.attr(name, default))))

    def require_attr(self, name: str, allowed, default):
        """An attribute that chainrule supports only at the given value(s)."""
        value = self.attr(name, default)
        allowed = allowed if isinstance(allowed, (tuple, list, set)) else (allowed,)
        if value not in allowed:
            self.attribute_problems.append(Unsupported(
                f"attribute {name}={value!r} (supported: "
                f"{', '.join(repr(a) for a in allowed)})"))
            return default if default in allowed else next(iter(allowed))
        return value

    def positive_attr(self, name: str, default=None):
        """An int attribute that must be 1 or more (a block size, a count of groups)."""
        value = self.attr(name, default)
        if value is not None and value < 1:
            self.attribute_problems.append(
                Unsupported(f"attribute {name}={value!r} (it must be 1 or more)"))
            return 1
        return value

    def unread_attrs(self) -> list[str]:
        return sorted(set(self.attributes) - self.read)

    # ---- building -----------------------------------------------------------------------------

    @property
    def builder(self) -> GraphBuilder:
        return self.importer.builder

    def emit(self, op: str, *inputs: Value, **attrs) -> Value:
        """The op's result; where its rule refuses dims that a fresh symbol could take (an
        input dim no name described), the symbol becomes that dim and the op is tried
        again."""
        while True:
            try:
                return self.builder.emit(op, inputs, attrs, loc=self.loc)
            except ChainruleError as error:
                if self.importer.unify(op, inputs):
                    continue
                agreed = self.agreed_operands(op, inputs)
                if agreed is None:
                    raise Unsupported(f"{op}: {error.message}") from None
                inputs = agreed

    def agreed_operands(self, op: str, inputs) -> tuple | None:
        """An elementwise op's operands reshaped to one dim where theirs may agree but are
        written differently (an FPN's up-sampled `2*((H+1)//4)` added to `(H+1)//2`): the
        reshape checks at run time that they do. None where no dims are such."""
        if op not in OPS or "elementwise" not in OPS[op].traits or len(inputs) < 2:
            return None
        rank = max(v.type.rank for v in inputs)
        shapes = [(None,) * (rank - v.type.rank) + tuple(v.type.shape) for v in inputs]
        target = list(shapes[0])
        for axis, column in enumerate(zip(*shapes, strict=True)):
            written = [d for d in column if d not in (None, 1, UNKNOWN)]
            # Named dims that differ are the exporter's word that they may: [B, 4] + [N, 4].
            named = all(isinstance(d, (str, dims.Symbol)) for d in written)
            if len(set(written)) < 2 or named or any(dims.provably_different(written[0], d)
                                                     for d in written[1:]):
                target[axis] = None
                continue
            target[axis] = simplest_dim(written)
        # An unknown dim leaves a reshape nothing to say it keeps.
        if all(t is None for t in target) or any(UNKNOWN in v.type.shape for v in inputs):
            return None
        agreed = []
        for value, shape in zip(inputs, shapes, strict=True):
            wanted = tuple(t if t is not None and d not in (1, t) else d
                           for d, t in zip(shape, target, strict=True))[rank - value.type.rank:]
            agreed.append(value if wanted == tuple(value.type.shape) else
                          self.builder.emit("reshape", (value,), {"shape": wanted}, loc=self.loc))
        return tuple(agreed)

    def constant(self, value: float, like: Value | str) -> Value:
        """A scalar constant of `like`'s dtype (or the dtype named)."""
        dtype = like if isinstance(like, str) else like.type.dtype
        return self.builder.constant(value, dtype, loc=self.loc)

    def empty(self, like: Value | str, shape) -> Value:
        """A tensor of `shape`, which has a dim of 0, in `like`'s dtype: it holds nothing, so
        nothing it was computed from needs computing."""
        return self.emit("fill", self.constant(0.0, like), shape=tuple(shape))

    def known_tensor(self, array: np.ndarray, hint: str) -> Value:
        """A constant this converter computed, as a tensor (a param named after `hint`)."""
        return self.importer.materialise(Known(array), None, self, hint)

    # ir/compositions.py (layer_norm, batch_norm, pad) builds through these too.
    def error(self, message: str):
        raise Unsupported(message)

    def update_state(self, state: Value, new: Value) -> None:
        self.importer.update_state(state, new)

    def output_used(self, index: int) -> bool:
        return index < len(self.node.output) and self.importer.is_used(self.node.output[index])


def tensor_array(tensor, what: str) -> np.ndarray:
    """A tensor attribute (a Constant's value) as numpy; onnx refusing a malformed one (an
    unknown data type, data of another size than its dims) is the node's problem."""
    if tensor.data_type not in helper.get_all_tensor_dtypes():
        raise Unsupported(f"{what} has the unknown ONNX data type {tensor.data_type}")
    if tensor.data_location == TensorProto.EXTERNAL:
        # onnx would look for the file in the working directory, not beside the model.
        raise Unsupported(f"{what} keeps its values in an external file (chainrule reads "
                          f"external data for initializers)")
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, ValidationError) as error:
        raise Unsupported(f"{what} cannot be read ({error})") from None


def dtype_of_array(array: np.ndarray) -> str:
    try:
        return dtype_of_numpy(array.dtype)
    except ValueError:
        raise Unsupported(f"tensors of dtype {array.dtype}") from None
