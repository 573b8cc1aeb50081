"""The chain rule as the lecture writes it: each cotangent autodiff computed, as a formula over
the forward values and the cotangents it was made from (`∂J/∂h = ∂J/∂o W2`).

A formula is read off the backward graph itself, not written per op: the nodes that make a
cotangent are inlined into one expression until it reaches forward values (shown by name),
constants, or other summed cotangents (shown as ∂J/∂name). Ops that only move or broadcast
numbers (unsqueeze, reshape, cast, ...) are left out, as math notation leaves broadcasting out.
"""
from __future__ import annotations

from ..ir import Graph, Node, Value

# Ops whose result is their first input re-shaped, broadcast or re-typed: the formula shows
# that input (`cast(greater(z, 0))` reads `[z > 0]`).
TRANSPARENT = frozenset({"unsqueeze", "squeeze", "reshape", "broadcast_like", "expand",
                         "cast", "flatten", "identity"})
# op -> (symbol, precedence); a higher precedence binds tighter.
INFIX = {"add": (" + ", 1), "sub": (" − ", 1), "mul": (" ⊙ ", 2), "div": (" / ", 2),
         "matmul": (" ", 2)}
COMPARISONS = {"greater": ">", "less": "<", "greater_equal": "≥", "less_equal": "≤",
               "equal": "="}
ATOM = 9
PARTIAL = 8  # ∂J/∂x binds as a name does, but is wrapped before ᵀ or ²: (∂J/∂W1.T)ᵀ
MAX_OPS = 24  # a formula longer than this ends in "…": the graph is the whole story


def partial(objective: str, name: str) -> str:
    return f"∂{objective}/∂{name}"


class FormulaWriter:
    """Writes the formulas of one differentiated graph (its derivations and cotangents, the
    annotations autodiff leaves)."""

    def __init__(self, graph: Graph, objective: str, derivations: dict, cotangents: dict):
        """`derivations` and `cotangents` are the graph's annotations keyed by its own values
        (graph_document.current_annotations)."""
        self.objective = objective
        self.producers = graph.producers()
        self.derivations = derivations
        # The cotangent each forward value was given, by the value's name: a rule's
        # Derivation names the forward value as autodiff saw it, before later passes.
        self.given = {value.name: cotangent for value, cotangent in cotangents.items()}
        # A summed cotangent -> the forward value it is the cotangent of; a cotangent several
        # values share (passed on unchanged) is named for the first, the one nearest the
        # objective, as the lecture names ∂J/∂J.
        self.named: dict[Value, str] = {}
        for value, cotangent in cotangents.items():
            self.named.setdefault(cotangent, value.name)
        self.budget = MAX_OPS  # the ops the formula being written may still inline

    def formula(self, value: Value) -> str | None:
        """`∂J/∂x = ...` for a summed cotangent, else None."""
        if value not in self.named:
            return None
        left = partial(self.objective, self.named[value])
        node = self.producers.get(value)
        if node is None:
            return None
        derivation = self.derivations.get(value)
        if derivation is not None and derivation.kind == "seed":
            return f"{left} = 1"
        self.budget = MAX_OPS
        return f"{left} = {self.expand(node)[0]}"

    def leaf(self, value: Value, inside: Node) -> tuple[str, int] | None:
        """`value` as a name, or None to expand it: a summed cotangent is ∂J/∂ its value (the
        one a rule was given, ∂J/∂ the rule's output: ∂J/∂L, not the ∂J/∂J it is the same
        value as); a forward value is its name, a constant its number."""
        if value in self.named:
            derivation = self.derivations.get(inside.outputs[0])
            if derivation is not None and derivation.kind == "rule" and \
                    self.given.get(derivation.value.name) is value:
                return partial(self.objective, derivation.value.name), PARTIAL
            return partial(self.objective, self.named[value]), PARTIAL
        if value in self.derivations:
            return None
        node = self.producers.get(value)
        if node is not None and node.op == "constant":
            return f"{node.attrs['value']:g}", ATOM
        return value.name, ATOM

    def expand(self, node: Node) -> tuple[str, int]:
        """The expression `node` computes, with its precedence."""
        self.budget -= 1
        if self.budget < 0:
            return "…", ATOM
        args = [self.operand(value, node) for value in node.inputs]
        op = node.op
        if op == "constant":
            return f"{node.attrs['value']:g}", ATOM
        if op in TRANSPARENT and args:
            return args[0]
        if op in COMPARISONS and len(args) == 2:
            return f"[{args[0][0]} {COMPARISONS[op]} {args[1][0]}]", ATOM
        if op == "transpose":
            return f"{wrap(args[0], ATOM)}ᵀ", ATOM
        if op == "neg":
            return f"−{wrap(args[0], 3)}", 3
        if op == "mul" and any(v.type.rank == 0 for v in node.inputs):
            return f"{wrap(args[0], 2)} · {wrap(args[1], 2)}", 2
        if op == "pow" and len(args) == 2 and args[1][0] == "2":
            return f"{wrap(args[0], ATOM)}²", ATOM
        if op in INFIX and len(args) == 2:
            symbol, level = INFIX[op]
            right_level = level + 1 if op in ("sub", "div") else level
            return f"{wrap(args[0], level)}{symbol}{wrap(args[1], right_level)}", level
        inner = ", ".join(text for text, _ in args)
        return f"{op}({inner})", ATOM

    def operand(self, value: Value, inside: Node) -> tuple[str, int]:
        named = self.leaf(value, inside)
        if named is not None:
            return named
        node = self.producers.get(value)
        return self.expand(node) if node is not None else (value.name, ATOM)


def wrap(operand: tuple[str, int], level: int) -> str:
    text, own = operand
    return text if own >= level else f"({text})"
