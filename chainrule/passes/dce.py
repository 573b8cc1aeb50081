"""Dead-code elimination: drop nodes, inputs and params that no output needs."""
from __future__ import annotations

from ..ir import ChainruleError, Graph, Node
from ..ir.scan import ScanParts
from ..ir.symbols import node_symbols, symbol_sources


def eliminate_dead_code(graph: Graph, *, prune_interface: bool = False) -> tuple[Graph, bool]:
    """Keep the nodes the outputs depend on; with prune_interface, unused inputs/params go too."""
    live = set(graph.outputs)
    kept = []
    trimmed = False
    for node in reversed(graph.nodes):
        if any(v in live for v in node.outputs):
            if node.op == "scan":
                node, trimmed = _trimmed_scan(node, live), True
            kept.append(node)
            live.update(node.inputs)
    kept.reverse()
    result = graph.copy()
    result.nodes = kept
    if prune_interface:
        binding = binding_inputs(graph, kept)
        result.inputs = [v for v in graph.inputs if v in live or v in binding]
        result.params = [p for p in graph.params if p.value in live]
    # A state's update goes with the output that holds it, and with the state itself.
    outputs, states = {v.name for v in graph.outputs}, {p.value.name for p in result.params}
    result.updates = {state: output for state, output in graph.updates.items()
                      if output in outputs and state in states}
    changed = (trimmed and kept != graph.nodes or len(kept) != len(graph.nodes) or len(result.inputs) != len(graph.inputs)
               or len(result.params) != len(graph.params))
    return result, changed


def binding_inputs(graph: Graph, nodes: list[Node]) -> set:
    """The inputs of `graph` that bind the symbols `nodes`' sizes are written with: an input
    stays for them (`zeros((B, 4))` reads B off the input that declares it)."""
    sources = symbol_sources(graph)
    return {sources[s][0] for node in nodes for s in node_symbols(node) if s in sources}


def _trimmed_scan(node: Node, live: set) -> Node:
    """The scan without the stacks nothing reads, and without the sequences and outer values
    its body then leaves unread (the same node when there are none). Carried values stay:
    each step needs the one before."""
    body = node.attrs["body"]
    parts = ScanParts.of(len(node.inputs), body, node.attrs["carried"], node.attrs["scanned"])
    carried_results, stacks = parts.results(node.outputs)
    carried_returned, steps = parts.results(body.outputs)
    wanted = [index for index, stack in enumerate(stacks) if stack in live]
    trimmed = body.copy()
    trimmed.outputs = carried_returned + [steps[index] for index in wanted]
    trimmed = eliminate_dead_code(trimmed)[0]
    read = {v for inner in trimmed.nodes for v in inner.inputs} | set(trimmed.outputs)
    read |= binding_inputs(body, trimmed.nodes)
    first = parts.carried
    keep = list(range(first)) + [i for i in range(first, len(node.inputs))
                                 if body.inputs[i] in read]
    if len(keep) == len(node.inputs) and len(wanted) == len(stacks):
        return node
    trimmed.inputs = [body.inputs[i] for i in keep]
    scanned = sum(1 for i in keep if first <= i < first + parts.scanned)
    attrs = {**node.attrs, "body": trimmed, "scanned": scanned}
    outputs = tuple(carried_results) + tuple(stacks[index] for index in wanted)
    return Node(node.op, tuple(node.inputs[i] for i in keep), attrs, outputs, node.loc)


def select_outputs(graph: Graph, names: list[str]) -> Graph:
    """The graph reduced to the named outputs and what they need, inputs and params included."""
    by_name = {v.name: v for v in graph.outputs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ChainruleError(f"unknown output(s) {', '.join(unknown)}; the outputs are "
                             f"{', '.join(by_name)}")
    result = graph.copy()
    result.outputs = [by_name[n] for n in names]
    # The objective stays only where it leads the outputs, as the front ends place it.
    if graph.objective is None or result.outputs[:1] != [graph.objective]:
        result.objective = None
    return eliminate_dead_code(result, prune_interface=True)[0]
