"""Per-op test cases: input shapes, dtypes, value domains and attrs, used by several tests.

Each differentiable op has at least one case; broadcasting, size-1 dims and negative axes are
covered where the op has them. Values stay away from kinks and ties (relu at 0, max ties), where
finite differences do not estimate the subgradient the rules choose.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from chainrule.ir import Graph, GraphBuilder, Value
from chainrule.ir.shapes import TO_END, TO_START
from chainrule.ir.types import TensorType


@dataclass(frozen=True)
class Arg:
    shape: tuple
    dtype: str = "f64"
    domain: str = "any"  # any | positive | away_from_zero | labels:N | indices:N | bool


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


def labels(shape, classes):
    return Arg(shape, "i64", f"labels:{classes}")


def indices(shape, size):
    """i64 indices into an axis of `size`, negative ones (counting from the end) included."""
    return Arg(shape, "i64", f"indices:{size}")


def window(starts, ends, axes, steps):
    return {"starts": starts, "ends": ends, "axes": axes, "steps": steps}


def conv_window(strides, pads, dilations=None, groups=1, **extra):
    return {"strides": strides, "pads": pads, "dilations": dilations or (1,) * len(strides),
            "groups": groups, **extra}


def pool_window(kernel, strides, pads=None, ceil_mode=False, **extra):
    return {"kernel": kernel, "strides": strides, "pads": pads or (0,) * 2 * len(kernel),
            "ceil_mode": ceil_mode, **extra}


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
    # elementwise
    Case("sqrt", (F((3, 4), domain="positive"),)),
    Case("abs", (F((3, 4), domain="away_from_zero"),)),
    Case("leaky_relu", (F((4, 5), domain="away_from_zero"),)),
    Case("leaky_relu", (F((2, 1, 3), domain="away_from_zero"),), {"alpha": 0.2}),
    Case("gelu", (F((4, 5)),)),
    Case("gelu", (F(()),)),
    Case("erf", (F((4, 5)),)),
    Case("erf", (F(()),)),
    Case("softplus", (F((4, 5)),)),
    Case("clip", (F((4, 5)),), {"lo": -0.5, "hi": 0.7}),
    Case("maximum", (F((3, 4)), F((4,)))),
    Case("maximum", (F((2, 1, 3)), F((4, 1)))),
    Case("minimum", (F((3, 1)), F((1, 4)))),
    Case("minimum", (F(()), F((2, 3)))),
    Case("pow", (F((2, 3), domain="positive"), F(()))),
    # reductions
    Case("max", (F((3, 4)),)),
    Case("max", (F((2, 3, 4)),), {"axes": (0, 2), "keepdims": True}),
    Case("max", (F((1, 5)),), {"axes": (-1,), "keepdims": False}),
    Case("min", (F((3, 4)),), {"axes": (1,), "keepdims": False}),
    Case("min", (F((2, 3, 4)),), {"axes": (-2,), "keepdims": True}),
    Case("logsumexp", (F((3, 4)),)),
    Case("logsumexp", (F((2, 3, 4)),), {"axes": (1,), "keepdims": True}),
    Case("logsumexp", (F((2, 1, 4)),), {"axes": (-1, 0), "keepdims": False}),
    # shape
    Case("reshape", (F((2, 3, 4)),), {"shape": (4, -1)}),
    Case("reshape", (F((2, 3, 4)),), {"shape": (0, -1)}),
    Case("reshape", (F((6,)),), {"shape": (1, 2, 3)}),
    Case("reshape_like", (F((2, 3, 4)), F((6, 4)))),
    Case("broadcast_to", (F((3, 1)),), {"shape": (2, 3, 4)}),
    Case("broadcast_to", (F((2, 1)),), {"shape": (-1, 5)}),
    Case("squeeze", (F((3, 1, 4)),), {"axes": (1,)}),
    Case("squeeze", (F((1, 3, 1)),), {"axes": (0, -1)}),
    Case("concat", (F((2, 3)), F((2, 4))), {"axis": 1}),
    Case("concat", (F((2, 3)), F((1, 3)), F((4, 3))), {"axis": 0}),
    Case("concat", (F((2, 3, 1)), F((2, 3, 2))), {"axis": -1}),
    Case("concat", (F((3,)),), {"axis": 0}),
    Case("unconcat", (F((5, 3)), F((2, 3)), F((3, 3))), {"axis": 0, "index": 1}),
    Case("unconcat", (F((2, 7)), F((2, 3)), F((2, 4))), {"axis": -1, "index": 0}),
    Case("slice", (F((5, 6)),), window((1,), (4,), (0,), (1,))),
    Case("slice", (F((4, 6)),), window((0, TO_END), (TO_END, TO_START), (0, 1), (2, -2))),
    Case("slice", (F((3, 5)),), window((-3,), (TO_END,), (-1,), (1,))),
    Case("unslice", (F((3, 6)), F((5, 6))), window((1,), (4,), (0,), (1,))),
    Case("unslice", (F((2, 3)), F((4, 6))),
         window((0, TO_END), (TO_END, TO_START), (0, 1), (2, -2))),
    Case("take", (F((5, 3)), labels((4,), 5)), {"axis": 0}),
    Case("take", (F((2, 5, 3)), labels((2, 2), 5)), {"axis": 1}),
    Case("take", (F((4, 3)), labels((), 3)), {"axis": -1}),
    Case("scatter_add", (F((6, 3)), labels((6,), 4), F((4, 3))), {"axis": 0}),
    Case("scatter_add", (F((2, 2, 2, 3)), labels((2, 2), 5), F((2, 5, 3))), {"axis": 1}),
    Case("gather_elements", (F((4, 3)), indices((6, 3), 4))),
    Case("gather_elements", (F((2, 5, 3)), indices((2, 2, 3), 5)), {"axis": 1}),
    # fewer rows than x: ONNX reads the first ones
    Case("gather_elements", (F((3, 4)), indices((2, 1), 4)), {"axis": -1}),
    Case("gather_elements", (F((5,)), indices((7,), 5)), {"axis": -1}),
    Case("scatter_elements_add", (F((6, 3)), indices((6, 3), 4), F((4, 3)))),
    Case("scatter_elements_add", (F((2, 4, 1)), indices((2, 4, 1), 3), F((3, 4, 2))),
         {"axis": -3}),
    # nn
    Case("log_softmax", (F((3, 5)),), {"axis": -1}),
    Case("log_softmax", (F((2, 3, 4)),), {"axis": 1}),
    Case("fill", (F(()), F((3, 4))), {"shape": (2, -1), "axes": (-1,)}),  # a1: shape only
    Case("fill", (F(()),), {"shape": (2, 3)}),
    # convolution and pooling (tests/test_conv.py covers their options more widely)
    Case("conv", (F((2, 3, 5, 6)), F((4, 3, 3, 2))), conv_window((1, 1), (1, 0, 1, 1))),
    Case("conv", (F((2, 4, 7, 6)), F((6, 2, 3, 2))),
         conv_window((2, 1), (1, 1, 0, 1), dilations=(1, 2), groups=2)),
    Case("conv", (F((1, 3, 5, 5)), F((3, 1, 3, 3))), conv_window((1, 1), (1, 1, 1, 1), groups=3)),
    Case("conv", (F((2, 2, 7)), F((3, 2, 3))), conv_window((2,), (1, 1), dilations=(2,))),
    Case("conv_transpose", (F((2, 3, 3, 4)), F((3, 2, 3, 3))),
         conv_window((2, 1), (1, 0, 1, 1), output_padding=(1, 0))),
    Case("conv_transpose", (F((1, 4, 3, 3)), F((4, 1, 2, 3))),
         conv_window((2, 2), (0, 1, 1, 0), dilations=(2, 1), groups=2, output_padding=(1, 0))),
    Case("conv_weight_grad", (F((2, 3, 5, 6)), F((2, 4, 5, 6))),
         {"kernel": (3, 2), **conv_window((1, 1), (1, 0, 1, 1))}),
    Case("conv_weight_grad", (F((2, 4, 7, 6)), F((2, 6, 3, 6))),
         {"kernel": (3, 2), **conv_window((2, 1), (1, 1, 0, 1), dilations=(1, 2), groups=2)}),
    Case("max_pool", (F((2, 3, 5, 6)),), pool_window((2, 2), (2, 2), ceil_mode=True)),
    Case("max_pool", (F((1, 2, 6, 5)),), pool_window((3, 3), (2, 1), (1, 1, 1, 1))),
    Case("max_pool", (F((2, 2, 7)),), pool_window((3,), (2,), (1, 1), ceil_mode=True)),
    Case("max_unpool", (F((2, 3, 3, 3)), F((2, 3, 5, 6))),
         pool_window((2, 2), (2, 2), ceil_mode=True)),
    Case("max_pool_take", (F((1, 2, 6, 5)), F((1, 2, 6, 5))),
         pool_window((3, 3), (2, 1), (1, 1, 1, 1))),
    Case("avg_pool", (F((2, 3, 5, 6)),), pool_window((2, 2), (2, 2), ceil_mode=True)),
    Case("avg_pool", (F((1, 2, 6, 5)),),
         pool_window((3, 3), (2, 1), (1, 1, 1, 1), count_include_pad=False)),
    Case("avg_pool", (F((2, 2, 7)),), pool_window((2,), (3,), (1, 1), ceil_mode=True)),
    Case("avg_unpool", (F((1, 2, 3, 5)), F((1, 2, 6, 5))),
         pool_window((3, 3), (2, 1), (1, 1, 1, 1), count_include_pad=False)),
    Case("avg_unpool", (F((2, 3, 3, 3)), F((2, 3, 5, 6))),
         pool_window((2, 2), (2, 2), ceil_mode=True)),
    Case("pad", (F((2, 3, 4)),), {"pads": (0, 1, 2, 1, 0, 3), "value": 0.5}),
]


def in_dtype(case: Case, dtype: str) -> Case:
    """The case with its float operands in `dtype`."""
    args = tuple(dataclasses.replace(a, dtype=dtype) if a.dtype in ("f32", "f64") else a
                 for a in case.args)
    return dataclasses.replace(case, args=args)


def draw(arg: Arg, rng: np.random.Generator) -> np.ndarray:
    if arg.domain == "bool":
        return rng.random(arg.shape) < 0.5
    if arg.domain.startswith("labels:"):
        return rng.integers(0, int(arg.domain.split(":")[1]), arg.shape)
    if arg.domain.startswith("indices:"):
        size = int(arg.domain.split(":")[1])
        return rng.integers(-size, size, arg.shape)
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
