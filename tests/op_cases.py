"""Per-op test cases: input shapes, dtypes, value domains and attrs, used by several tests.

Each differentiable op has at least one case; broadcasting and size-1 dims are covered where
the op broadcasts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from chainrule.ir import Graph, GraphBuilder, Value
from chainrule.ir.types import TensorType


@dataclass(frozen=True)
class Arg:
    shape: tuple
    dtype: str = "f64"
    domain: str = "any"  # any | positive | away_from_zero | labels:N | bool


@dataclass(frozen=True)
class Case:
    op: str
    args: tuple
    attrs: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        shapes = "_".join("x".join(map(str, a.shape)) or "scalar" for a in self.args)
        extra = "_".join(f"{k}{v}" for k, v in self.attrs.items())
        return f"{self.op}-{shapes}{'-' + extra if extra else ''}".replace(" ", "")


F = Arg
CASES = [
    Case("add", (F((3, 4)), F((4,)))),
    Case("add", (F((2, 1, 3)), F((4, 1)))),
    Case("sub", (F((3, 1)), F((1, 4)))),
    Case("mul", (F((3, 4)), F((3, 4)))),
    Case("mul", (F(()), F((2, 3)))),
    Case("div", (F((3, 4)), F((4,), domain="away_from_zero"))),
    Case("pow", (F((3, 4), domain="positive"), F((3, 4)))),
    Case("pow", (F((2, 3), domain="positive"), F((1,)))),
    Case("neg", (F((5,)),)),
    Case("exp", (F((2, 3)),)),
    Case("log", (F((2, 3), domain="positive"),)),
    Case("relu", (F((4, 5), domain="away_from_zero"),)),
    Case("sigmoid", (F((4, 5)),)),
    Case("tanh", (F((4, 5)),)),
    Case("where", (Arg((3, 4), "bool", "bool"), F((3, 4)), F((4,)))),
    Case("cast", (F((3,)),), {"dtype": "f64"}),
    Case("matmul", (F((3, 4)), F((4, 5)))),
    Case("matmul", (F((2, 3, 4)), F((4, 5)))),
    Case("matmul", (F((2, 1, 3, 4)), F((5, 4, 2)))),
    Case("matmul", (F((4,)), F((4, 5)))),
    Case("matmul", (F((2, 3, 4)), F((4,)))),
    Case("matmul", (F((4,)), F((4,)))),
    Case("transpose", (F((2, 3, 4)),), {"perm": (2, 0, 1)}),
    Case("sum", (F((3, 4)),)),
    Case("sum", (F((2, 3, 4)),), {"axes": (0, 2), "keepdims": True}),
    Case("sum", (F((2, 3, 4)),), {"axes": (-1,), "keepdims": False}),
    Case("mean", (F((3, 4)),), {"axes": (1,), "keepdims": False}),
    Case("mean", (F((2, 3, 4)),)),
    Case("softmax", (F((3, 5)),), {"axis": -1}),
    Case("softmax", (F((3, 5)),), {"axis": 0}),
    Case("cross_entropy", (F((6, 5)), Arg((6,), "i64", "labels:5"))),
    Case("cross_entropy", (F((2, 3, 4)), Arg((2, 3), "i64", "labels:4"))),
    Case("mse", (F((4, 3)), F((4, 3)))),
    Case("mse", (F((4, 3)), F((3,)))),
    Case("broadcast_like", (F((1, 3)), F((4, 3)))),
    Case("unsqueeze", (F((3, 4)),), {"axes": (0, 2)}),
]


def draw(arg: Arg, rng: np.random.Generator) -> np.ndarray:
    if arg.domain == "bool":
        return rng.random(arg.shape) < 0.5
    if arg.domain.startswith("labels:"):
        return rng.integers(0, int(arg.domain.split(":")[1]), arg.shape)
    values = rng.normal(size=arg.shape)
    if arg.domain == "positive":
        values = np.abs(values) + 0.5
    elif arg.domain == "away_from_zero":
        values = np.sign(values) * (np.abs(values) + 0.2)
    return values.astype(np.float64 if arg.dtype == "f64" else np.float32)


def scalar_objective_graph(case: Case) -> tuple[Graph, list[Value], Value]:
    """inputs a0.. -> op -> sum(out * weight): a scalar whose gradient exercises the op's rule."""
    graph = Graph(f"case_{case.op}")
    inputs = []
    for index, arg in enumerate(case.args):
        value = Value(f"a{index}", TensorType(arg.dtype, arg.shape))
        graph.inputs.append(value)
        inputs.append(value)
    builder = GraphBuilder(graph)
    out = builder.emit(case.op, inputs, case.attrs, name="out")
    weight = Value("weight", out.type)
    graph.inputs.append(weight)
    builder.namer.taken.add("weight")
    objective = builder.emit("sum", [builder.emit("mul", [out, weight])], name="objective")
    graph.outputs = [objective, out]
    return graph, inputs, objective
