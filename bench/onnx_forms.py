"""The backward forms on onnxruntime: each gradient that chainrule's ONNX export writes, beside
the alternatives it was measured against, as one-node-kind graphs timed in one process.

    python bench/onnx_forms.py            # every form at LeNet's and ResNet's shapes
    python bench/onnx_forms.py --quick    # fewer repeats

Rows are medians of interleaved calls of `session.run` (one intra-op thread, no spinning, as
chainrule's sessions run under one thread). The form chainrule exports is marked (the weight's
gradient by columns only over fixed sizes, and where the columns outnumber the weight's rows);
every pair is checked to give the same result first.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
# (batch, channels in, size, channels out): LeNet's two convolutions, two of ResNet-18's.
CONV_SHAPES = ((64, 1, 8, 16), (64, 16, 4, 32), (8, 64, 16, 64), (8, 128, 8, 128))
POOL_SHAPES = ((64, 16, 8, 8), (64, 32, 4, 4), (8, 64, 32, 32))
# (batch, channels in, input size, channels out) of stride-2 convolutions: LeNet-sized and
# two of ResNet-18's downsampling ones.
STRIDED_SHAPES = ((64, 16, 8, 32), (8, 64, 32, 128), (8, 256, 8, 512))


def session(nodes, inputs: dict, constants: dict | None = None):
    """A session of one graph: `inputs` name -> shape (float32), `constants` name -> array."""
    graph = helper.make_graph(
        nodes, "form", [helper.make_tensor_value_info(name, FLOAT, shape)
                        for name, shape in inputs.items()],
        [helper.make_tensor_value_info("y", FLOAT, None)],
        [numpy_helper.from_array(value, name) for name, value in (constants or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(model.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def ints(*values):
    return np.asarray(values, np.int64)


def interleaved(runs: dict, feeds: dict, repeats: int) -> dict:
    """Median µs of each session on the same feeds, called in turn."""
    times = {name: [] for name in runs}
    for _ in range(max(3, repeats // 10)):
        for run in runs.values():
            run.run(None, feeds)
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run.run(None, feeds)
            times[name].append(time.perf_counter() - started)
    return {name: float(np.median(values)) * 1e6 for name, values in times.items()}


def same_results(runs: dict, feeds: dict) -> None:
    results = [run.run(None, feeds)[0] for run in runs.values()]
    for result in results[1:]:
        np.testing.assert_allclose(result, results[0], rtol=1e-4, atol=1e-3)


def input_gradient_forms(batch, channels, size, outputs):
    """The input's gradient of a 3x3 convolution of stride 1 and padding 1."""
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    flip = {"starts": ints(-1, -1), "ends": ints(-2 ** 62, -2 ** 62), "axes": ints(2, 3),
            "steps": ints(-1, -1)}
    inputs = {"g": [batch, outputs, size, size], "w": [outputs, channels, 3, 3]}
    return {
        "ConvTranspose (exported)": session(
            [helper.make_node("ConvTranspose", ["g", "w"], ["y"], **conv)], inputs),
        "Conv of the flipped weight": session([
            helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0, 2, 3]),
            helper.make_node("Slice", ["wt", "starts", "ends", "axes", "steps"], ["wf"]),
            helper.make_node("Conv", ["g", "wf"], ["y"], **conv)], inputs, flip),
    }, inputs


def strided_input_gradient_forms(batch, channels, size, outputs):
    """The input's gradient of a 3x3 convolution of stride 2 and padding 1 (ResNet's
    downsampling): ConvTranspose, or the stride-1 convolution of g with zeros inserted."""
    half = size // 2
    inputs = {"g": [batch, outputs, half, half], "w": [outputs, channels, 3, 3]}
    return {
        "ConvTranspose (exported)": session([helper.make_node(
            "ConvTranspose", ["g", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
            pads=[1, 1, 1, 1], output_padding=[1, 1])], inputs),
        "zeros inserted, Conv of the flipped weight": session([
            helper.make_node("Unsqueeze", ["g", "gaps"], ["g6"]),
            helper.make_node("Pad", ["g6", "zeros"], ["spread"]),
            helper.make_node("Reshape", ["spread", "image"], ["dilated"]),
            helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0, 2, 3]),
            helper.make_node("Slice", ["wt", "starts", "ends", "axes", "steps"], ["wf"]),
            helper.make_node("Conv", ["dilated", "wf"], ["y"], kernel_shape=[3, 3],
                             pads=[1, 1, 1, 1])],
            inputs, {"gaps": ints(3, 5), "zeros": ints(*[0] * 9, 1, 0, 1),
                     "image": ints(batch, outputs, size, size), "starts": ints(-1, -1),
                     "ends": ints(-2 ** 62, -2 ** 62), "axes": ints(2, 3),
                     "steps": ints(-1, -1)}),
    }, inputs


