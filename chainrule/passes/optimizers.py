"""The optimizer update as a graph transformation: gradient graph -> train-step graph.

The train-step graph's inputs are a batch, the params, the optimizer state and the learning
rate `opt.lr`; its outputs are the objective, the model's other scalar outputs (metrics), the
new params `W.next` and the new state `opt.*.next`. Hyperparameters other than the learning
rate are constants in the graph. Both backends run it, and it exports as plain ONNX.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import ChainruleError, Graph, GraphBuilder, Value
from ..ir.types import scalar

OPTIMIZERS = ("sgd", "adam", "adamw")
LR = "opt.lr"
STEP = "opt.step"


@dataclass(frozen=True)
class OptimizerSpec:
    kind: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0   # sgd, adamw: decoupled; adam: added to the gradient
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        if self.kind not in OPTIMIZERS:
            raise ChainruleError(f"unknown optimizer '{self.kind}'; choose from "
                                 f"{', '.join(OPTIMIZERS)}")
        if self.nesterov and (self.kind != "sgd" or self.momentum <= 0):
            raise ChainruleError("nesterov needs sgd with a positive momentum")

    def state_slots(self) -> tuple[str, ...]:
        """Per-param state buffers, each with the param's shape."""
        if self.kind == "sgd":
            return ("velocity",) if self.momentum else ()
        return ("m", "v")

    @property
    def counts_steps(self) -> bool:
        return self.kind in ("adam", "adamw")

    @classmethod
    def of(cls, optimizer: OptimizerSpec | str | None) -> OptimizerSpec:
        """A spec from a spec, or an optimizer's name with its defaults ("adam"); None is
        the default spec. Every API that takes a spec takes a name through this."""
        if optimizer is None:
            return cls()
        if isinstance(optimizer, str):
            return cls(optimizer)
        if not isinstance(optimizer, cls):
            raise ChainruleError(f"an optimizer is a name ({', '.join(OPTIMIZERS)}) or an "
                                 f"OptimizerSpec, not {type(optimizer).__name__}")
        return optimizer


@dataclass
class TrainStepInterface:
    """Names of the train-step graph's inputs and outputs beyond the batch."""

    objective: str
    metrics: list[str]
    params: dict[str, str] = field(default_factory=dict)   # param or model state -> next value
    state: dict[str, str] = field(default_factory=dict)    # state input -> its next value


def state_name(slot: str, param: str) -> str:
    return f"opt.{slot}.{param}"


def metric_outputs(graph: Graph, grads: dict[str, str]) -> list[Value]:
    """The outputs a step reports beside the objective: scalars of the objective's dtype that
    are neither gradients nor state updates."""
    dtype = graph.objective.type.dtype
    updates = set(graph.updates.values())
    return [v for v in graph.outputs if v is not graph.objective
            and v.type.rank == 0 and v.type.dtype == dtype
            and v.name not in grads.values() and v.name not in updates]


