"""A compiled graph as the page's data: its nodes with their IR lines, types and DSL lines, the
edges, the groups (calls and unrolled loop steps), and for the backward graph where each node
came from: the forward node whose derivative rule wrote it, that rule, and the formula of each
cotangent; for each param, the chain rule's steps from the objective back to it.

The names and fields are the page's contract with its scripts (static/graph*.js);
docs/page.md describes the page.
"""
from __future__ import annotations

import inspect
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

from ..ir import Graph, Node, Value
from ..ir.printer import format_node
from ..ir.types import is_float
from ..passes.autodiff import gradient_prefix
from ..passes.autodiff_rules import VJP_RULES
from ..viz import SYMBOLS
from .formulas import FormulaWriter, partial
from .values import summaries

PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
LEVEL_LABELS = {"O0": "as written", "O1": "simplified", "O2": "optimised"}
ITERATION = re.compile(r"^[A-Za-z_]\w*=-?\d+$")
RULE_LINES = 40  # a derivative rule's source is shown up to this many lines
CALL = re.compile(r"([A-Za-z_]\w*)\s*\(")
BUILT_IN_GROUP = 3  # a built-in's call that wrote this many nodes is a group (layer_norm's)


def differentiable(model) -> bool:
    """Whether the model has an objective to draw the backward graph of: a float scalar (an
    imported model's first output is none until a loss is attached)."""
    objective = model.objective
    return objective is not None and objective.type.rank == 0 and \
        is_float(objective.type.dtype)


def graph_page_data(model, *, grad: bool | None = None, opt_level: str = "O0",
                    feeds: dict | None = None, params: dict | None = None) -> dict:
    """The page's {"graph", "source"} for `model` (an api.Model): the graph at `opt_level`,
    forward and (by default, when the model is `differentiable`) backward, and past -O0 the
    graph as written too, to compare (the optimised view marks its new nodes and lists what
    changed). With `feeds` (input arrays by name), every node carries a summary of its value
    on them, computed with `params` (default: the model's)."""
    grad = differentiable(model) if grad is None else grad
    params = model.params if params is None else params
    source = _source(model)
    lines = source["lines"] if source else None
    written = ViewData(model, grad, "O0", feeds, params, lines)
    views = [written]
    if opt_level != "O0":
        views.insert(0, ViewData(model, grad, opt_level, feeds, params, lines,
                                 baseline=written.graph))
    objective = model.objective
    return {"graph": {"name": model.graph.name,
                      "objective_name": objective.name if objective is not None else None,
                      "views": [view.data for view in views]},
            "source": source}


class ViewData:
    """One view's data: the model's graph compiled at one level, written out."""

    def __init__(self, model, grad: bool, level: str, feeds, params, lines, baseline=None):
        self.graph, _ = model.compile_graph(grad=grad, opt_level=level)
        values = (summaries(self.graph, feeds, {v.name: params[v.name]
                                                for v in self.graph.param_values()})
                  if feeds is not None else None)
        writer = ViewWriter(self.graph, model.filename, values, baseline, lines)
        self.data = writer.view(level, f"-{level}: {LEVEL_LABELS.get(level, level)}")


def _source(model) -> dict | None:
    if not model.source or Path(model.filename).suffix.lower() == ".onnx":
        return None
    return {"path": model.filename, "lines": model.source.split("\n")}


def current_annotations(graph: Graph) -> tuple[dict, dict]:
    """The graph's Derivations and cotangents keyed by its own values. Autodiff keyed them by
    the values it made; a later pass that rebuilt a node (simplify, fusion) kept the value's
    name but not the Value, so those are found by name."""
    present = {value.name: value for value in graph.values()}

    def current(value: Value) -> Value | None:
        return present.get(value.name)

    derivations = {current(v): d for v, d in graph.derivations.items() if current(v)}
    cotangents = {current(v): current(c) for v, c in graph.cotangents.items()
                  if current(v) and current(c)}
    return derivations, cotangents


