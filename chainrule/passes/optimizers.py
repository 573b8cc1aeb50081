"""The optimizer update as a graph transformation: gradient graph -> train-step graph.

The train-step graph's inputs are a batch, the params, the optimizer state and the learning
rate `opt.lr`; its outputs are the objective, the model's other scalar outputs (metrics), the
new params `W.next` and the new state `opt.*.next`. Hyperparameters other than the learning
rate are constants in the graph. Both backends run it, and it exports as plain ONNX. Gradient
clipping by global norm, when asked for, is part of the step too, ahead of the update.
"""
from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass, field, replace

import numpy as np

from ..bounds import MOMENTUM, NON_NEGATIVE
from ..ir import ChainruleError, Graph, GraphBuilder, Value
from ..ir.types import numpy_dtype, promote_types, scalar
from .mixed_precision import GOOD_STEPS, INITIAL_LOSS_SCALE, LOSS_SCALE, SKIPPED

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
LR = "opt.lr"
STEP = "opt.step"
CLIP_EPS = 1e-6  # keeps min(1, max / norm) finite when every gradient is zero (PyTorch's too)


@dataclass(frozen=True)
class ParamGroup:
    """Settings for the params whose names match a glob pattern: their own weight decay (None:
    the optimizer's) and a factor on the learning rate."""

    pattern: str
    weight_decay: float | None = None
    lr_scale: float = 1.0


@dataclass(frozen=True)
class OptimizerSpec:
    kind: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0   # sgd, adamw: decoupled; adam, rmsprop: added to the gradient
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8           # adam, adamw, rmsprop
    alpha: float = 0.99         # rmsprop: the decay of the running mean of squared gradients
    clip_grad_norm: float = 0.0  # bound on the L2 norm of all gradients together (0: none)
    groups: tuple[ParamGroup, ...] = ()  # per-param settings: the first matching group's

    def __post_init__(self):
        if self.kind not in OPTIMIZERS:
            raise ChainruleError(f"unknown optimizer '{self.kind}'; choose from "
                                 f"{', '.join(OPTIMIZERS)}")
        if self.nesterov and (self.kind != "sgd" or self.momentum <= 0):
            raise ChainruleError("nesterov needs sgd with a positive momentum")
        if self.kind == "rmsprop" and self.momentum:
            raise ChainruleError("rmsprop has no momentum here: give --momentum with sgd only")
        if not 0 <= self.alpha < 1:
            raise ChainruleError(f"rmsprop's alpha must lie in [0, 1), not {self.alpha}")
        # The CLI's bounds for --momentum, --weight-decay and --clip-grad-norm (0: none).
        MOMENTUM.check(self.momentum, "OptimizerSpec.momentum")
        NON_NEGATIVE.check(self.weight_decay, "OptimizerSpec.weight_decay")
        NON_NEGATIVE.check(self.clip_grad_norm, "OptimizerSpec.clip_grad_norm")

    def settings_for(self, param: str) -> tuple[float, float]:
        """The weight decay and lr factor of a param: its first matching group's, else the
        optimizer's own and 1."""
        for group in self.groups:
            if fnmatch.fnmatchcase(param, group.pattern):
                decay = self.weight_decay if group.weight_decay is None else group.weight_decay
                return decay, group.lr_scale
        return self.weight_decay, 1.0

    def check_groups(self, trained: list[str]) -> None:
        for group in self.groups:
            if not any(fnmatch.fnmatchcase(name, group.pattern) for name in trained):
                raise ChainruleError(f"param group '{group.pattern}' matches no trained param; "
                                     f"they are {', '.join(trained) or '(none)'}")

    def state_slots(self) -> tuple[str, ...]:
        """Per-param state buffers, each with the param's shape."""
        if self.kind == "sgd":
            return ("velocity",) if self.momentum else ()
        if self.kind == "rmsprop":
            return ("square_avg",)
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


def step_optimizer(config) -> OptimizerSpec:
    """The update a training config's step runs: its optimizer, clipping gradients as the
    config's clip_grad_norm says when that is set."""
    if not config.clip_grad_norm:
        return config.optimizer
    return replace(config.optimizer, clip_grad_norm=config.clip_grad_norm)


