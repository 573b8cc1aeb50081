"""Where a graph's symbols get their sizes: each symbol is the size of an axis of a graph input
that declares it bare (`x: f32[B, S, 16]` binds B and S), and an op's size attrs (a reshape to
`(B, S*H)`) are computed from those sizes when the graph runs."""
from __future__ import annotations

from . import dims
from .errors import ChainruleError
from .graph import Graph, Node, Value
from .ops import OPS
from .types import UNKNOWN


def symbol_sources(graph: Graph) -> dict[str, tuple[Value, int]]:
    """Where the run reads each symbol's size: the first graph input, and its axis, whose
    declared dim is that bare symbol."""
    sources = {}
    for value in graph.inputs:
        for axis, dim in enumerate(value.type.shape):
            if isinstance(dim, str) and dim != UNKNOWN:
                sources.setdefault(dim, (value, axis))
    return sources


def dim_attrs(node: Node) -> list[str]:
    """The node's attributes that hold sizes, which may be symbolic (a reshape's shape)."""
    return [name for name, spec in OPS[node.op].attrs.items() if spec.kind in ("dim", "dims")]


def node_symbols(node: Node) -> set[str]:
    """The symbols the node's size attrs are written with."""
    found = set()
    for name in dim_attrs(node):
        value = node.attrs[name]
        for item in value if isinstance(value, tuple) else (value,):
            found |= dims.symbols(item)
    return found


def unbound_rule(node: Node, bound: set[str]) -> str | None:
    """What is wrong with a node whose sizes are written with a symbol no input binds."""
    unbound = sorted(node_symbols(node) - bound)
    if not unbound:
        return None
    return (f"its sizes are written with {', '.join(unbound)}, which no input declares as a "
            f"dim of its own (as x: f32[{unbound[0]}, ...] would)")


def check_bound(graph: Graph) -> None:
    """Refuse, at the node's line, a size that no input's shape can give when the graph
    runs: each symbol's size is read off an input that declares it as a dim of its own."""
    bound = set(symbol_sources(graph))
    for node in graph.nodes:
        rule = unbound_rule(node, bound)
        if rule is not None:
            raise ChainruleError(f"%{node.outputs[0].name} = {node.op}(...): {rule}", node.loc)


def attr_symbols(graph: Graph) -> set[str]:
    """The symbols the nodes' attributes are written with (a reshape to (B, S*H))."""
    return set().union(*(node_symbols(node) for node in graph.nodes))


def resolved_attrs(node: Node, sizes: dict) -> dict:
    """The node's attributes with each symbolic dim replaced by its size under `sizes`; a
    symbol nothing binds is reported with the node, the expression and the known sizes."""
    def size(dim):
        return dims.evaluate(dim, sizes)

    try:
        return {**node.attrs, **{name: map_dims(node.attrs[name], size)
                                 for name in dim_attrs(node)}}
    except KeyError as error:
        known = ", ".join(f"{s}={n}" for s, n in sorted(sizes.items())) or "none"
        raise ChainruleError(f"%{node.outputs[0].name} = {node.op}(...) has a dim written with "
                             f"{error.args[0]}, which no input's shape binds (known: {known})",
                             node.loc) from None


def map_dims(attr, function):
    """A size attr (a dim, or a tuple of them) with `function` applied to each symbolic dim."""
    if isinstance(attr, tuple):
        return tuple(map_dims(item, function) for item in attr)
    return function(attr) if dims.is_symbolic(attr) else attr
