"""Where the time of one train step goes: a per-node profile of a model's -O2 SGD step.

    python bench/profile_step.py examples/lenet_digits.nn
    python bench/profile_step.py bench/models/resnet18_cifar.nn --batch 16
    python bench/profile_step.py model.onnx --batch 8 --backend onnxruntime

numpy: the backend's generated step (`chainrule ir FILE -O2 --emit python` prints a graph's)
is compiled again with a clock around each statement, and run with its params and optimizer
state carried from call to call, as the backend runs it. onnxruntime: the session's own
profiler, over the same exported step as the backend runs. Either way the table gives the
time per IR op (numpy) or per ONNX op type (onnxruntime), then the costliest statements or
nodes.

Inputs: the first rows of examples/data/digits_train.npz when the model reads the digits (an
`x` of 64 features and labels `y`), random ones of the model's input types otherwise, every
symbolic dim at `--batch`. An ONNX model is imported with `--loss` (cross-entropy by default).
"""
from __future__ import annotations

import argparse
import bisect
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

import chainrule
from bench import LR_VALUE, ROOT, carried_feeds, median_seconds, session_step, thread_settings
from chainrule.backends.numpy_compiled import CompiledNumpyBackend
from chainrule.cli import random_inputs
from chainrule.ir import ChainruleError
from chainrule.ir.dims import is_symbolic, symbols
from chainrule.passes.optimizers import OptimizerSpec

DIGITS = os.path.join(ROOT, "examples", "data", "digits_train.npz")
FREEING = "(del: arrays freed)"
FUSED = "(fused elementwise kernel)"


@dataclass
class Profile:
    """Seconds per step: the whole step untimed (its median), and the median of each part
    timed on its own, added up by kind. Medians, since other processes' bursts of work fall
    on a few steps of a shared machine."""
    step_seconds: float
    by_kind: dict = field(default_factory=dict)     # kind -> (seconds, count of parts)
    parts: list = field(default_factory=list)       # (seconds, kind, description)


def load_model(path: str, loss: str):
    if path.endswith(".onnx"):
        return chainrule.import_onnx(path, loss=loss)
    return chainrule.compile(path)


def step_inputs(model, batch: int) -> dict:
    """The digits' first `batch` rows for a model that reads them, else random inputs."""
    with np.load(DIGITS) as digits:
        arrays = {name: digits[name][:batch] for name in digits.files}
    reads_digits = {v.name for v in model.graph.inputs} == set(arrays) and all(
        tuple(v.type.shape[1:]) == arrays[v.name].shape[1:] for v in model.graph.inputs)
    if reads_digits:
        return arrays
    sizes = {symbol: batch for v in model.graph.inputs for dim in v.type.shape
             if is_symbolic(dim) for symbol in symbols(dim)}
    return random_inputs(model.graph, sizes, 0, {})


# ---- numpy ------------------------------------------------------------------------------------

def numpy_profile(model, inputs: dict, repeats: int) -> Profile:
    graph, interface = model.train_step_graph(OptimizerSpec("sgd"), "O2")
    compiled = CompiledNumpyBackend(donate_params=True).compiled(graph)
    timed, statements, seconds = instrumented(compiled)
    feeds = carried_feeds(model, graph, interface, inputs)
    order = list(graph.inputs) + graph.param_values()
    position = {v.name: index for index, v in enumerate(order)}
    output = {v.name: index for index, v in enumerate(graph.outputs)}
    carried = [(position[name], output[next_name])
               for name, next_name in {**interface.params, **interface.state}.items()]

    def stepper(function):
        arrays = [np.array(feeds[v.name]) for v in order]
        rng = np.random.default_rng(0)

        def step():
            results = function(*arrays, True, rng)
            for index, result in carried:
                arrays[index] = results[result]
        return step

    plain, profiled = stepper(compiled.function), stepper(timed)
    for _ in range(3):
        plain()
        profiled()
    for times in seconds:
        times.clear()
    step_times = []
    for _ in range(repeats):  # in turn, so that a burst of load falls on both alike
        started = time.perf_counter()
        plain()
        step_times.append(time.perf_counter() - started)
        profiled()
    step_seconds = float(np.median(step_times))
    profile = Profile(step_seconds)
    for times, (kind, text) in zip(seconds, statements, strict=True):
        if times:
            add_part(profile, float(np.median(times)), kind, text)
    return profile


def instrumented(compiled):
    """The generated step compiled again with a clock around each statement that computes a
    node: the function, each statement's (kind, text), and per statement the list each call
    appends its seconds to. A statement that did not run (those computed once per input
    shape, under `if known is None`, or a fused kernel's fallback) has no times."""
    lines = compiled.source.splitlines()
    body = [lines[0], "    _clock = CLOCK"]
    statements = []
    for line, node in zip(lines[1:], compiled.line_nodes[1:], strict=True):
        text = line.strip()
        if node is None or text.endswith(":") or text.startswith("return "):
            body.append(line)
            continue
        indent = line[:len(line) - len(text)]
        body += [f"{indent}_started = _clock()", line,
                 f"{indent}SECONDS[{len(statements)}].append(_clock() - _started)"]
        statements.append((statement_kind(text, node), text))
    namespace = dict(compiled.function.__globals__)
    namespace.update(CLOCK=time.perf_counter, SECONDS=[[] for _ in statements])
    exec(compile("\n".join(body) + "\n", "<profiled step>", "exec"), namespace)
    return namespace["run"], statements, namespace["SECONDS"]


