"""Recurrent models as one scan against unrolled loops and PyTorch, side by side, as medians.

    python bench/sequences.py            # every table (about two minutes)
    python bench/sequences.py --quick    # fewer repeats
    python bench/sequences.py --only 8c  # one table

8a. Compile time of an LSTM's train step against the sequence length, as a scan.
8b. A GRU's train step at T=64: one scan against the loop unrolled, on numpy.
8c. One LSTM layer (B=32, H=128, T=200), forward and backward: chainrule's numpy and
    onnxruntime backends (one thread, their default) against PyTorch eager's nn.LSTM
    (when installed) with its default threads and with one.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import gru_source, interleaved_medians, median_seconds, optional  # noqa: E402

import chainrule  # noqa: E402
from chainrule.backends.numpy_compiled import CompiledNumpyBackend  # noqa: E402
from chainrule.backends.onnx_backend import OnnxRuntimeBackend  # noqa: E402


def lstm_source(hidden: int, features: int, steps: str = "T") -> str:
    """One LSTM layer over x: f32[B, T, features], its objective the sum of every step's h."""
    h, g = hidden, 4 * hidden
    return f"""
model lstm_layer(x: f32[B, {steps}, {features}]) {{
    param W_ih: f32[{g}, {features}] = glorot()
    param W_hh: f32[{g}, {h}] = glorot()
    param b: f32[{g}] = zeros()
    h = zeros((B, {h}), dtype=f32)
    c = zeros((B, {h}), dtype=f32)
    hs = zeros((B, {steps}, {h}), dtype=f32)
    for t in range({steps}) {{
        gates = x[:, t] @ W_ih.T + h @ W_hh.T + b
        i = sigmoid(gates[:, 0:{h}])
        f = sigmoid(gates[:, {h}:{2 * h}])
        cell = tanh(gates[:, {2 * h}:{3 * h}])
        o = sigmoid(gates[:, {3 * h}:{g}])
        c = f * c + i * cell
        h = o * tanh(c)
        hs[:, t] = h
    }}
    J = sum(hs)
    return J
}}
"""


def compile_rows(lengths, repeats):
    """8a: DSL text to the compiled train step, at each constant length, as one scan."""
    rows = []
    for steps in lengths:
        source = lstm_source(32, 8, str(steps))

        def compile_step():
            model = chainrule.compile(source=source, loops="scan")
            graph, _ = model.compile_graph(grad=True, opt_level="O2")
            CompiledNumpyBackend().compiled(graph)
        rows.append((steps, median_seconds(compile_step, repeats, warmup=1)))
    return rows


def print_compile(rows):
    print("\n8a. Compile time of an LSTM train step (H=32) as one scan, -O2, to a numpy "
          "function\n")
    print("| T | ms | ratio to the first |")
    print("|---|---:|---:|")
    for steps, seconds in rows:
        print(f"| {steps:,} | {seconds * 1e3:.1f} | {seconds / rows[0][1]:.2f}× |")


def gru_rows(steps, repeats):
    """8b: the GRU classifier's train step at `steps` steps, as a scan and unrolled."""
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(32, steps, 8)).astype(np.float32),
             "h0": np.zeros((32, 32), np.float32), "y": rng.integers(0, 10, 32)}
    systems = {}
    for mode in ("scan", "unroll"):
        model = chainrule.compile(source=gru_source(steps), loops=mode)
        systems[f"chainrule-numpy ({mode})"] = (
            lambda m=model: m.train_step(lr=0.01, optimizer="sgd", **batch))
    return interleaved_medians(systems, repeats)


def lstm_rows(repeats):
    """8c: one LSTM layer's forward and backward (the gradients of every param)."""
    batch, steps, hidden, features = 32, 200, 128, 128
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, steps, features)).astype(np.float32)
    model = chainrule.compile(source=lstm_source(hidden, features))
    systems = {}
    for name, backend in (("chainrule-numpy", CompiledNumpyBackend()),
                          ("chainrule-onnxruntime", OnnxRuntimeBackend())):
        graph, _ = model.compile_graph(grad=True, opt_level="O2" if name.endswith("numpy")
                                       else "O1")
        params = dict(model.params)
        systems[name] = (lambda b=backend, g=graph, p=params:
                         b.run(g, {"x": x}, p))
    torch = optional("torch")
    if torch is not None:
        layer = torch.nn.LSTM(features, hidden, batch_first=True)
        inputs = torch.tensor(x)

        def torch_step(threads):
            torch.set_num_threads(threads)
            for p in layer.parameters():
                p.grad = None
            out, _ = layer(inputs)
            out.sum().backward()
        default = torch.get_num_threads()
        systems["pytorch eager nn.LSTM"] = lambda: torch_step(default)
        systems["pytorch eager nn.LSTM, 1 thread"] = lambda: torch_step(1)
    return interleaved_medians(systems, repeats, warmup=2)


def print_ratios(title: str, medians: dict, base: str) -> None:
    print(f"\n{title}\n")
    print(f"| system | median (ms) | vs {base} |")
    print("|---|---:|---:|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1e3:,.1f} | {seconds / medians[base]:.2f}× |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("8a", "8b", "8c"))
    args = parser.parse_args()
    repeats = 5 if args.quick else 15
    started = time.perf_counter()
    if args.only in (None, "8a"):
        print_compile(compile_rows((10, 100, 1000), max(repeats // 2, 3)))
    if args.only in (None, "8b"):
        print_ratios("8b. GRU classifier train step at T=64 (batch 32, H=32, SGD) on numpy: "
                     "one scan against the loop unrolled", gru_rows(64, repeats * 4),
                     "chainrule-numpy (unroll)")
    if args.only in (None, "8c"):
        medians = lstm_rows(repeats)
        base = "pytorch eager nn.LSTM" if "pytorch eager nn.LSTM" in medians else \
            "chainrule-numpy"
        print_ratios("8c. One LSTM layer, B=32, H=128, T=200, forward and backward", medians,
                     base)
    print(f"\n({time.perf_counter() - started:.0f} s; OPENBLAS_CORETYPE "
          f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')})")


if __name__ == "__main__":
    main()
