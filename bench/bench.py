"""chainrule's benchmark: every system measured side by side in one process, as medians.

    python bench/bench.py            # all workloads (a few minutes)
    python bench/bench.py --quick    # fewer repeats
    python bench/bench.py --only 4b  # one workload (numbered as in the README)
    python bench/bench.py --busy     # the same with one core kept busy by another process

Rows: chainrule on numpy and on onnxruntime, the same equations written by hand in numpy, and
PyTorch eager and JAX jit when they are installed (CPU builds; skipped with a note otherwise).
Each table gives the median time per call and its ratio to hand-written numpy.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np

import chainrule
from chainrule.backends import get_backend
from chainrule.backends.numpy_compiled import CompiledNumpyBackend
from chainrule.backends.onnx_backend import OnnxRuntimeBackend
from chainrule.ir import ChainruleError
from chainrule.ir.types import numpy_dtype
from chainrule.passes.optimizers import LR, OptimizerSpec
from chainrule.train import TrainConfig, Trainer

LR_VALUE = 0.01
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median_seconds(fn, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def interleaved_medians(functions: dict, repeats: int, warmup: int = 5) -> dict:
    """The median seconds per call of each function, timed in turn call by call, so that a
    burst of load from other processes falls on every system alike and their ratios hold.
    The order is shuffled each round: the call after an onnxruntime call finds the caches cold
    (about 17 µs on the tiny MLP), and each system must follow each other as often. (Rotating
    the order is not enough: it keeps every system's predecessor, so the first system always
    came after the last one, an onnxruntime call.)"""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in functions}
    order = list(functions.items())
    shuffle = np.random.default_rng(0)
    for _ in range(repeats):
        for position in shuffle.permutation(len(order)):
            name, fn = order[position]
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: float(np.median(values)) for name, values in times.items()}


def optional(module: str):
    try:
        return __import__(module)
    except ImportError:
        return None


# ---- models -----------------------------------------------------------------------------------

def lecture_mlp_source() -> str:
    with open(os.path.join(ROOT, "examples", "mlp.nn")) as file:
        return file.read()


TINY_MLP_SOURCE = """
model tiny(x: f32[B, 8], y: i64[B]) {
    param W1: f32[16, 8] = normal(0.0, 0.1)
    param W2: f32[4, 16] = normal(0.0, 0.1)
    let lam = 0.0001
    o = relu(x @ W1.T) @ W2.T
    J = cross_entropy(o, y) + lam / 2 * (sum(W1 ** 2) + sum(W2 ** 2))
    return J, o
}
"""


def deep_tanh_source(layers: int, width: int) -> str:
    lines = [f"model deep(x: f32[B, {width}], t: f32[B, {width}]) {{"]
    lines += [f"    param W{i}: f32[{width}, {width}] = glorot()" for i in range(1, layers + 1)]
    lines.append("    h0 = x")
    lines += [f"    h{i} = tanh(h{i - 1} @ W{i}.T)" for i in range(1, layers + 1)]
    lines += [f"    J = mse(h{layers}, t)", "    return J", "}"]
    return "\n".join(lines) + "\n"


# ---- hand-written numpy -----------------------------------------------------------------------

def hand_mlp_step(params, x, y, lam=1e-4, lr=LR_VALUE):
    W1, W2 = params["W1"], params["W2"]
    batch = x.shape[0]
    z = x @ W1.T
    h = np.maximum(z, 0)
    o = h @ W2.T
    shifted = o - o.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    p = exp / exp.sum(axis=1, keepdims=True)
    rows = np.arange(batch)
    J = -np.mean(np.log(p[rows, y])) + lam / 2 * (np.sum(W1 * W1) + np.sum(W2 * W2))
    p[rows, y] -= 1
    do = p / batch
    dW2 = do.T @ h + lam * W2
    dz = (do @ W2) * (z > 0)
    dW1 = dz.T @ x + lam * W1
    W1 -= lr * dW1
    W2 -= lr * dW2
    return J


def hand_deep_step(params, x, t, lr=LR_VALUE):
    weights = [params[f"W{i}"] for i in range(1, len(params) + 1)]
    hs = [x]
    for W in weights:
        hs.append(np.tanh(hs[-1] @ W.T))
    diff = hs[-1] - t
    J = np.mean(diff * diff)
    g = diff * (2.0 / diff.size)
    for i in range(len(weights) - 1, -1, -1):
        dz = g * (1 - hs[i + 1] * hs[i + 1])
        g = dz @ weights[i]
        weights[i] -= lr * (dz.T @ hs[i])
    return J


def hand_mlp_forward(params, x):
    return np.maximum(x @ params["W1"].T, 0) @ params["W2"].T


# ---- PyTorch and JAX --------------------------------------------------------------------------

def torch_systems(torch, params, kind):
    tensors = {k: torch.tensor(v, requires_grad=kind != "forward") for k, v in params.items()}

    def mlp_loss(x, y):
        h = torch.relu(x @ tensors["W1"].T)
        o = h @ tensors["W2"].T
        return (torch.nn.functional.cross_entropy(o, y)
                + 1e-4 / 2 * ((tensors["W1"] ** 2).sum() + (tensors["W2"] ** 2).sum()))

    def deep_loss(x, t):
        h = x
        for i in range(1, len(tensors) + 1):
            h = torch.tanh(h @ tensors[f"W{i}"].T)
        return torch.mean((h - t) ** 2)

    loss = mlp_loss if kind == "mlp" else deep_loss

    def step(a, b):
        J = loss(a, b)
        J.backward()
        with torch.no_grad():
            for tensor in tensors.values():
                tensor -= LR_VALUE * tensor.grad
                tensor.grad = None
        return J

    def forward(a):
        with torch.no_grad():
            return torch.relu(a @ tensors["W1"].T) @ tensors["W2"].T

    return forward if kind == "forward" else step


def jax_systems(jax, params, kind):
    jnp = jax.numpy

    def mlp_loss(p, x, y):
        h = jax.nn.relu(x @ p["W1"].T)
        o = h @ p["W2"].T
        log_p = jax.nn.log_softmax(o, axis=1)
        L = -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))
        return L + 1e-4 / 2 * (jnp.sum(p["W1"] ** 2) + jnp.sum(p["W2"] ** 2))

    def deep_loss(p, x, t):
        h = x
        for i in range(1, len(p) + 1):
            h = jnp.tanh(h @ p[f"W{i}"].T)
        return jnp.mean((h - t) ** 2)

    state = {"p": {k: jnp.asarray(v) for k, v in params.items()}}
    if kind == "forward":
        forward = jax.jit(lambda p, x: jax.nn.relu(x @ p["W1"].T) @ p["W2"].T)
        return lambda x: forward(state["p"], x).block_until_ready()
    loss = mlp_loss if kind == "mlp" else deep_loss

    @jax.jit
    def update(p, a, b):
        J, grads = jax.value_and_grad(loss)(p, a, b)
        return J, jax.tree_util.tree_map(lambda w, g: w - LR_VALUE * g, p, grads)

    def step(a, b):
        J, state["p"] = update(state["p"], a, b)
        J.block_until_ready()
        return J

    return step


# ---- workloads --------------------------------------------------------------------------------

def chainrule_trainer(source, backend, precision="f32"):
    model = chainrule.compile(source=source)
    config = TrainConfig(optimizer=OptimizerSpec("sgd"), lr=LR_VALUE, backend=backend,
                         opt_level="O2", precision=precision)
    return model, Trainer(model, config)


def mixed_precision_rows(source, batch: dict, repeats):
    """Workload 9: one model's SGD train step in f32, bf16 and f16 on both backends (None
    where the backend cannot run that precision's step)."""
    rows = []
    for backend in ("numpy", "onnxruntime"):
        for precision in ("f32", "bf16", "f16"):
            try:
                _, trainer = chainrule_trainer(source, backend, precision)
                seconds = median_seconds(lambda: trainer.train_step(batch, LR_VALUE), repeats,
                                         warmup=1)
            except ChainruleError as error:  # onnxruntime lacks a kernel in that dtype
                print(f"{backend} {precision}: {error}", file=sys.stderr)
                seconds = None
            rows.append((f"chainrule-{backend} {precision}", seconds))
    return rows


