"""The pass manager: named passes, pipelines, presets, printing, timing and verification.

Every pass takes a graph and a PassContext and returns the new graph and whether it changed
anything. Each also states its contract in terms of a few named graph properties: the ones it
requires, the ones it ensures and the ones it invalidates (with why). `check_order` walks a
pipeline over those declarations before any pass runs and refuses an order that breaks one,
naming the rule. Every pass but infer, expand_grad, autodiff and group runs inside scan bodies
too (autodiff differentiates a scan as a whole). Each pass declares the lowest preset (O0, O1, O2) that runs it; a preset is
the passes of its level and below, in the order PASSES lists them.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from ..ir import ChainruleError, Graph, print_graph
from ..ir.ops import OPS
from ..ir.verify import verify
from .autodiff import autodiff
from .cse import eliminate_common_subexpressions
from .dce import eliminate_dead_code
from .expand_grad import expand_grads
from .fuse import fuse
from .gemm_epilogue import gemm_epilogue
from .group_elementwise import group_elementwise
from .infer import infer_shapes
from .mixed_precision import LOSS_SCALE, lower_precision, scales_loss
from .nested import in_bodies
from .scan_hoist import hoist_scans
from .select_mode import select_mode
from .simplify import simplify


@dataclass
class PassContext:
    """What passes may need beyond the graph; autodiff records its gradients here."""

    wrt: list[str] | None = None          # names to differentiate with respect to; None: params
    training: bool = False                # select_mode: the training results, else inference
    evaluate: Callable | None = None      # evaluate(node, scalars) for constant folding
    grads: dict[str, str] = field(default_factory=dict)  # differentiated name -> gradient name
    precision: str = "f32"                # mixed_precision: the dtype the forward computes in
    # The test suite sets CHAINRULE_VERIFY=1 so every pipeline it runs is verified.
    verify_each: bool = field(default_factory=lambda: os.environ.get("CHAINRULE_VERIFY") == "1")
    print_after: set[str] | bool = False  # True: after every pass
    time_passes: bool = False
    out: object = None                    # where printing goes; None: sys.stdout
    timings: list[tuple[str, float, bool]] = field(default_factory=list)


@dataclass(frozen=True)
class Property:
    """A fact about a graph that some pass needs, makes true or breaks."""

    meaning: str
    # An annotation lives only on the graph its pass returns: every later pass rebuilds the
    # graph and drops it, so nothing may run after that pass.
    annotation: bool = False


PROPERTIES = {
    "differentiable": Property("every op autodiff may meet has a derivative rule"),
    "differentiated": Property("the graph also computes its objective's gradients"),
    "grouped": Property("the groups of elementwise nodes (graph.groups) that a backend may "
                        "run as one kernel", annotation=True),
}
# What a graph holds as a front end (lowering, ONNX import, the IR parser) gives it.
FRONT_END_PROPERTIES = frozenset({"differentiable"})


@dataclass(frozen=True)
class Pass:
    """A named pass and its contract: the properties it needs, makes true and breaks (each
    broken one with the reason, which a refused pipeline quotes), and the lowest preset that
    runs it (None: only when named)."""

    name: str
    run: Callable[[Graph, PassContext], tuple[Graph, bool]]
    summary: str
    level: int | None = None
    requires: frozenset[str] = frozenset()
    ensures: frozenset[str] = frozenset()
    invalidates: dict[str, str] = field(default_factory=dict)


def _autodiff(graph: Graph, ctx: PassContext) -> tuple[Graph, bool]:
    if graph.objective is None:
        raise ChainruleError("the graph has no objective to differentiate", graph.loc)
    if ctx.wrt is None:
        wrt = graph.trainable_values()
    else:
        by_name = {v.name: v for v in list(graph.inputs) + graph.param_values()}
        unknown = [name for name in ctx.wrt if name not in by_name]
        if unknown:
            raise ChainruleError(f"cannot differentiate with respect to {', '.join(unknown)}: "
                                 f"not an input or param (those are {', '.join(by_name)})")
        wrt = [by_name[name] for name in ctx.wrt]
    # Under f16 the backward graph starts from the loss scale (mixed_precision.py), not 1.
    seed = graph.find(LOSS_SCALE) if scales_loss(ctx.precision) else None
    result, grads = autodiff(graph, graph.objective, wrt, seed)
    ctx.grads = {name: value.name for name, value in grads.items()}
    return result, True


# The ops the fuse passes write, which autodiff cannot differentiate (the registry's "fused").
FUSED_OPS = [name for name, op in OPS.items() if "fused" in op.traits]

# In pipeline order: a preset runs the passes of its level and below in this order.
PASSES = {p.name: p for p in [
    Pass("infer", lambda g, ctx: infer_shapes(g), "shape and dtype inference"),
    Pass("expand_grad", lambda g, ctx: expand_grads(g),
         "replace grad(objective, wrt) expressions by their backward graphs"),
    Pass("select_mode", lambda g, ctx: in_bodies(lambda b: select_mode(b, ctx.training))(g),
         "choose training or inference results (batch_norm), dropping state updates for "
         "inference", level=0),
    Pass("mixed_precision", lambda g, ctx: lower_precision(g, ctx.precision),
         "compute the forward graph in PassContext.precision (bf16, f16) from f32 params, "
         "ahead of autodiff"),
    Pass("autodiff", _autodiff, "append the backward graph of the objective", level=0,
         requires=frozenset({"differentiable"}), ensures=frozenset({"differentiated"})),
    Pass("simplify", lambda g, ctx: in_bodies(lambda b: simplify(b, ctx.evaluate))(g),
         "algebraic simplification and constant folding", level=1),
    Pass("cse", lambda g, ctx: in_bodies(eliminate_common_subexpressions)(g),
         "common-subexpression elimination", level=1),
    Pass("scan_hoist", lambda g, ctx: in_bodies(hoist_scans)(g),
         "move the work of a scan's body that needs no loop out of it, computed for every "
         "step at once", level=1),
    Pass("fuse", lambda g, ctx: in_bodies(fuse)(g), "fuse backward patterns into single ops",
         level=2,
         invalidates={"differentiable": f"fuse writes fused ops, which have no derivative "
                                        f"rule ({', '.join(FUSED_OPS)})"}),
    Pass("gemm_epilogue", lambda g, ctx: in_bodies(gemm_epilogue)(g),
         "fold a matrix product's scaling and accumulation (weight decay, the update) into it",
         level=2, invalidates={"differentiable": "gemm_epilogue writes gemm_acc, which has no "
                                                 "derivative rule"}),
    Pass("dce", lambda g, ctx: in_bodies(eliminate_dead_code)(g), "dead-code elimination",
         level=0),
    Pass("group", lambda g, ctx: group_elementwise(g),
         "mark groups of elementwise ops that a backend may run as one kernel", level=2,
         ensures=frozenset({"grouped"})),
]}

LEVELS = ("O0", "O1", "O2")


def check_opt_level(opt_level: str) -> str:
    if opt_level not in LEVELS:
        raise ChainruleError(f"unknown optimisation level {opt_level!r}; choose from "
                             f"{', '.join(LEVELS)}")
    return opt_level


def preset(opt_level: str, grad: bool = False) -> list[str]:
    """The passes of `opt_level` and the levels below it, in pipeline order; the passes that
    differentiate only when `grad` asks for gradients."""
    level = LEVELS.index(check_opt_level(opt_level))
    return [p.name for p in PASSES.values() if p.level is not None and p.level <= level
            and (grad or "differentiated" not in p.ensures)]


PRESETS = {level: preset(level) for level in LEVELS}


def pipeline(passes: str | None = None, opt_level: str = "O0", grad: bool = False) -> list[str]:
    """The pass names to run: an explicit comma-separated list, or a preset."""
    if passes:
        names = [n.strip() for n in passes.split(",") if n.strip()]
    else:
        names = preset(opt_level, grad)
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise ChainruleError(f"unknown pass(es) {', '.join(unknown)}; the passes are "
                             f"{', '.join(PASSES)}")
    return names


def check_order(names: list[str]) -> None:
    """Refuse, before anything runs, a pipeline in which a pass would meet a graph without a
    property it requires, or would drop an annotation an earlier pass made."""
    holds = set(FRONT_END_PROPERTIES)
    made_by: dict[str, str] = {}             # property -> the pass that made it hold
    broken_by: dict[str, tuple[str, str]] = {}  # property -> (the pass that broke it, why)
    for name in names:
        contract = PASSES[name]
        for prop in sorted(contract.requires - holds):
            if prop in broken_by:
                breaker, why = broken_by[prop]
                raise ChainruleError(f"{name} cannot run after {breaker}: {why}; run {name} "
                                     f"before {breaker}")
            raise ChainruleError(f"{name} requires that {PROPERTIES[prop].meaning}, and no pass "
                                 f"before it makes that hold")
        for prop in sorted(holds - contract.ensures):
            if PROPERTIES[prop].annotation:
                maker = made_by[prop]
                raise ChainruleError(f"{name} cannot run after {maker}: {name} would drop "
                                     f"{PROPERTIES[prop].meaning}, an annotation only the "
                                     f"graph {maker} returns holds; run {maker} last")
        for prop, why in contract.invalidates.items():
            holds.discard(prop)
            broken_by[prop] = (name, why)
        holds |= contract.ensures
        made_by.update(dict.fromkeys(contract.ensures, name))


def run_passes(graph: Graph, names: list[str], ctx: PassContext | None = None) -> Graph:
    ctx = ctx or PassContext()
    check_order(names)
    if ctx.verify_each:
        verify(graph)
    for name in names:
        started = time.perf_counter()
        graph, changed = PASSES[name].run(graph, ctx)
        ctx.timings.append((name, time.perf_counter() - started, changed))
        if ctx.verify_each:
            verify(graph)
        if ctx.print_after is True or (ctx.print_after and name in ctx.print_after):
            print(f"# ----- IR after {name}{'' if changed else ' (unchanged)'} -----",
                  file=ctx.out or sys.stdout)
            print(print_graph(graph), file=ctx.out or sys.stdout)
    if ctx.time_passes:
        print(format_timings(ctx.timings, graph), file=ctx.out or sys.stdout)
    return graph


def format_timings(timings, graph: Graph) -> str:
    total = sum(seconds for _, seconds, _ in timings) or 1e-12
    lines = ["# ----- pass timings -----", f"# {'pass':<12} {'ms':>9} {'%':>6}  changed"]
    for name, seconds, changed in timings:
        lines.append(f"# {name:<12} {seconds * 1e3:9.3f} {100 * seconds / total:6.1f}  "
                     f"{'yes' if changed else 'no'}")
    lines.append(f"# {'total':<12} {total * 1e3:9.3f}  ({len(graph.nodes)} nodes after)")
    return "\n".join(lines)
