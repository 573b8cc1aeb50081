"""Mixed precision: the forward graph computed in bf16 or f16, its params kept in f32.

Run before autodiff. Every f32 param and input stays f32 and is cast to the low dtype where a
node reads it, so the backward graph the cast's derivative writes brings each gradient back to
the f32 master weight. The ops of KEPT_IN_F32 (and every scalar result) are computed in f32
from inputs cast up, since they sum many terms or exponentiate: in bf16's 8 bits of mantissa
a mean over a batch or a softmax's normaliser loses most of its digits. A scan's body is left
as it is, in f32. f64 values are not touched.

For f16, whose range ends at 65504, the pass also adds the loss scale as an input,
LOSS_SCALE: autodiff seeds the backward graph with it instead of 1, so that small gradients
do not underflow in f16; the train step divides it out again, skips a step whose gradients
are not all finite, and adjusts the scale (passes/optimizers.py: build_train_step, _unscaled
and _next_loss_scale).
"""
from __future__ import annotations

from ..ir import ChainruleError, Graph, GraphBuilder, Namer, Value
from ..ir.types import scalar

PRECISIONS = ("f32", "bf16", "f16")
# Ops computed in f32 under mixed precision: losses, softmaxes, and reductions that add many
# terms or exponentiate (sum and mean over a batch, logsumexp, cumsum, prod). A batch norm's
# statistics are means, so they are kept too.
KEPT_IN_F32 = frozenset({
    "softmax", "log_softmax", "cross_entropy", "nll", "mse", "sum_squares",
    "sum", "mean", "logsumexp", "cumsum", "prod", "exp", "log", "pow",
})
LOSS_SCALE = "amp.loss_scale"     # train-step state: the factor on the objective's gradient
GOOD_STEPS = "amp.good_steps"     # train-step state: steps since the scale last changed
SKIPPED = "amp.skipped"           # train-step output: 1 when the step was skipped, else 0
INITIAL_LOSS_SCALE = 2.0 ** 16    # PyTorch's GradScaler starts there too
DEFAULT_GROWTH_INTERVAL = 2000    # good steps in a row after which the scale doubles


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ChainruleError(f"unknown precision '{precision}'; choose from "
                             f"{', '.join(PRECISIONS)}")
    return precision


def scales_loss(precision: str) -> bool:
    """Whether training in `precision` needs loss scaling: f16 does; bf16 has f32's range."""
    return precision == "f16"


def lower_precision(graph: Graph, precision: str) -> tuple[Graph, bool]:
    """`graph` computed in `precision` where it computes in f32 (see the module's docstring);
    for f16 with the LOSS_SCALE input added. The outputs keep their dtypes and names."""
    if check_precision(precision) == "f32":
        return graph, False
    objective = graph.objective
    if objective is not None and objective.type.dtype != "f32":
        raise ChainruleError(f"mixed precision ({precision}) trains f32 models, and the "
                             f"objective '{objective.name}' is {objective.type.dtype}",
                             graph.loc)
    result = Graph(graph.name, inputs=list(graph.inputs), params=list(graph.params),
                   loc=graph.loc, input_locs=dict(graph.input_locs))
    # The graph's names are unique already, so each node keeps its output's name.
    builder = GraphBuilder(result, Namer(v.name for v in graph.inputs + graph.param_values()))
    values: dict[Value, Value] = {}
    casts: dict[tuple[Value, str], Value] = {}

    def read(value: Value, dtype: str | None, loc) -> Value:
        """`value` as a node computing in `dtype` reads it: cast between f32 and the low
        dtype, once per value and dtype."""
        value = builder.current(values.get(value, value))
        if dtype is None or value.type.dtype not in ("f32", precision) \
                or value.type.dtype == dtype:
            return value
        if (value, dtype) not in casts:
            casts[value, dtype] = builder.emit("cast", (value,), {"dtype": dtype},
                                               loc=loc, name=f"{value.name}.{dtype}")
        return casts[value, dtype]

    statistics = _feeding_only_state(graph)
    for node in graph.nodes:
        dtype = "f32" if id(node) in statistics else _compute_dtype(node, precision)
        results = builder.emit_results(node.op, [read(v, dtype, node.loc) for v in node.inputs],
                                       node.attrs, loc=node.loc,
                                       names=[v.name for v in node.outputs])
        values.update(zip(node.outputs, results))
    restored = {v: _restored(builder, builder.current(values.get(v, v)), v.type.dtype)
                for v in graph.outputs}
    result.outputs = [restored[v] for v in graph.outputs]
    result.objective = restored.get(graph.objective)
    by_name = {v.name: v for v in graph.outputs}
    result.updates = {state: restored[by_name[name]].name for state, name in graph.updates.items()}
    if scales_loss(precision):
        result.inputs.append(Value(LOSS_SCALE, scalar("f32")))
    return result, True


def _restored(builder: GraphBuilder, computed: Value, dtype: str) -> Value:
    """An output as the graph gave it: `computed` cast back to its `dtype`, under its name."""
    if computed.type.dtype == dtype:
        return computed
    name = computed.name
    computed = builder.rename(computed, f"{name}.{computed.type.dtype}")
    return builder.emit("cast", (computed,), {"dtype": dtype}, name=name)


def _feeding_only_state(graph: Graph) -> set[int]:
    """The ids of the nodes whose results reach the model's state updates (batch norm's
    running statistics) and no other output. They compute in f32, as the state is kept: a
    batch variance of f16 activations overflows f16 where the step's own gradients may not
    (onnxruntime computes f16 ops in f32), and the state would stay inf for good."""
    producers = graph.producers()

    def reaching(values) -> set[int]:
        seen, frontier = {}, list(values)
        while frontier:
            node = producers.get(frontier.pop())
            if node is not None and id(node) not in seen:
                seen[id(node)] = node
                frontier.extend(node.inputs)
        return set(seen)

    by_name = {v.name: v for v in graph.outputs}
    updates = {by_name[name] for name in graph.updates.values()}
    return reaching(updates) - reaching(v for v in graph.outputs if v not in updates)


def _compute_dtype(node, precision: str) -> str | None:
    """The dtype a node's f32 and low-precision inputs are cast to: None for a cast, which
    says its own dtype."""
    if node.op == "cast":
        return None
    if node.op in KEPT_IN_F32 or "body" in node.attrs:
        return "f32"
    if all(out.type.rank == 0 for out in node.outputs):
        return "f32"  # scalar arithmetic (losses added, regularisers) costs nothing in f32
    return precision