def train_step_rows(source, batch_inputs, hand_step, kind, repeats):
    rows = []
    for backend in ("numpy", "onnxruntime"):
        model, trainer = chainrule_trainer(source, backend)
        rows.append((f"chainrule-{backend}",
                     median_seconds(lambda: trainer.train_step(batch_inputs, LR_VALUE), repeats)))
    params = {k: v.copy() for k, v in model.params.items()}
    a, b = batch_inputs.values()
    rows.append(("hand-written numpy", median_seconds(
        one_blas_thread(lambda: hand_step(params, a, b)), repeats)))
    return rows + framework_rows(lambda torch: torch_systems(torch, model.params, kind),
                                 lambda jax: jax_systems(jax, model.params, kind), a, b, repeats)


def one_blas_thread(step):
    """A hand-written step on the BLAS threads chainrule gives a small product: one under auto
    (the reference the hand-written rows always were), the count set otherwise. Under auto a
    chainrule call may leave numpy's BLAS on two threads, which the hand-written step's small
    products would then pay for."""
    from chainrule.backends.threads import use_blas_threads

    def step_on_one_thread():
        use_blas_threads(0)
        return step()
    return step_on_one_thread


def generated_step(model, batch: dict, spec: OptimizerSpec):
    """The numpy backend's generated train-step function called directly, its params and
    optimizer state carried from call to call by hand: the floor under the public API."""
    graph, interface = model.train_step_graph(spec, "O2")
    compiled = CompiledNumpyBackend(donate_params=True).compiled(graph)
    feeds = carried_feeds(model, graph, interface, batch)
    order = list(graph.inputs) + graph.param_values()
    arrays = [np.array(feeds[v.name]) for v in order]
    position = {v.name: index for index, v in enumerate(order)}
    output = {v.name: index for index, v in enumerate(graph.outputs)}
    carried = [(position[name], output[next_name])
               for name, next_name in {**interface.params, **interface.state}.items()]
    function, rng = compiled.function, np.random.default_rng(0)

    def step():
        results = function(*arrays, True, rng)
        for index, result in carried:
            arrays[index] = results[result]
    return step