def weight_gradient_forms(batch, channels, size, outputs):
    """The weight's gradient of the same convolution: dW[o, c, k] sums g[n, o, p] times
    x[n, c, p + k] over n and p."""
    inputs = {"x": [batch, channels, size, size], "g": [batch, outputs, size, size]}
    pixels = size * size
    taps = [helper.make_node("Slice", ["padded", f"s{i}{j}", f"e{i}{j}", "hw"], [f"t{i}{j}"])
            for i in range(3) for j in range(3)]
    constants = {"pads": ints(0, 0, 1, 1, 0, 0, 1, 1), "hw": ints(2, 3),
                 "columns": ints(batch, channels * 9, pixels),
                 "grads": ints(batch, outputs, pixels), "shape": ints(outputs, channels, 3, 3)}
    for i in range(3):
        for j in range(3):
            constants[f"s{i}{j}"], constants[f"e{i}{j}"] = ints(i, j), ints(i + size, j + size)
    return {
        "Conv over swapped axes (symbolic sizes)": session([
            helper.make_node("Transpose", ["x"], ["xs"], perm=[1, 0, 2, 3]),
            helper.make_node("Transpose", ["g"], ["gs"], perm=[1, 0, 2, 3]),
            helper.make_node("Conv", ["xs", "gs"], ["ws"], kernel_shape=[size, size],
                             pads=[1, 1, 1, 1]),
            helper.make_node("Transpose", ["ws"], ["y"], perm=[1, 0, 2, 3])], inputs),
        "im2col by Slice, one MatMul (exported)": session([
            helper.make_node("Pad", ["x", "pads"], ["padded"]), *taps,
            *[helper.make_node("Unsqueeze", [f"t{i}{j}", "two"], [f"u{i}{j}"])
              for i in range(3) for j in range(3)],
            # [N, C, 9, H, W] -> [N, C * 9, H * W], times g [N, O, H * W] transposed
            helper.make_node("Concat", [f"u{i}{j}" for i in range(3) for j in range(3)],
                             ["stacked"], axis=2),
            helper.make_node("Reshape", ["stacked", "columns"], ["cols"]),
            helper.make_node("Reshape", ["g", "grads"], ["gr"]),
            helper.make_node("Transpose", ["cols"], ["colsT"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["gr", "colsT"], ["per_row"]),
            helper.make_node("ReduceSum", ["per_row", "zero"], ["summed"], keepdims=0),
            helper.make_node("Reshape", ["summed", "shape"], ["y"])],
            inputs, {**constants, "zero": ints(0), "two": ints(2)}),
    }, inputs


def pool_gradient_forms(batch, channels, size, _=None):
    """The gradient of a 2x2 max pooling of stride 2: g to each window's first maximum."""
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    half = size // 2
    inputs = {"x": [batch, channels, size, size], "g": [batch, channels, half, half]}
    return {
        "Indices and ScatterElements (exported)": session([
            helper.make_node("MaxPool", ["x"], ["p", "i"], **pool),
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Reshape", ["i", "flat"], ["fi"]),
            helper.make_node("Expand", ["zero", "s"], ["z"]),
            helper.make_node("Reshape", ["z", "flat"], ["zf"]),
            helper.make_node("Reshape", ["g", "flat"], ["gf"]),
            helper.make_node("ScatterElements", ["zf", "fi", "gf"], ["sf"], axis=0,
                             reduction="add"),
            helper.make_node("Reshape", ["sf", "s"], ["y"])],
            inputs, {"flat": ints(-1), "zero": np.zeros((), np.float32)}),
        "SpaceToDepth gather": session([
            helper.make_node("SpaceToDepth", ["x"], ["sd"], blocksize=2),
            helper.make_node("Reshape", ["sd", "taps"], ["t"]),
            helper.make_node("ReduceMax", ["t", "one"], ["peak"], keepdims=1),
            helper.make_node("Equal", ["t", "peak"], ["tied"]),
            helper.make_node("Cast", ["tied"], ["count"], to=TensorProto.INT32),
            helper.make_node("CumSum", ["count", "axis"], ["seen"]),
            helper.make_node("Equal", ["seen", "first"], ["is_first"]),
            helper.make_node("And", ["tied", "is_first"], ["hit"]),
            helper.make_node("Cast", ["hit"], ["mask"], to=FLOAT),
            helper.make_node("Unsqueeze", ["g", "one"], ["gu"]),
            helper.make_node("Mul", ["mask", "gu"], ["share"]),
            helper.make_node("Reshape", ["share", "blocks"], ["b"]),
            helper.make_node("DepthToSpace", ["b"], ["y"], blocksize=2, mode="DCR")],
            inputs, {"taps": ints(0, 4, channels, half, half), "one": ints(1),
                     "axis": np.asarray(1, np.int64), "first": np.asarray(1, np.int32),
                     "blocks": ints(0, 4 * channels, half, half)}),
    }, inputs


def relu_gradient_forms(batch, channels, size, _=None):
    inputs = {"x": [batch, channels, size, size], "g": [batch, channels, size, size]}
    zero = {"zero": np.zeros((), np.float32)}
    return {
        "Where": session([helper.make_node("Greater", ["x", "zero"], ["c"]),
                          helper.make_node("Where", ["c", "g", "zero"], ["y"])], inputs, zero),
        "Cast and Mul (exported)": session([
            helper.make_node("Greater", ["x", "zero"], ["c"]),
            helper.make_node("Cast", ["c"], ["m"], to=FLOAT),
            helper.make_node("Mul", ["g", "m"], ["y"])], inputs, zero),
    }, inputs


def measure(title, forms, shapes, repeats) -> None:
    rng = np.random.default_rng(0)
    print(f"\n### {title}\n")
    names = None
    for shape in shapes:
        runs, inputs = forms(*shape)
        # Small integers: ties in every pooling window, and sums exact in any order.
        feeds = {name: rng.integers(-2, 3, dims).astype(np.float32)
                 for name, dims in inputs.items()}
        same_results(runs, feeds)
        medians = interleaved(runs, feeds, repeats)
        if names is None:
            names = list(runs)
            print("| shape | " + " | ".join(f"{name} (µs)" for name in names) + " | ratio |")
            print("|---|" + "---:|" * (len(names) + 1))
        exported = next(name for name in names if "exported" in name)
        other = next(name for name in names if name != exported)
        print(f"| {'x'.join(map(str, shape))} | "
              + " | ".join(f"{medians[name]:,.0f}" for name in names)
              + f" | {medians[exported] / medians[other]:.2f}× |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    repeats = 30 if parser.parse_args().quick else 200
    print(f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} cores, one intra-op thread; "
          f"load average before: {os.getloadavg()[0]:.2f}. Shapes are batch x channels in x "
          "size (x channels out); ratio: the exported form's time over the other's.")
    measure("The input's gradient of a 3x3 convolution (stride 1)", input_gradient_forms,
            CONV_SHAPES, repeats)
    measure("The input's gradient of a 3x3 convolution of stride 2",
            strided_input_gradient_forms, STRIDED_SHAPES, repeats)
    measure("The weight's gradient of a 3x3 convolution (stride 1)", weight_gradient_forms,
            CONV_SHAPES, repeats)
    measure("The gradient of a 2x2 max pooling of stride 2", pool_gradient_forms, POOL_SHAPES,
            repeats)
    measure("relu's gradient", relu_gradient_forms, POOL_SHAPES, repeats)


if __name__ == "__main__":
    main()