def trained_params(graph: Graph, freeze) -> list[str] | None:
    """The params a step differentiates and updates when the glob patterns `freeze` name the
    ones to keep fixed: the others, by name (None when nothing is frozen: all of them)."""
    if not freeze:
        return None
    names = [value.name for value in graph.trainable_values()]
    for pattern in freeze:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ChainruleError(f"freeze pattern '{pattern}' matches no param; the params "
                                 f"are {', '.join(names) or '(none)'}")
    return [name for name in names
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in freeze)]


@dataclass
class TrainStepInterface:
    """Names of the train-step graph's inputs and outputs beyond the batch."""

    objective: str
    metrics: list[str]
    params: dict[str, str] = field(default_factory=dict)   # param or model state -> next value
    state: dict[str, str] = field(default_factory=dict)    # state input -> its next value
    initial: dict[str, float] = field(default_factory=dict)  # state that does not start at 0
    skipped: str | None = None  # with loss scaling: the output that is 1 on a skipped step


def initial_state(graph: Graph, interface: TrainStepInterface) -> dict[str, np.ndarray]:
    """The optimizer's state inputs of a train-step graph at their starting values: zeros, or
    the value `interface.initial` names (the loss scale)."""
    types = {v.name: v.type for v in graph.inputs}
    return {name: np.full(types[name].shape, interface.initial.get(name, 0.0),
                          numpy_dtype(types[name].dtype))
            for name in interface.state}


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