def raw_session_step(model, batch: dict, spec: OptimizerSpec):
    """`session.run` of the onnxruntime backend's own session for the train step, numpy in
    and out, the updated params fed back: what a user of onnxruntime alone would write."""
    graph, interface = model.train_step_graph(spec, "O2")
    return session_step(OnnxRuntimeBackend().session(graph, training=True), model, graph,
                        interface, batch)


def session_step(session, model, graph, interface, batch: dict):
    """A step of `session` (the train-step graph's), its params and optimizer state fed back
    from one call to the next."""
    every = carried_feeds(model, graph, interface, batch)
    feeds = {i.name: np.array(every[i.name]) for i in session.get_inputs()}
    output = {o.name: index for index, o in enumerate(session.get_outputs())}
    carried = [(name, output[next_name])
               for name, next_name in {**interface.params, **interface.state}.items()
               if name in feeds]

    def step():
        results = session.run(None, feeds)
        for name, index in carried:
            feeds[name] = results[index]
    return step


def carried_feeds(model, graph, interface, batch: dict) -> dict:
    """Every input and param of a train-step graph: the batch, the learning rate, zeroed
    optimizer state and the model's params."""
    by_name = {v.name: v.type for v in graph.inputs}
    feeds = dict(batch)
    feeds[LR] = np.asarray(LR_VALUE, numpy_dtype(by_name[LR].dtype))
    feeds.update((name, np.zeros(by_name[name].shape, numpy_dtype(by_name[name].dtype)))
                 for name in interface.state)
    feeds.update(model.params)
    return feeds