class ViewWriter:
    """One view of one graph. Values are looked up by identity first and by name second: a
    pass that rebuilt a node keeps its value's name, not the Value itself."""

    def __init__(self, graph: Graph, filename: str, values: dict | None, baseline: Graph | None,
                 lines: list[str] | None = None):
        self.graph = graph
        self.filename = filename
        self.values = values
        self.baseline = baseline
        # What the graph as written makes, as (op, value name): an optimised view's nodes
        # that are not among them are the passes' own.
        self.written = None if baseline is None else (
            {(n.op, out.name) for n in baseline.nodes for out in n.outputs}
            | {("input", v.name) for v in baseline.inputs}
            | {(p.kind, p.value.name) for p in baseline.params})
        self.ids: dict[Value, str] = {}
        self.ids_by_name: dict[str, str] = {}
        self.producers = graph.producers()
        objective = graph.objective
        self.prefix = gradient_prefix(objective) if objective is not None else None
        self.derivations, self.cotangents = current_annotations(graph)
        self.formulas = (FormulaWriter(graph, objective.name, self.derivations, self.cotangents)
                         if objective is not None else None)
        self.groups: dict[tuple, dict] = {}
        self.built_ins = self.built_in_calls(lines) if lines else {}

    # ---- lookups ------------------------------------------------------------------------------

    def id_of(self, value: Value | None) -> str | None:
        if value is None:
            return None
        return self.ids.get(value) or self.ids_by_name.get(value.name)

    def is_backward(self, value: Value) -> bool:
        return value in self.derivations or (
            self.prefix is not None and value.name.startswith(self.prefix))

    # ---- the view -----------------------------------------------------------------------------

    def view(self, key: str, label: str) -> dict:
        nodes = [self.value_node(v, "input", f"%{v.name}: {v.type}") for v in self.graph.inputs]
        nodes += [self.value_node(p.value, p.kind, f"{p.kind} %{p.value.name}: {p.value.type}"
                                  f" = {p.init}", p.loc) for p in self.graph.params]
        nodes += [self.op_node(node) for node in self.graph.nodes]
        edges = [[self.id_of(value), self.ids[node.outputs[0]],
                  "reuse" if self.is_backward(node.outputs[0]) and not self.is_backward(value)
                  and node.op != "constant" else "data"]
                 for node in self.graph.nodes for value in node.inputs]
        self.link_backward(nodes)
        by_side = Counter(n["side"] for n in nodes)
        objective = self.graph.objective
        return {"key": key, "label": label, "nodes": nodes, "edges": edges,
                "groups": list(self.groups.values()),
                "params": [self.chain(p.value) for p in self.graph.params if p.trainable]
                if self.cotangents else [],
                "objective": self.id_of(objective),
                "stats": {"forward": by_side["forward"], "backward": by_side["backward"]},
                "changes": self.changes() if self.baseline is not None else []}

    def register(self, value: Value) -> str:
        ident = f"n{len(self.ids)}"
        self.ids[value] = ident
        self.ids_by_name.setdefault(value.name, ident)
        return ident

    def value_node(self, value: Value, kind: str, ir: str, loc=None) -> dict:
        return self.blank(self.register(value), value, kind, kind, value.name, ir, loc)

    def op_node(self, node: Node) -> dict:
        ident = self.register(node.outputs[0])
        for extra in node.outputs[1:]:
            self.ids[extra] = ident
            self.ids_by_name.setdefault(extra.name, ident)
        kind = "constant" if node.op == "constant" else "op"
        label = (f"{node.attrs['value']:g}" if kind == "constant"
                 else SYMBOLS.get(node.op, node.op))
        entry = self.blank(ident, node.outputs[0], kind, node.op, label, format_node(node),
                           node.loc)
        entry["outputs"] = [v.name for v in node.outputs]
        entry["group"] = self.group_of(node, entry["side"])
        return entry

    def blank(self, ident, value, kind, op, label, ir, loc) -> dict:
        side = "backward" if self.is_backward(value) else "forward"
        summary = self.values.get(value.name) if self.values is not None else None
        return {"id": ident, "kind": kind, "side": side, "op": op, "label": label,
                "name": value.name, "type": str(value.type), "outputs": [value.name],
                "ir": ir, "loc": self.located(loc), "group": None, "origin": None,
                "rule": None, "formula": None, "terms": [], "gradient": None,
                "value": summary, "new": self.is_new(op, value)}

    def located(self, loc) -> dict | None:
        if loc is None or not loc.line or loc.file != self.filename:
            return None
        return {"line": loc.line, "col": loc.col, "iteration": loc.iteration}

    def is_new(self, op: str, value: Value) -> bool:
        """Whether the graph as written has no such op making a value of this name."""
        return self.written is not None and (op, value.name) not in self.written

    # ---- groups: calls and unrolled loop steps --------------------------------------------------

    def group_of(self, node: Node, side: str) -> str | None:
        scope = self.grouping(node)
        parent = None
        for depth in range(1, len(scope) + 1):
            key = (side, scope[:depth])
            if key not in self.groups:
                self.groups[key] = self.new_group(scope[depth - 1], side, parent)
            parent = self.groups[key]["id"]
        return parent

    def grouping(self, node: Node) -> tuple[str, ...]:
        """The calls and loop steps `node` was lowered in, and the call of a built-in that
        wrote several nodes (`batch_norm 25:14`), innermost."""
        if node.loc is None:
            return ()
        call = self.built_ins.get((node.loc.scope, node.loc.line, node.loc.col))
        return node.loc.scope + ((call,) if call else ())

    def built_in_calls(self, lines: list[str]) -> dict:
        """(scope, line, col) -> `name line:col` for each place in the source that wrote
        BUILT_IN_GROUP or more forward nodes and is a call there (`batch_norm(...)`)."""
        counts = Counter((n.loc.scope, n.loc.line, n.loc.col) for n in self.graph.nodes
                         if n.loc and n.loc.line and n.op != "constant"
                         and not self.is_backward(n.outputs[0]))
        calls = {}
        for (scope, line, col), count in counts.items():
            text = lines[line - 1][col - 1:] if 0 < line <= len(lines) else ""
            found = CALL.match(text)
            if count >= BUILT_IN_GROUP and found:
                calls[(scope, line, col)] = f"{found.group(1)} {line}:{col}"
        return calls

    def new_group(self, element: str, side: str, parent: str | None) -> dict:
        """A group for one call (`layer1.0 66:19`) or one loop step (`t=2`)."""
        iteration = bool(ITERATION.match(element))
        name, _, where = element.rpartition(" ")
        line = None if iteration or not where else int(where.partition(":")[0])
        label = element if iteration else f"{name} (line {line})"
        return {"id": f"g{len(self.groups)}",
                "label": ("∂ " if side == "backward" else "") + label,
                "kind": "iteration" if iteration else "call", "parent": parent, "line": line}

    # ---- the backward graph's ties to the forward one -----------------------------------------

    def link_backward(self, nodes: list[dict]) -> None:
        """Each backward node's origin, rule and formula; each forward node's terms and
        gradient."""
        by_id = {entry["id"]: entry for entry in nodes}
        for value in self.graph.values():
            entry = by_id[self.id_of(value)]
            derivation = self.derivations.get(value)
            if derivation is not None and entry["origin"] is None:
                origin = self.id_of(derivation.node.outputs[0] if derivation.node is not None
                                    else derivation.value)
                entry["origin"] = origin
                entry["rule"] = describe_rule(derivation)
                if derivation.kind == "rule" and origin in by_id:
                    by_id[origin]["terms"].append(entry["id"])
            if self.formulas is not None:
                entry["formula"] = entry["formula"] or self.formulas.formula(value)
            cotangent = self.cotangents.get(value)
            if cotangent is not None:
                entry["gradient"] = self.id_of(cotangent)

    def chain(self, param: Value) -> dict:
        """The chain rule from the objective back to `param`, one forward value at a time,
        along the path between them that crosses the most lines of the model (the lecture's
        J, L, o, h, z, W1, not the weight decay's J, s, W1); no steps if there is none."""
        path = self.chain_path(param)
        cotangent = self.cotangents.get(param)
        steps = []
        for index in range(len(path) - 1, -1, -1):
            value = path[index]
            after = path[index + 1] if index + 1 < len(path) else None
            steps.append({"value": self.id_of(value),
                          "node": self.id_of(self.cotangents.get(value)),
                          "formula": self.step_formula(value),
                          "why": self.step_reason(value, after)})
        return {"name": param.name, "node": self.id_of(param),
                "gradient": self.id_of(cotangent), "steps": steps}

    def chain_path(self, start: Value) -> list[Value]:
        """The forward values from `start` to the objective that cross the most lines of the
        model, then the most nodes; [] when none reaches it. Every output of a node continues
        a path (a scan's second one may be the one read). A value with no cotangent of its own
        (one a pass fused away: -O2's log-probabilities) is on the path still; its step says
        so."""
        objective = self.graph.objective
        users: dict[Value, list[Value]] = {}
        for node in self.graph.nodes:
            if not self.is_backward(node.outputs[0]):
                for value in node.inputs:
                    users.setdefault(value, []).extend(node.outputs)
        lines = {v: n.loc.line if n.loc else 0 for v, n in self.producers.items()}
        lines.update((p.value, p.loc.line if p.loc else 0) for p in self.graph.params)

        def step(value: Value, user: Value) -> tuple[int, int]:
            crossed = reach[user][0] + (lines.get(value, 0) != lines.get(user, 0))
            return crossed, reach[user][1] + 1

        reach: dict[Value, tuple[int, int]] = {objective: (0, 0)}
        for value in [*reversed([out for n in self.graph.nodes for out in n.outputs]),
                      *self.graph.param_values(), *self.graph.inputs]:
            reached = [step(value, u) for u in users.get(value, []) if u in reach]
            if reached and value is not objective:
                reach[value] = max(reached)
        if start not in reach:
            return []
        path = [start]
        while path[-1] is not objective:
            here = path[-1]
            path.append(max((u for u in users[here] if u in reach),
                            key=lambda u: step(here, u)))
        return path

    def step_formula(self, value: Value) -> str:
        cotangent = self.cotangents.get(value)
        objective = self.graph.objective.name
        if value is self.graph.objective:  # its seed a pass may have folded away
            return f"{partial(objective, objective)} = 1"
        if cotangent is None or self.formulas is None:
            return (f"{partial(objective, value.name)} is not computed on its own here: a "
                    f"pass fused it into the next step")
        named = self.formulas.named.get(cotangent)
        if named != value.name:  # a cotangent passed on unchanged: ∂J/∂L = ∂J/∂J
            shown = f"{partial(objective, value.name)} = {partial(objective, named)}"
            return shown + (" = 1" if named == objective else "")
        return self.formulas.formula(cotangent) or ""

    def step_reason(self, value: Value, after: Value | None) -> str:
        if after is None:
            return "the seed: the objective's derivative with respect to itself is 1"
        node = self.producers[after]
        where = f", line {node.loc.line}" if node.loc and node.loc.line else ""
        args = ", ".join(v.name for v in node.inputs)
        return (f"{after.name} = {node.op}({args}){where}: {rule_name(node.op)} carries "
                f"{partial(self.graph.objective.name, after.name)} back to {value.name}")

    # ---- what the passes changed --------------------------------------------------------------

    def changes(self) -> list[str]:
        before = Counter(n.op for n in self.baseline.nodes)
        after = Counter(n.op for n in self.graph.nodes)
        lines = [f"{len(self.baseline.nodes)} nodes before, {len(self.graph.nodes)} after"]
        for op in sorted(set(before) | set(after)):
            if before[op] != after[op]:
                lines.append(f"{op}: {before[op]} → {after[op]}")
        if self.graph.groups:
            lines.append(f"{len(self.graph.groups)} groups of elementwise nodes run as one "
                         f"kernel each (group_elementwise)")
        return lines