def statement_kind(text: str, node) -> str:
    """The IR op a generated statement computes, or what else it does."""
    if text.startswith("del "):
        return FREEING
    return FUSED if "  # %" in text and "(fused" in text.split("  # %", 1)[1] else node.op


# ---- onnxruntime ------------------------------------------------------------------------------

def onnxruntime_profile(model, inputs: dict, repeats: int, warmup: int = 3) -> Profile:
    """The exported step in a session of the backend's options with profiling on; the
    events of the warm-up runs are left out."""
    import onnxruntime
    from chainrule.backends.onnx_backend import export_onnx, session_options
    from chainrule.backends.onnxruntime_edges import with_carried_edges
    from chainrule.backends.opset import DEFAULT_OPSET

    graph, interface = model.train_step_graph(OptimizerSpec("sgd"), "O2")
    exported = export_onnx(graph, opset=DEFAULT_OPSET, params_as_inputs=True, training=True)
    options = session_options(graph)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="chainrule-profile-") as folder:
        options.profile_file_prefix = os.path.join(folder, "step")
        session = onnxruntime.InferenceSession(
            with_carried_edges(exported).SerializeToString(), options,
            providers=["CPUExecutionProvider"])
        step = session_step(session, model, graph, interface, inputs)
        step_seconds = median_seconds(step, repeats, warmup)
        with open(session.end_profiling()) as file:
            events = json.load(file)
    return summarised_events(events, step_seconds, warmup)


def summarised_events(events: list, step_seconds: float, warmup: int) -> Profile:
    """onnxruntime's trace as a Profile: each node's kernel time in a run (summed over a
    loop's iterations), its median over the runs after the first `warmup`."""
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    runs = len(starts) - warmup
    by_node = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        run = bisect.bisect_right(starts, event["ts"]) - 1 - warmup
        if run < 0:
            continue
        key = (event["args"]["op_name"], event["name"].removesuffix("_kernel_time"))
        by_node.setdefault(key, np.zeros(runs))[run] += event["dur"] * 1e-6
    profile = Profile(step_seconds)
    for (op_type, node), per_run in by_node.items():
        add_part(profile, float(np.median(per_run)), op_type, node)
    return profile


# ---- report -----------------------------------------------------------------------------------

def add_part(profile: Profile, seconds: float, kind: str, description: str) -> None:
    total, count = profile.by_kind.get(kind, (0.0, 0))
    profile.by_kind[kind] = (total + seconds, count + 1)
    profile.parts.append((seconds, kind, description))


def print_profile(title: str, profile: Profile, kinds: int, top: int) -> None:
    timed = sum(seconds for seconds, _ in profile.by_kind.values())
    print(f"\n### {title}\n")
    print(f"Step (untimed median): {profile.step_seconds * 1e3:,.2f} ms; the medians of the parts "
          f"timed one by one add up to {timed * 1e3:,.2f} ms.\n")
    print("| op | count | ms per step | share |")
    print("|---|---:|---:|---:|")
    ranked = sorted(profile.by_kind.items(), key=lambda item: -item[1][0])
    for kind, (seconds, count) in ranked[:kinds]:
        print(f"| {kind} | {count} | {seconds * 1e3:,.3f} | {seconds / timed:.1%} |")
    print(f"\nThe {top} costliest statements or nodes:\n")
    print("| ms per step | op | statement or node |")
    print("|---:|---|---|")
    for seconds, kind, description in sorted(profile.parts, key=lambda part: -part[0])[:top]:
        shown = description if len(description) <= 110 else description[:107] + "..."
        print(f"| {seconds * 1e3:,.3f} | {kind} | `{shown}` |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", metavar="FILE.nn|FILE.onnx")
    parser.add_argument("--batch", type=int, default=32, help="the batch size (default 32)")
    parser.add_argument("--backend", choices=("numpy", "onnxruntime"), default="numpy")
    parser.add_argument("--repeats", type=int, default=20,
                        help="steps timed, after the warm-up ones (default 20)")
    parser.add_argument("--loss", default="cross_entropy",
                        help="the loss an imported ONNX model trains on (default cross_entropy)")
    parser.add_argument("--kinds", type=int, default=20, help="op rows shown (default 20)")
    parser.add_argument("--top", type=int, default=15, help="statements shown (default 15)")
    args = parser.parse_args()
    if args.batch < 1 or args.repeats < 1:
        parser.error("--batch and --repeats take a positive number")
    settings = thread_settings()  # also limits numpy's BLAS to chainrule's threads
    try:
        model = load_model(args.model, args.loss)
        inputs = step_inputs(model, args.batch)
        profiler = numpy_profile if args.backend == "numpy" else onnxruntime_profile
        profile = profiler(model, inputs, args.repeats)
    except (ChainruleError, OSError) as error:
        sys.exit(f"profile_step: error: {error}")
    print(f"{os.cpu_count()} cores; {settings}; learning rate {LR_VALUE}")
    shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in inputs.items())
    print_profile(f"{os.path.basename(args.model)} on {args.backend}: one SGD step at -O2 "
                  f"({shapes})", profile, args.kinds, args.top)


if __name__ == "__main__":
    main()