def build_train_step(graph: Graph, grads: dict[str, str], spec: OptimizerSpec):
    """From a gradient graph (outputs: objective, other outputs, gradients) build the step."""
    result = graph.copy()
    builder = GraphBuilder(result)
    objective = graph.objective
    dtype = objective.type.dtype
    metrics = metric_outputs(graph, grads)
    interface = TrainStepInterface(objective.name, [m.name for m in metrics])

    def new_input(name: str, value_type) -> Value:
        value = Value(builder.namer.fresh(name), value_type)
        result.inputs.append(value)
        return value

    def const(number: float) -> Value:
        return builder.constant(number, dtype, name="opt.const")

    lr = new_input(LR, scalar(dtype))
    step_scale = None
    outputs = [objective] + metrics
    state_outputs = []
    if spec.counts_steps:
        step = new_input(STEP, scalar(dtype))
        next_step = builder.emit("add", (step, const(1.0)), name=f"{STEP}.next")
        state_outputs.append(next_step)
        interface.state[step.name] = next_step.name
        step_scale = _adam_step_scale(builder, const, lr, next_step, spec)

    emit = builder.emit
    by_name = {v.name: v for v in graph.values()}
    for param in graph.params:
        weight = param.value
        name = weight.name
        if not param.trainable:  # state: its next value is the model's own update
            if name in graph.updates:
                outputs.append(by_name[graph.updates[name]])
                interface.params[name] = graph.updates[name]
            continue
        grad = by_name[grads[name]]
        if spec.kind == "adam" and spec.weight_decay:
            grad = emit("add", (grad, emit("mul", (const(spec.weight_decay), weight))))
        slots = {slot: new_input(state_name(slot, name), weight.type)
                 for slot in spec.state_slots()}
        new_state = {}
        if spec.kind == "sgd":
            update = grad
            if spec.momentum:
                velocity = emit("add", (emit("mul", (const(spec.momentum), slots["velocity"])),
                                        grad), name=f"{slots['velocity'].name}.next")
                new_state["velocity"] = velocity
                update = (emit("add", (grad, emit("mul", (const(spec.momentum), velocity))))
                          if spec.nesterov else velocity)
            delta = emit("mul", (lr, update))
        else:
            m = emit("add", (emit("mul", (const(spec.beta1), slots["m"])),
                             emit("mul", (const(1.0 - spec.beta1), grad))),
                     name=f"{slots['m'].name}.next")
            v = emit("add", (emit("mul", (const(spec.beta2), slots["v"])),
                             emit("mul", (const(1.0 - spec.beta2), emit("mul", (grad, grad))))),
                     name=f"{slots['v'].name}.next")
            new_state.update(m=m, v=v)
            denominator = emit("add", (emit("div", (emit("sqrt", (v,)), step_scale["root_bc2"])),
                                       const(spec.eps)))
            delta = emit("mul", (step_scale["lr_over_bc1"], emit("div", (m, denominator))))
        if spec.weight_decay and spec.kind in ("sgd", "adamw"):
            delta = emit("add", (delta, emit("mul", (emit("mul", (lr, const(spec.weight_decay))),
                                                     weight))))
        updated = emit("sub", (weight, delta), name=f"{name}.next")
        outputs.append(updated)
        interface.params[name] = updated.name
        for slot, value in new_state.items():
            state_outputs.append(value)
            interface.state[slots[slot].name] = value.name
    result.outputs = outputs + state_outputs
    result.objective = objective
    result.updates = {}  # the interface says which output updates which input now
    return result, interface


def update_inputs(graph: Graph, grads: dict[str, str]) -> list[str]:
    """The outputs of a gradient graph that the optimizer update reads: the objective, the
    metrics, the gradients and the state updates, each once."""
    names = [graph.objective.name] + [v.name for v in metric_outputs(graph, grads)]
    return list(dict.fromkeys([*names, *grads.values(), *graph.updates.values()]))


def build_update_step(graph: Graph, grads: dict[str, str], spec: OptimizerSpec):
    """The optimizer update alone, for gradients computed elsewhere (data-parallel training).

    Its inputs are what the gradient graph `graph` outputs, under the same names (objective,
    scalar metrics, gradients `dJ/dW`, state updates `rm.next`), plus the learning rate and the
    optimizer state; its params are the graph's. It is the train step of a graph with no nodes
    whose outputs are those inputs, so the update and the interface are build_train_step's."""
    by_name = {v.name: v for v in graph.outputs}
    inputs = [Value(name, by_name[name].type) for name in update_inputs(graph, grads)]
    passthrough = Graph(graph.name, inputs=inputs, params=list(graph.params),
                        outputs=list(inputs), loc=graph.loc, objective=inputs[0],
                        updates=dict(graph.updates))
    return build_train_step(passthrough, grads, spec)


def _adam_step_scale(builder, const, lr, step, spec) -> dict[str, Value]:
    """lr / (1 - beta1^t) and sqrt(1 - beta2^t): Adam's bias corrections, once per step."""
    emit = builder.emit
    bias1 = emit("sub", (const(1.0), emit("pow", (const(spec.beta1), step))))
    bias2 = emit("sub", (const(1.0), emit("pow", (const(spec.beta2), step))))
    return {"lr_over_bc1": emit("div", (lr, bias1)), "root_bc2": emit("sqrt", (bias2,))}