def api_overhead_rows(repeats: int) -> list:
    """Workload 7: each public API call beside the generated function or the raw onnxruntime
    session it wraps (same graph, same batch), and JAX jit's step for scale."""
    spec = OptimizerSpec("sgd")
    jax = optional("jax")
    rows = []
    x1 = np.random.default_rng(0).normal(size=(1, 784)).astype(np.float32)
    model = chainrule.compile(source=lecture_mlp_source())
    graph = model.forward_graph(["o"], "O2")
    function = CompiledNumpyBackend().compiled(graph).function
    session = OnnxRuntimeBackend().session(graph)
    feeds = {"x": x1, **model.params}
    feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
    args = [x1] + [model.params[v.name] for v in graph.param_values()]
    systems = {
        "numpy API": lambda: model.run(outputs=["o"], x=x1),
        "numpy floor": lambda: function(*args, False, None),
        "onnxruntime API": lambda: model.run(backend="onnxruntime", outputs=["o"], x=x1),
        "onnxruntime floor": lambda: session.run(None, feeds)}
    times = interleaved_medians(systems, repeats * 5)
    if jax is not None:
        times.update(separately(jax_systems(jax, model.params, "forward"), (x1,), repeats * 5))
    rows.append(("lecture MLP inference, B=1 (`Model.run`)", times))
    for title, source, kind, batch, factor in (
            ("lecture MLP train step, B=8", lecture_mlp_source(), "mlp", mlp_batch(8), 1),
            ("lecture MLP train step, B=128", lecture_mlp_source(), "mlp", mlp_batch(128), 1),
            ("lecture MLP train step, B=1024", lecture_mlp_source(), "mlp", mlp_batch(1024), 8),
            ("16×64 tanh MLP train step, B=32", deep_tanh_source(16, 64), "deep", deep_batch(),
             1),
            ("tiny MLP train step, B=8", TINY_MLP_SOURCE, "mlp", mlp_batch(8, 8, 4), 1)):
        inputs = dict(zip(("x", "y") if kind == "mlp" else ("x", "t"), batch, strict=True))
        model = chainrule.compile(source=source)
        systems = {}
        for backend in ("numpy", "onnxruntime"):
            trainer = chainrule_trainer(source, backend)[1]
            systems[f"{backend} API"] = (lambda m, b: lambda: m.train_step(
                LR_VALUE, spec, b, **inputs))(chainrule.compile(source=source), backend)
            systems[f"{backend} Trainer"] = (lambda t: lambda: t.train_step(
                inputs, LR_VALUE))(trainer)
            systems[f"{backend} floor"] = (generated_step if backend == "numpy"
                                           else raw_session_step)(model, inputs, spec)
        times = interleaved_medians(systems, max(repeats // factor, 10))
        if jax is not None:
            times.update(separately(jax_systems(jax, model.params, kind), batch,
                                    max(repeats // factor, 10)))
        rows.append((title, times))
    return rows


def separately(step, args, repeats) -> dict:
    """JAX's median, timed on its own: its thread pool stays busy for a while after each call
    and would slow whichever call came next."""
    return {"jax jit": median_seconds(lambda: step(*args), repeats)}


def print_api_overhead(rows) -> None:
    print("\n### 7. API overhead: the public API beside what it wraps, and JAX jit\n")
    print("`Model.run` / `Model.train_step` (API) and `Trainer.train_step` against the numpy "
          "backend's generated function called directly and the onnxruntime backend's own "
          "session called with `session.run`; medians in µs, chainrule's calls interleaved, JAX's "
          "timed on its own.\n")
    print("| workload | numpy API | Trainer | generated fn | API / fn | onnxruntime API | "
          "Trainer | raw session | API / raw | jax jit | best API / jax |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def us(seconds):
        return "" if seconds is None else f"{seconds * 1e6:,.0f}"

    for title, times in rows:
        get = times.get
        best = min(get("numpy API"), get("onnxruntime API"))
        jax = get("jax jit")
        print(f"| {title} | {us(get('numpy API'))} | {us(get('numpy Trainer'))} | "
              f"{us(get('numpy floor'))} | "
              f"{get('numpy API') / get('numpy floor'):.2f}× | "
              f"{us(get('onnxruntime API'))} | {us(get('onnxruntime Trainer'))} | "
              f"{us(get('onnxruntime floor'))} | "
              f"{get('onnxruntime API') / get('onnxruntime floor'):.2f}× | {us(jax)} | "
              f"{'' if jax is None else f'{best / jax:.2f}×'} |")


def lenet_rows(repeats):
    """Workload 6: examples/lenet_digits.nn's train step on 64 digits, SGD."""
    from lenet import hand_lenet_step, jax_lenet_step, torch_lenet_step
    with open(os.path.join(ROOT, "examples", "lenet_digits.nn")) as file:
        source = file.read()
    with np.load(os.path.join(ROOT, "examples", "data", "digits_train.npz")) as data:
        x, y = data["x"][:64], data["y"][:64]
    rows = []
    for backend in ("numpy", "onnxruntime"):
        model, trainer = chainrule_trainer(source, backend)
        rows.append((f"chainrule-{backend}", median_seconds(
            lambda: trainer.train_step({"x": x, "y": y}, LR_VALUE), repeats)))
    params = {k: v.copy() for k, v in model.params.items()}
    rows.append(("hand-written numpy", median_seconds(
        one_blas_thread(lambda: hand_lenet_step(params, x, y, LR_VALUE)), repeats)))
    return rows + framework_rows(lambda torch: torch_lenet_step(torch, model.params, LR_VALUE),
                                 lambda jax: jax_lenet_step(jax, model.params, LR_VALUE),
                                 x, y, repeats)


def framework_rows(torch_step, jax_step, a, b, repeats):
    """PyTorch eager and JAX jit rows (None when not installed): `torch_step(torch)` and
    `jax_step(jax)` build a step taking the batch."""
    torch, jax = optional("torch"), optional("jax")
    rows = []
    if torch is not None:
        step = torch_step(torch)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        rows.append(("pytorch eager", median_seconds(lambda: step(ta, tb), repeats)))
    else:
        rows.append(("pytorch eager", None))
    if jax is not None:
        step = jax_step(jax)
        rows.append(("jax jit", median_seconds(lambda: step(a, b), repeats)))
    else:
        rows.append(("jax jit", None))
    return rows


def inference_rows(batch, repeats):
    model = chainrule.compile(source=lecture_mlp_source())
    graph = model.export_graph(outputs=["o"], opt_level="O2")
    x = np.random.default_rng(0).normal(size=(batch, 784)).astype(np.float32)
    rows = []
    for backend in ("numpy", "onnxruntime"):
        runner = get_backend(backend)
        rows.append((f"chainrule-{backend}",
                     median_seconds(lambda: runner.run(graph, {"x": x}, model.params), repeats)))
    rows.append(("hand-written numpy", median_seconds(
        one_blas_thread(lambda: hand_mlp_forward(model.params, x)), repeats)))
    torch, jax = optional("torch"), optional("jax")
    if torch is not None:
        forward = torch_systems(torch, model.params, "forward")
        tx = torch.from_numpy(x)
        rows.append(("pytorch eager", median_seconds(lambda: forward(tx), repeats)))
    else:
        rows.append(("pytorch eager", None))
    if jax is not None:
        forward = jax_systems(jax, model.params, "forward")
        rows.append(("jax jit", median_seconds(lambda: forward(x), repeats)))
    else:
        rows.append(("jax jit", None))
    return rows


def print_table(title, rows, unit="µs", missing="not installed"):
    hand = dict(rows).get("hand-written numpy")
    print(f"\n### {title}\n")
    print(f"| system | median ({unit}) | vs hand-written numpy |")
    print("|---|---:|---:|")
    for name, seconds in rows:
        if seconds is None:
            print(f"| {name} | {missing} | |")
            continue
        ratio = f"{seconds / hand:.2f}×" if hand else ""
        print(f"| {name} | {seconds * 1e6:,.0f} | {ratio} |")


def compile_time_rows(layer_counts, repeats):
    def train_step(source):
        graph, _ = chainrule.compile(source=source).train_step_graph(OptimizerSpec("sgd"), "O2")
        return graph
    times = compile_rows("4. Compile time: DSL text → ready-to-run train step at -O2", "layers",
                         layer_counts, lambda layers: deep_tanh_source(layers, 16), train_step,
                         repeats)
    jax = optional("jax")
    if jax is None:
        print("\n(jax is not installed: no comparison with its compile time)")
        return times
    print("\nThe same model's SGD step in JAX, grad + jit, timed to the end of its first call "
          "(which compiles it);\nfewer repeats at 1600 layers, where one compile takes tens of "
          "seconds:\n")
    print("| layers | chainrule (ms) | jax first call (ms) | jax / chainrule |")
    print("|---:|---:|---:|---:|")
    for layers in layer_counts:
        seconds = float(np.median([jax_compile_seconds(jax, layers, 16)
                                   for _ in range(1 if layers >= 1600 else repeats)]))
        print(f"| {layers} | {times[layers] * 1e3:,.1f} | {seconds * 1e3:,.1f} | "
              f"{seconds / times[layers]:.1f}× |")
    return times


def jax_compile_seconds(jax, layers: int, width: int, batch: int = 32) -> float:
    """Seconds from a fresh jitted SGD step of the deep tanh MLP to its first result."""
    jnp = jax.numpy
    jax.clear_caches()
    rng = np.random.default_rng(0)
    params = {f"W{i}": jnp.asarray(rng.normal(0, width ** -0.5, (width, width)), jnp.float32)
              for i in range(1, layers + 1)}
    x = jnp.asarray(rng.normal(size=(batch, width)), jnp.float32)
    t = jnp.asarray(rng.normal(size=(batch, width)), jnp.float32)

    def loss(p, x, t):
        h = x
        for i in range(1, layers + 1):
            h = jnp.tanh(h @ p[f"W{i}"].T)
        return jnp.mean((h - t) ** 2)

    @jax.jit
    def update(p, x, t):
        J, grads = jax.value_and_grad(loss)(p, x, t)
        return J, jax.tree_util.tree_map(lambda w, g: w - LR_VALUE * g, p, grads)

    started = time.perf_counter()
    J, _ = update(params, x, t)
    J.block_until_ready()
    return time.perf_counter() - started


def compile_rows(title, unit, sizes, source_of, graph_of, repeats) -> dict:
    """A table of compile times: for each size, DSL text to a graph the numpy backend has
    compiled, and the time per IR node."""
    print(f"\n### {title}\n")
    print(f"| {unit} | IR nodes | median (ms) | µs per node |")
    print("|---:|---:|---:|---:|")
    results = {}
    for size in sizes:
        source = source_of(size)

        def build():
            graph = graph_of(source)
            CompiledNumpyBackend().compiled(graph)
            return graph

        nodes = len(build().nodes)
        seconds = median_seconds(build, repeats, warmup=1)
        results[size] = seconds
        print(f"| {size} | {nodes:,} | {seconds * 1e3:,.1f} | {seconds / nodes * 1e6:.1f} |")
    return results


def gru_source(steps: int, hidden: int = 32) -> str:
    """A GRU cell over a `steps`-long sequence, as a loop: the unrolled graph grows with steps."""
    return f"""
model gru(x: f32[B, {steps}, 8], h0: f32[B, {hidden}], y: i64[B]) {{
    param Wz: f32[{hidden}, 8] = glorot()
    param Uz: f32[{hidden}, {hidden}] = glorot()
    param Wr: f32[{hidden}, 8] = glorot()
    param Ur: f32[{hidden}, {hidden}] = glorot()
    param Wh: f32[{hidden}, 8] = glorot()
    param Uh: f32[{hidden}, {hidden}] = glorot()
    param V: f32[10, {hidden}] = glorot()
    h = h0
    for t in range({steps}) {{
        z = sigmoid(x[:, t] @ Wz.T + h @ Uz.T)
        r = sigmoid(x[:, t] @ Wr.T + h @ Ur.T)
        candidate = tanh(x[:, t] @ Wh.T + (r * h) @ Uh.T)
        h = (1.0 - z) * h + z * candidate
    }}
    J = cross_entropy(h @ V.T, y)
    return J
}}
"""


def loop_compile_rows(step_counts, repeats):
    def gradient(source):
        return chainrule.compile(source=source, loops="unroll").compile_graph(
            grad=True, opt_level="O2")[0]
    return compile_rows("4b. Compile time of a loop: a GRU unrolled over T steps, with its "
                        "gradient, at -O2", "steps", step_counts, gru_source, gradient, repeats)


# ---- memory -----------------------------------------------------------------------------------

MEMORY_SYSTEMS = ("chainrule-numpy", "chainrule-onnxruntime", "hand-written numpy",
                  "pytorch eager", "jax jit")


def memory_child(system: str) -> None:
    """One train step of workload 1 in a fresh process: peak RSS growth and traced peak."""
    x, y = mlp_batch()
    source = lecture_mlp_source()
    model = chainrule.compile(source=source)
    if system.startswith("chainrule"):
        _, trainer = chainrule_trainer(source, system.split("-")[1])
        step = lambda: trainer.train_step({"x": x, "y": y}, LR_VALUE)  # noqa: E731
    elif system == "hand-written numpy":
        params = {k: v.copy() for k, v in model.params.items()}
        step = lambda: hand_mlp_step(params, x, y)  # noqa: E731
    elif system == "pytorch eager":
        torch = optional("torch")
        if torch is None:
            print("none none")
            return
        torch_step = torch_systems(torch, model.params, "mlp")
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        step = lambda: torch_step(tx, ty)  # noqa: E731
    else:
        jax = optional("jax")
        if jax is None:
            print("none none")
            return
        step = jax_systems(jax, model.params, "mlp")
        step = (lambda s: lambda: s(x, y))(step)
    step()  # warm up: compile, create sessions, allocate caches
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back, so the step re-grows RSS
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")  # reset the peak-RSS high-water mark (VmHWM) to the current RSS
    before = proc_status_kb("VmRSS")
    tracemalloc.start()
    for _ in range(3):
        step()
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"{traced} {(proc_status_kb('VmHWM') - before) * 1024}")


def proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as file:
        for line in file:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def memory_rows():
    print("\n### 5. Peak memory of one train step of workload 1\n")
    print("| system | tracemalloc peak (MB) | peak RSS growth (MB) |")
    print("|---|---:|---:|")
    for system in MEMORY_SYSTEMS:
        result = subprocess.run([sys.executable, __file__, "--memory-child", system],
                                capture_output=True, text=True, timeout=600)
        fields = result.stdout.split()
        if result.returncode != 0 or len(fields) != 2:
            print(f"| {system} | failed | {result.stderr.strip()[-80:]} |")
            continue
        if fields[0] == "none":
            print(f"| {system} | not installed | |")
            continue
        traced = int(fields[0]) / 1e6
        traced_text = f"{traced:.2f}" if not system.startswith(("pytorch", "jax", "chainrule-onnx")) \
            else f"({traced:.2f}, misses native allocations)"
        print(f"| {system} | {traced_text} | {int(fields[1]) / 1e6:.2f} |")


def mlp_batch(batch=128, features=784, classes=10):
    rng = np.random.default_rng(0)
    return rng.normal(size=(batch, features)).astype(np.float32), rng.integers(0, classes, batch)


def deep_batch(batch=32, width=64):
    rng = np.random.default_rng(1)
    return (rng.normal(size=(batch, width)).astype(np.float32),
            rng.normal(size=(batch, width)).astype(np.float32))


def workloads(quick: bool) -> dict:
    """Each workload by its number in the README, as a function that prints its table."""
    repeats = 30 if quick else 200
    compile_repeats = 3 if quick else 5

    def mlp_step():
        x, y = mlp_batch()
        print_table("1. Lecture MLP train step (batch 128, 784-256-10, SGD)",
                    train_step_rows(lecture_mlp_source(), {"x": x, "y": y}, hand_mlp_step,
                                    "mlp", repeats))

    def mlp_step_small():
        x, y = mlp_batch(8)
        print_table("1b. Lecture MLP train step, batch 8",
                    train_step_rows(lecture_mlp_source(), {"x": x, "y": y}, hand_mlp_step,
                                    "mlp", repeats))

    def mlp_step_large():
        x, y = mlp_batch(1024)
        print_table("1c. Lecture MLP train step, batch 1024",
                    train_step_rows(lecture_mlp_source(), {"x": x, "y": y}, hand_mlp_step,
                                    "mlp", max(repeats // 8, 10)))

    def deep_step():
        x, t = deep_batch()
        print_table("2. 16-layer, 64-wide tanh MLP train step (batch 32, MSE, SGD)",
                    train_step_rows(deep_tanh_source(16, 64), {"x": x, "t": t}, hand_deep_step,
                                    "deep", repeats))

    def tiny_step():
        x, y = mlp_batch(8, 8, 4)
        print_table("2b. Tiny MLP train step (batch 8, 8-16-4, SGD)",
                    train_step_rows(TINY_MLP_SOURCE, {"x": x, "y": y}, hand_mlp_step, "mlp",
                                    repeats))

    def inference():
        print_table("3a. Lecture MLP inference, batch 1", inference_rows(1, repeats * 5))
        print_table("3b. Lecture MLP inference, batch 1024", inference_rows(1024, repeats // 4))

    def compile_time():
        times = compile_time_rows((25, 100, 400, 1600), compile_repeats)
        print(f"\n1600 layers / 400 layers: {times[1600] / times[400]:.2f}× "
              f"(linear growth would be 4×)")

    def loop_compile_time():
        times = loop_compile_rows((64, 256), compile_repeats)
        print(f"\n256 steps / 64 steps: {times[256] / times[64]:.2f}× "
              f"(linear growth would be 4×)")

    def lenet_step():
        print_table("6. LeNet-style train step (examples/lenet_digits.nn, batch 64, SGD)",
                    lenet_rows(repeats))

    def api_overhead():
        print_api_overhead(api_overhead_rows(repeats))

    def mixed_precision():
        x, y = mlp_batch()
        print_table("9a. Lecture MLP train step in mixed precision (batch 128, SGD)",
                    mixed_precision_rows(lecture_mlp_source(), {"x": x, "y": y},
                                         max(repeats // 10, 3)), missing="cannot run")
        with np.load(os.path.join(ROOT, "examples", "data", "digits_train.npz")) as data:
            digits = {"x": data["x"][:64], "y": data["y"][:64]}
        with open(os.path.join(ROOT, "examples", "lenet_digits.nn")) as file:
            print_table("9b. LeNet-style train step in mixed precision (batch 64, SGD)",
                        mixed_precision_rows(file.read(), digits, max(repeats // 10, 3)),
                        missing="cannot run")

    def cnn_steps():
        from cnn import print_cnn_tables
        print_cnn_tables(quick)

    return {"1": mlp_step, "1b": mlp_step_small, "1c": mlp_step_large, "2": deep_step,
            "2b": tiny_step, "3": inference, "4": compile_time, "4b": loop_compile_time,
            "5": memory_rows, "6": lenet_step, "7": api_overhead, "9": mixed_precision,
            "10": cnn_steps}


@contextlib.contextmanager
def busy_core(enabled: bool):
    """With `enabled`, one other process spinning on a core for the duration."""
    if not enabled:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it be scheduled before the first measurement
        yield
    finally:
        spinner.kill()
        spinner.wait()


def thread_settings() -> str:
    """What decides the threads: chainrule's setting and the environment variables that
    numpy's BLAS reads (OPENBLAS_CORETYPE pins its kernels, which moves every figure)."""
    from chainrule.backends.threads import describe_threads
    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE")
    environment = [f"{name}={os.environ[name]}" for name in names if name in os.environ]
    return ", ".join([describe_threads()] + environment)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--only", metavar="N,...",
                        help="run only these workloads, e.g. --only 4,4b (default: all)")
    parser.add_argument("--busy", action="store_true",
                        help="measure with one core kept busy by another process")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    table = workloads(args.quick)
    chosen = args.only.split(",") if args.only else list(table)
    unknown = [name for name in chosen if name not in table]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    load = os.getloadavg()[0]
    with busy_core(args.busy):  # the threads described as the workloads will find them
        print(f"chainrule benchmark: {os.cpu_count()} cores, numpy {np.__version__}, "
              f"{'quick' if args.quick else 'full'} repeats"
              f"{', one core kept busy by another process' if args.busy else ''}; "
              f"{thread_settings()}; load average before: {load:.2f}")
        for name in chosen:
            table[name]()


if __name__ == "__main__":
    main()