@lru_cache(maxsize=None)
def _rule_source(op: str) -> tuple[str, str]:
    rule = inspect.unwrap(VJP_RULES[op])
    lines, first = inspect.getsourcelines(rule)
    path = Path(inspect.getsourcefile(rule)).resolve()
    where = path.relative_to(PACKAGE_ROOT) if path.is_relative_to(PACKAGE_ROOT) else path
    return f"{where}:{first}", "".join(lines[:RULE_LINES])


def describe_rule(derivation) -> dict:
    """What wrote a backward value: a forward op's derivative rule (its source), the sum of a
    value's cotangents over its uses, or the seed."""
    if derivation.kind == "seed":
        return {"op": None, "name": "the seed",
                "text": "the objective's derivative with respect to itself: 1", "where": None}
    if derivation.kind == "sum":
        return {"op": None, "name": f"the sum over the uses of {derivation.value.name}",
                "text": f"{derivation.value.name} is used in several places (or none): its "
                        f"cotangent is the sum of what each use's rule gives back",
                "where": "chainrule/passes/autodiff.py (reverse)"}
    op = derivation.node.op
    if op not in VJP_RULES:  # a scan: a reverse scan, written by autodiff_scan.py
        return {"op": op, "name": rule_name(op), "where": "chainrule/passes/autodiff_scan.py",
                "text": "a scan is differentiated by a reverse scan over its body"}
    where, source = _rule_source(op)
    return {"op": op, "name": rule_name(op), "text": source, "where": where}


def rule_name(op: str) -> str:
    return f"{op}'s derivative rule" if op in VJP_RULES else f"{op}'s derivative (a reverse scan)"
