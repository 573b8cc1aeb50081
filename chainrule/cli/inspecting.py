"""The commands that compile a model without running it: check, ir, viz, export and import."""
from __future__ import annotations

import sys

import numpy as np

from pathlib import Path

from .. import __version__
from ..fileio import atomic_write_bytes, check_writable, save_npz
from ..ir import dsl_names, print_dsl, print_graph
from ..ir.dsl_printer import value_source
from ..ir.errors import printable
from ..passes import gradient_prefix
from ..passes.manager import PASSES, PassContext, preset
from ..viz import picture_target, render, to_dot
from .inputs import (UsageError, exported_step_spec, frozen_patterns, gather_inputs, is_onnx_model,
                     load_model)


def cmd_check(args) -> int:
    model = load_model(args)
    graph = model.graph
    print(f"{args.file}: model {graph.name} ok")
    print("inputs:")
    for value in graph.inputs:
        print(f"  {value.name}: {value.type}")
    state = [p for p in graph.params if not p.trainable and p.value.name in graph.updates]
    frozen = [p for p in graph.params if not p.trainable and p.value.name not in graph.updates]
    print_params("params", [p for p in graph.params if p.trainable], graph)
    if state:
        print_params("state (updated by training)", state, graph)
    if frozen:
        print_params("frozen (training leaves them)", frozen, graph)
    updates = set(graph.updates.values())
    print("outputs:")
    for value in graph.outputs:
        role = "  (objective)" if value is graph.objective else ""
        if value.name not in updates:
            print(f"  {value.name}: {value.type}{role}")
    inner = _body_nodes(graph)
    print(f"nodes: {len(graph.nodes)}" + (f" (and {inner} in loop bodies)" if inner else ""))
    return 0


def _body_nodes(graph) -> int:
    """How many nodes the scans' bodies hold (each once, however many steps it runs)."""
    return sum(len(node.attrs["body"].nodes) + _body_nodes(node.attrs["body"])
               for node in graph.nodes if "body" in node.attrs)


def print_params(title: str, params: list, graph) -> None:
    print(f"{title}:")
    for param in params:
        count = int(np.prod(param.value.type.shape))
        noun = "value" if count == 1 else "values"
        update = (f", next: {graph.updates[param.value.name]}"
                  if param.value.name in graph.updates else "")
        source = f"= {param.init}" if not param.loc or not param.loc.node else \
            f"{value_source(param)} (fresh: {param.init})"
        print(f"  {param.value.name}: {param.value.type} {source}  "
              f"({count:,} {noun}{update})")
    total = sum(int(np.prod(p.value.type.shape)) for p in params)
    print(f"  total: {total:,} values")


def pass_context(args) -> PassContext:
    unknown = sorted(set(args.print_after or ()) - set(PASSES))
    if unknown:
        raise UsageError(f"--print-after: unknown pass(es) {', '.join(unknown)}; the passes are "
                         f"{', '.join(PASSES)}")
    print_after = True if args.print_after_all else set(args.print_after or ())
    return PassContext(verify_each=args.verify_each, print_after=print_after,
                       time_passes=args.time_passes)


def cmd_ir(args) -> int:
    model = load_model(args)
    compiled = args.emit == "python" or args.print_memory_plan
    passes = args.passes
    if not (passes or args.grad or compiled or args.print_after or args.print_after_all):
        # The text keeps both of batch norm's results and the state updates, so that `train`
        # on a .cir trains the model the source does, and `run` on it infers as the source.
        passes = ",".join(name for name in preset(args.opt_level) if name != "select_mode")
    graph, _ = model.compile_graph(grad=args.grad, opt_level=args.opt_level,
                                   passes=passes, ctx=pass_context(args))
    if compiled:
        from ..backends.numpy_compiled import compile_graph, describe_plan

        compiled = compile_graph(graph)
        if args.emit == "python":
            print(compiled.listing(), end="")
        if args.print_memory_plan:
            print(describe_plan(graph, compiled.plan))
    elif not (args.print_after_all or args.print_after):
        print(print_graph(graph), end="")
    return 0


def cmd_viz(args) -> int:
    if args.html:
        return write_graph_page(args)
    if args.random_inputs or args.inputs or args.input or args.map:
        raise UsageError("inputs give the --html page its values; a picture has none: "
                         "give --html PAGE.html")
    model = load_model(args)
    graph, _ = model.compile_graph(grad=args.grad, opt_level=args.opt_level)
    dot_text = to_dot(graph, gradient_prefix(model.objective) if args.grad else None)
    if not args.output:
        print(dot_text, end="")
        return 0
    target, note = picture_target(args.output)
    if note:  # said before writing: the file written is not the one asked for
        print(f"chainrule: note: {note}", file=sys.stderr)
    render(dot_text, args.output)
    print(f"wrote {target}")
    return 0


