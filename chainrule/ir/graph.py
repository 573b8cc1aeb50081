"""The graph IR: SSA values, nodes in topological order, inputs, params and outputs."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import SourceLoc
from .types import TensorType


class Value:
    """An SSA value. Identity matters: nodes refer to Value objects, names are for printing.
    A name is fixed when the value is made; a value wanted under another name is a new Value
    that replaces it (`GraphBuilder.rename`, `Rewriter.rename`), since graphs share their
    values."""

    __slots__ = ("_name", "type")

    def __init__(self, name: str, type: TensorType):
        self._name = name
        self.type = type

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    """One op applied to input values. Most ops have one result, which code reads as
    `node.output` (insisting on exactly one); a multi-result op (`scan`) has several, and code
    walking every node reads `node.outputs`."""

    op: str
    inputs: tuple[Value, ...]
    attrs: dict
    outputs: tuple[Value, ...]
    loc: SourceLoc | None = None

    @property
    def output(self) -> Value:
        (only,) = self.outputs
        return only


@dataclass(frozen=True)
class InitSpec:
    """How a param's initial value is drawn: `normal(0.0, 0.01)`, `zeros()`, ..."""

    kind: str
    args: tuple[float, ...] = ()

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(repr(float(a)) for a in self.args)})"


@dataclass(eq=False)
class Param:
    """A value the model keeps between runs, with how its first value is drawn. A trainable
    one is a param, which training moves along its gradient; the others are state (running
    statistics), never differentiated, which the training step replaces by its update."""

    value: Value
    init: InitSpec
    loc: SourceLoc | None = None
    trainable: bool = True

    @property
    def kind(self) -> str:
        return "param" if self.trainable else "state"


@dataclass(frozen=True, eq=False)
class Derivation:
    """Why autodiff wrote a backward node: `rule`, the derivative rule of the forward `node`
    (whose output is `value`) wrote it; `sum`, it adds up the cotangents of `value`'s uses (or
    makes a zero one); `seed`, it is d objective / d objective. `node` is None for a sum over a
    param's or an input's uses and for the seed."""

    kind: str
    value: Value
    node: Node | None = None


@dataclass(eq=False)
class Graph:
    name: str
    inputs: list[Value] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    loc: SourceLoc | None = None
    # The scalar training minimises and autodiff differentiates: the first output, as the
    # front ends set it, or None for a graph that only computes (outputs picked without it).
    objective: Value | None = None
    # Where each input is declared, by name (params carry their own location).
    input_locs: dict[str, SourceLoc] = field(default_factory=dict)
    # State name -> the output holding its next value in training mode (`rm` -> `rm.next`).
    updates: dict[str, str] = field(default_factory=dict)
    # Groups of elementwise nodes a backend may run as one kernel (the group_elementwise pass,
    # last at -O2): each a run of consecutive nodes whose last one computes the group's only
    # result. An annotation, not IR: printing and export ignore it, and a copy drops it, since
    # a pass that edits the copy may break a group (the pass manager refuses a pass after it).
    groups: list[tuple[Node, ...]] = field(default_factory=list, repr=False)
    # Each value the backward graph computes -> why autodiff wrote it (Derivation): what ties a
    # gradient term to the forward node it came from, for the interactive page. An annotation
    # too, keyed by value: a copy keeps it, since a pass that keeps a value keeps its meaning;
    # a value a pass makes anew (a fused kernel's) has none.
    derivations: dict[Value, Derivation] = field(default_factory=dict, repr=False)
    # Each forward value autodiff carried a cotangent to -> that cotangent, summed over its uses
    # (d objective / d value). Values that pass a cotangent on unchanged share one (`J = L + s`
    # gives L the cotangent of J).
    cotangents: dict[Value, Value] = field(default_factory=dict, repr=False)

    def param_values(self) -> list[Value]:
        """Params and state alike: the values a model keeps and feeds to every run."""
        return [p.value for p in self.params]

    def trainable_values(self) -> list[Value]:
        return [p.value for p in self.params if p.trainable]

    def values(self):
        """Every value the graph defines, in definition order."""
        yield from self.inputs
        yield from self.param_values()
        for node in self.nodes:
            yield from node.outputs

    def producers(self) -> dict[Value, Node]:
        return {out: node for node in self.nodes for out in node.outputs}

    def find(self, name: str) -> Value:
        for value in self.values():
            if value.name == name:
                return value
        raise KeyError(name)

    def bodies(self) -> list[Graph]:
        """The graphs this graph's nodes hold (a scan's body), outermost first."""
        return [node.attrs["body"] for node in self.nodes if "body" in node.attrs]

    def copy(self) -> Graph:
        """A shallow copy whose lists may be edited; values and nodes are shared."""
        return Graph(self.name, list(self.inputs), list(self.params), list(self.nodes),
                     list(self.outputs), self.loc, self.objective, dict(self.input_locs),
                     dict(self.updates), derivations=self.derivations,
                     cotangents=self.cotangents)


class NodeIndex:
    """Where each value of a node list is made and read: the use-lists that let a value change
    its name by editing only its producer and its readers, not by scanning every later node.
    The list only grows, at its end (its owner appends to it); renaming replaces nodes where
    they stand. The lists catch up with the nodes appended since at each rename, so a rewrite
    that renames nothing never makes them."""

    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self.made_at: dict[Value, int] = {}
        self.read_at: dict[Value, list[int]] = {}
        self.indexed = 0  # nodes[:indexed] are in the lists

    def _index(self, index: int, node: Node) -> None:
        for value in node.outputs:
            self.made_at[value] = index
        for value in node.inputs:
            readers = self.read_at.setdefault(value, [])
            if not readers or readers[-1] != index:  # a node reading a value twice
                readers.append(index)

    def replaced(self, index: int, node: Node) -> None:
        """Node `index` is now `node`, reading what the old one read (so `read_at` holds)."""
        if index < self.indexed:
            self.made_at.update(dict.fromkeys(node.outputs, index))

    def rename_output(self, old: Value, renamed: Value) -> list[int]:
        """Make `renamed` the output of old's producer in place of `old`, and the input of the
        nodes that read `old`: the one edit by which a value changes its name. Nodes are shared
        between graphs too, so those are made anew; returns the indices of the new ones."""
        for index in range(self.indexed, len(self.nodes)):
            self._index(index, self.nodes[index])
        self.indexed = len(self.nodes)
        index = self.made_at.pop(old)
        producer = self.nodes[index]
        outputs = tuple(renamed if v is old else v for v in producer.outputs)
        self.nodes[index] = Node(producer.op, producer.inputs, producer.attrs, outputs,
                                 producer.loc)
        self.made_at[renamed] = index
        readers = self.read_at.pop(old, [])
        for later in readers:
            node = self.nodes[later]
            inputs = tuple(renamed if v is old else v for v in node.inputs)
            self.nodes[later] = Node(node.op, inputs, node.attrs, node.outputs, node.loc)
        self.read_at[renamed] = readers
        return [index, *readers]


class Namer:
    """Hands out value names unique within one graph."""

    def __init__(self, taken=()):
        self.taken = set(taken)
        self.counters: dict[str, int] = {}

    @classmethod
    def for_graph(cls, graph: Graph) -> Namer:
        return cls(v.name for v in graph.values())

    def fresh(self, hint: str) -> str:
        if hint not in self.taken:
            self.taken.add(hint)
            return hint
        n = self.counters.get(hint, 0)
        while True:
            n += 1
            name = f"{hint}.{n}"
            if name not in self.taken:
                self.counters[hint] = n
                self.taken.add(name)
                return name

    def release(self, name: str) -> None:
        self.taken.discard(name)