def build_train_step(graph: Graph, grads: dict[str, str], spec: OptimizerSpec,
                     loss_scale_interval: int | None = None):
    """From a gradient graph (outputs: objective, other outputs, gradients) build the step.

    With `loss_scale_interval` the gradients are those of the objective times the graph's
    LOSS_SCALE input (mixed_precision.py): the step divides the scale out, and a step whose
    gradients are not all finite changes no param nor optimizer state and halves the scale;
    after that many good steps in a row the scale doubles."""
    result = graph.copy()
    builder = GraphBuilder(result)
    objective = graph.objective
    dtype = objective.type.dtype
    # The update computes in f32 at least: in f16 or bf16, Adam's beta2 (0.999) rounds to 1 and
    # its eps (1e-8) to 0, and a step count stops at 2048 (f16) or 256 (bf16). A param of a low
    # dtype has its gradient, its optimizer state and its update in f32, and only the updated
    # value is rounded to its own dtype.
    opt_dtype = promote_types(dtype, "f32")
    metrics = metric_outputs(graph, grads)
    interface = TrainStepInterface(objective.name, [m.name for m in metrics])

    def new_input(name: str, value_type) -> Value:
        value = Value(builder.namer.fresh(name), value_type)
        result.inputs.append(value)
        return value

    def const(number: float, of: str = opt_dtype) -> Value:
        return builder.constant(number, of, name="opt.const")

    def as_dtype(value: Value, of: str) -> Value:
        return value if value.type.dtype == of else builder.emit("cast", (value,), {"dtype": of})

    lr = new_input(LR, scalar(dtype))
    opt_lr = as_dtype(lr, opt_dtype)
    step_scale = None
    outputs = [objective] + metrics
    state_outputs = []
    by_name = {v.name: v for v in graph.values()}
    gradients = {p.value.name: by_name[grads[p.value.name]] for p in graph.params
                 if p.trainable and p.value.name in grads}
    gradients = {name: as_dtype(g, promote_types(g.type.dtype, opt_dtype))
                 for name, g in gradients.items()}
    finite = None  # with loss scaling: whether this step's gradients are all finite
    if loss_scale_interval is not None:
        gradients, finite = _unscaled(builder, const, by_name[LOSS_SCALE], gradients)
        good_steps = new_input(GOOD_STEPS, scalar(dtype))
        state_outputs += _next_loss_scale(builder, const, by_name[LOSS_SCALE], good_steps,
                                          finite, loss_scale_interval, interface)
        outputs.append(builder.emit("cast", (builder.emit("logical_not", (finite,)),),
                                    {"dtype": dtype}, name=SKIPPED))
        interface.skipped = outputs[-1].name

    def next_value(op: str, inputs, old: Value, name: str, attrs=None) -> Value:
        """`op(inputs)`, named `name`: the next value of `old`, which a skipped step keeps."""
        if finite is None:
            return builder.emit(op, inputs, attrs, name=name)
        return builder.emit("where", (finite, builder.emit(op, inputs, attrs), old), name=name)

    if spec.counts_steps:
        step = new_input(STEP, scalar(opt_dtype))
        next_step = next_value("add", (step, const(1.0)), step, f"{STEP}.next")
        state_outputs.append(next_step)
        interface.state[step.name] = next_step.name
        step_scale = _adam_step_scale(builder, const, opt_lr, next_step, spec)

    emit = builder.emit
    if spec.clip_grad_norm and gradients:
        gradients = _clipped_by_global_norm(emit, const, gradients, spec.clip_grad_norm)
    spec.check_groups(list(gradients))
    for param in graph.params:
        weight = param.value
        name = weight.name
        if name not in gradients:  # state, or a frozen param: no gradient, no optimizer step
            if name in graph.updates:  # state: its next value is the model's own update
                update = by_name[graph.updates[name]]
                if finite is not None:  # which a skipped step does not make either
                    update = emit("where", (finite, update, weight), name=f"{name}.kept")
                outputs.append(update)
                interface.params[name] = update.name
            continue
        grad = gradients[name]
        work = grad.type.dtype
        work_const = functools.partial(const, of=work)
        work_lr, work_weight = as_dtype(opt_lr, work), as_dtype(weight, work)
        weight_decay, lr_scale = spec.settings_for(name)
        if spec.kind in ("adam", "rmsprop") and weight_decay:
            grad = emit("add", (grad, emit("mul", (work_const(weight_decay), work_weight))))
        slots = {slot: new_input(state_name(slot, name), weight.type.with_dtype(work))
                 for slot in spec.state_slots()}
        new_state = {}
        if spec.kind == "sgd":
            update = grad
            if spec.momentum:
                velocity = next_value("add", (emit("mul", (work_const(spec.momentum),
                                                           slots["velocity"])), grad),
                                      slots["velocity"], f"{slots['velocity'].name}.next")
                new_state["velocity"] = velocity
                update = (emit("add", (grad, emit("mul", (work_const(spec.momentum), velocity))))
                          if spec.nesterov else velocity)
            delta = emit("mul", (work_lr, update))
        elif spec.kind == "rmsprop":
            square_avg = slots["square_avg"]
            squared = emit("mul", (work_const(1.0 - spec.alpha), emit("mul", (grad, grad))))
            decayed = emit("mul", (work_const(spec.alpha), square_avg))
            average = next_value("add", (decayed, squared), square_avg,
                                 f"{square_avg.name}.next")
            new_state["square_avg"] = average
            denominator = emit("add", (emit("sqrt", (average,)), work_const(spec.eps)))
            delta = emit("mul", (work_lr, emit("div", (grad, denominator))))
        else:
            m = next_value("add", (emit("mul", (work_const(spec.beta1), slots["m"])),
                                   emit("mul", (work_const(1.0 - spec.beta1), grad))),
                           slots["m"], f"{slots['m'].name}.next")
            v = next_value("add", (emit("mul", (work_const(spec.beta2), slots["v"])),
                                   emit("mul", (work_const(1.0 - spec.beta2),
                                                emit("mul", (grad, grad))))),
                           slots["v"], f"{slots['v'].name}.next")
            new_state.update(m=m, v=v)
            root_bc2 = as_dtype(step_scale["root_bc2"], work)
            lr_over_bc1 = as_dtype(step_scale["lr_over_bc1"], work)
            denominator = emit("add", (emit("div", (emit("sqrt", (v,)), root_bc2)),
                                       work_const(spec.eps)))
            delta = emit("mul", (lr_over_bc1, emit("div", (m, denominator))))
        if weight_decay and spec.kind in ("sgd", "adamw"):
            decay = emit("mul", (work_lr, work_const(weight_decay)))
            delta = emit("add", (delta, emit("mul", (decay, work_weight))))
        if lr_scale != 1.0:  # the whole step scales with the lr, decoupled decay included
            delta = emit("mul", (work_const(lr_scale), delta))
        if work == weight.type.dtype:
            updated = next_value("sub", (weight, delta), weight, f"{name}.next")
        else:  # rounded to the param's own dtype once, from its update computed in `work`
            updated = next_value("cast", (emit("sub", (work_weight, delta)),), weight,
                                 f"{name}.next", {"dtype": weight.type.dtype})
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