def write_graph_page(args) -> int:
    """`viz --html`: the interactive page, with each node's value when inputs are given."""
    from ..page.graph_document import differentiable, graph_page_data
    from ..page.html import write_page

    if args.output:
        raise UsageError("give either -o (a picture) or --html (the page), not both")
    check_writable(args.html)
    model = load_model(args)
    wants_values = args.random_inputs or args.inputs or args.input or args.map
    feeds = gather_inputs(args, model) if wants_values else None
    if not differentiable(model):
        print("chainrule: note: the model has no scalar objective, so the page shows the "
              "forward graph only" + (" (--loss attaches one to an imported model)"
                                      if is_onnx_model(args) else ""), file=sys.stderr)
    data = graph_page_data(model, opt_level=args.opt_level, feeds=feeds)
    write_page(args.html, {"title": f"{model.graph.name}: chainrule", **data})
    views = data["graph"]["views"]
    counts = ", ".join(f"{v['key']}: {v['stats']['forward']} forward and "
                       f"{v['stats']['backward']} backward nodes" for v in views)
    print(f"wrote {args.html} ({counts}{', with values' if feeds else ''})")
    return 0


def cmd_export(args) -> int:
    model = load_model(args, own_options=("freeze",) if args.train_step else ())
    outputs = args.outputs.split(",") if args.outputs else None
    wrt = args.wrt.split(",") if args.wrt else None
    if args.train_step and (args.grad or outputs or wrt):
        raise UsageError("--train-step exports the whole step; it takes no --grad, --outputs "
                         "or --wrt")
    if args.precision != "f32" and not args.train_step:
        raise UsageError(f"--precision {args.precision} applies to a train step: give "
                         f"--train-step")
    proto = model.to_onnx(args.output, grad=args.grad, outputs=outputs, wrt=wrt,
                          opset=args.opset, opt_level=args.opt_level,
                          train_step=exported_step_spec(args) if args.train_step else None,
                          freeze=frozen_patterns(args) if args.train_step else (),
                          precision=args.precision, loss_scale_interval=args.loss_scale_interval)
    graph = proto.graph
    in_bodies = _nodes_in_bodies(graph)
    print(f"wrote {args.output}: opset {args.opset}, {len(graph.node)} ONNX nodes"
          + (f" (and {in_bodies} in loop bodies)" if in_bodies else ""))
    print("  inputs:  " + ", ".join(i.name for i in graph.input))
    print("  outputs: " + ", ".join(o.name for o in graph.output))
    print("  initializers: " + (", ".join(i.name for i in graph.initializer) or "(none)"))
    return 0


def _nodes_in_bodies(graph) -> int:
    """How many nodes the Scan and Loop bodies hold (each once, however many steps it runs)."""
    return sum(len(attribute.g.node) + _nodes_in_bodies(attribute.g)
               for node in graph.node for attribute in node.attribute
               if attribute.HasField("g"))


def cmd_import(args) -> int:
    """An ONNX model as readable DSL: FILE.nn, with its param values in FILE.npz beside it."""
    if not str(args.file).endswith(".onnx"):
        raise UsageError(f"import reads an .onnx model, not {args.file}")
    output = Path(args.output)
    if output.suffix != ".nn":
        raise UsageError(f"-o names the .nn file to write, not {output}")
    values = output.with_suffix(".npz")
    check_writable(values)  # the .nn was checked with every command's -o
    model = load_model(args)
    header = (f"Imported from {printable(Path(args.file).name)} by chainrule {__version__}; "
              f"each comment names the ONNX node.\nThe params' values are in {values.name}, "
              f"each its ONNX initializer's (the init after `=` is only what a run without "
              f"--params draws):\nchainrule train {output.name} --params {values.name} ...")
    text = print_dsl(model.graph, header=header)
    names = dsl_names(model.graph)
    # The params first: a .nn is never left naming a params file that was not written.
    save_npz(values, {names[name]: array for name, array in model.params.items()})
    # A file name that is not UTF-8 (a surrogate escape from the command line) is written as
    # an escape in the header's comment, so that the model stays a UTF-8 file.
    atomic_write_bytes(output, text.encode("utf-8", "backslashreplace"))
    print(f"wrote {output}: {len(model.graph.nodes)} statements, {len(model.params)} params")
    print(f"wrote {values}")
    return 0