def _unscaled(builder, const, scale: Value,
              gradients: dict[str, Value]) -> tuple[dict[str, Value], Value]:
    """The gradients with the loss scale divided out, and whether they are all finite: their
    sum of squares is (an Inf or a NaN anywhere makes it Inf or NaN)."""
    emit = builder.emit
    total = _sum_of_squares(emit, gradients) if gradients else const(0.0)
    finite = emit("less_equal", (total, const(float(np.finfo(np.float32).max))),
                  name="amp.finite")
    return {name: emit("div", (g, scale)) for name, g in gradients.items()}, finite


def _next_loss_scale(builder, const, scale: Value, good_steps: Value, finite: Value,
                     interval: int, interface: TrainStepInterface) -> list[Value]:
    """The loss scale and good-step count after this step: the scale halves on a step with
    non-finite gradients and doubles after `interval` good steps in a row (PyTorch's
    GradScaler's rule); the count restarts whenever the scale changes."""
    emit = builder.emit
    counted = emit("add", (good_steps, const(1.0)))
    grow = emit("greater_equal", (counted, const(float(interval))))
    kept_scale = emit("where", (grow, emit("mul", (scale, const(2.0))), scale))
    next_scale = emit("where", (finite, kept_scale, emit("mul", (scale, const(0.5)))),
                      name=f"{LOSS_SCALE}.next")
    kept_count = emit("where", (grow, const(0.0), counted))
    next_count = emit("where", (finite, kept_count, const(0.0)), name=f"{GOOD_STEPS}.next")
    interface.state.update({scale.name: next_scale.name, good_steps.name: next_count.name})
    interface.initial[scale.name] = INITIAL_LOSS_SCALE
    return [next_scale, next_count]


def _sum_of_squares(emit, gradients: dict[str, Value]) -> Value:
    """The sum of every gradient's squares: their L2 norm squared, as one vector."""
    squares = [emit("sum", (emit("mul", (g, g)),)) for g in gradients.values()]
    return functools.reduce(lambda a, b: emit("add", (a, b)), squares)


def _clipped_by_global_norm(emit, const, gradients: dict[str, Value],
                            max_norm: float) -> dict[str, Value]:
    """Every gradient times min(1, max_norm / (norm + eps)), norm being the L2 norm of all of
    them as one vector: the direction of the step is kept, only its length is bounded."""
    norm = emit("sqrt", (_sum_of_squares(emit, gradients),), name="opt.grad_norm")
    ratio = emit("div", (const(max_norm), emit("add", (norm, const(CLIP_EPS)))))
    scale = emit("minimum", (const(1.0), ratio), name="opt.clip_scale")
    return {name: emit("mul", (scale, g)) for name, g in gradients.items()}


def _adam_step_scale(builder, const, lr, step, spec) -> dict[str, Value]:
    """lr / (1 - beta1^t) and sqrt(1 - beta2^t): Adam's bias corrections, once per step."""
    emit = builder.emit
    bias1 = emit("sub", (const(1.0), emit("pow", (const(spec.beta1), step))))
    bias2 = emit("sub", (const(1.0), emit("pow", (const(spec.beta2), step))))
    return {"lr_over_bc1": emit("div", (lr, bias1)), "root_bc2": emit("sqrt", (bias2,))}
