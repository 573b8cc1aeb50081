"""Scans exported as standard ONNX (`Scan`, or `Loop` over no sequence): the forward graph, its
gradient and the whole training step run in onnxruntime and agree with the numpy backend, at
two sequence lengths of one exported model (T is symbolic)."""
import numpy as np
import onnx
import onnxruntime
import pytest

import chainrule
from chainrule.backends.numpy_backend import NumpyBackend
from chainrule.backends.onnx_backend import OnnxRuntimeBackend, export_onnx
from chainrule.ir.types import numpy_dtype
from chainrule.passes.optimizers import OptimizerSpec
from support.backend_checks import TOLERANCES, check_standard
from support.cli import chainrule as chainrule_cli
from support.numeric import assert_close, central_difference

# An RNN cell (one carried value) reading a param, an input and a value computed outside.
RNN = """graph rnn(%xs: f32[T, B, 4], %h0: f32[B, 8], %k: f32[8]) {
  param %W: f32[8, 4] = normal(0.0, 0.4)
  param %U: f32[8, 8] = normal(0.0, 0.4)
  %U.T = transpose(%U) {perm=[1, 0]} : f32[8, 8]
  %h, %hs = scan(%h0, %xs, %W, %U.T, %k) {length=T, carried=1, scanned=1, reverse=REVERSE} body(%h.in: f32[B, 8], %x: f32[B, 4], %w: f32[8, 4], %ut: f32[8, 8], %bias: f32[8]) {
    %wt = transpose(%w) {perm=[1, 0]} : f32[4, 8]
    %a = matmul(%x, %wt) : f32[B, 8]
    %b = matmul(%h.in, %ut) : f32[B, 8]
    %c = add(%a, %b) : f32[B, 8]
    %d = add(%c, %bias) : f32[B, 8]
    %h.next = tanh(%d) : f32[B, 8]
    return %h.next, %h.next
  } : f32[B, 8], f32[T, B, 8]
  %squares = mul(%hs, %hs) : f32[T, B, 8]
  %J = sum(%squares) {axes=none, keepdims=false} : f32[]
  return %J, %h, %hs
}"""

# An LSTM cell: two carried values, two stacks, and a reshape to the symbolic batch in the body.
LSTM = """graph lstm(%xs: f32[T, B, 4], %h0: f32[B, 8], %c0: f32[B, 8]) {
  param %W: f32[32, 4] = normal(0.0, 0.4)
  param %U: f32[32, 8] = normal(0.0, 0.4)
  %h, %c, %hs, %cs = scan(%h0, %c0, %xs, %W, %U) {length=T, carried=2, scanned=1, reverse=false} body(%h.in: f32[B, 8], %c.in: f32[B, 8], %x: f32[B, 4], %w: f32[32, 4], %u: f32[32, 8]) {
    %w.T = transpose(%w) {perm=[1, 0]} : f32[4, 32]
    %xw = matmul(%x, %w.T) : f32[B, 32]
    %u.T = transpose(%u) {perm=[1, 0]} : f32[8, 32]
    %hu = matmul(%h.in, %u.T) : f32[B, 32]
    %pre = add(%xw, %hu) : f32[B, 32]
    %z = reshape(%pre) {shape=[B, 4, 8]} : f32[B, 4, 8]
    %zi = slice(%z) {starts=[0], ends=[1], axes=[1], steps=[1]} : f32[B, 1, 8]
    %zi.1 = squeeze(%zi) {axes=[1]} : f32[B, 8]
    %i = sigmoid(%zi.1) : f32[B, 8]
    %zf = slice(%z) {starts=[1], ends=[2], axes=[1], steps=[1]} : f32[B, 1, 8]
    %zf.1 = squeeze(%zf) {axes=[1]} : f32[B, 8]
    %f = sigmoid(%zf.1) : f32[B, 8]
    %zg = slice(%z) {starts=[2], ends=[3], axes=[1], steps=[1]} : f32[B, 1, 8]
    %zg.1 = squeeze(%zg) {axes=[1]} : f32[B, 8]
    %g = tanh(%zg.1) : f32[B, 8]
    %zo = slice(%z) {starts=[3], ends=[4], axes=[1], steps=[1]} : f32[B, 1, 8]
    %zo.1 = squeeze(%zo) {axes=[1]} : f32[B, 8]
    %o = sigmoid(%zo.1) : f32[B, 8]
    %kept = mul(%f, %c.in) : f32[B, 8]
    %written = mul(%i, %g) : f32[B, 8]
    %c.next = add(%kept, %written) : f32[B, 8]
    %squashed = tanh(%c.next) : f32[B, 8]
    %h.next = mul(%o, %squashed) : f32[B, 8]
    return %h.next, %c.next, %h.next, %c.next
  } : f32[B, 8], f32[B, 8], f32[T, B, 8], f32[T, B, 8]
  %squares = mul(%hs, %hs) : f32[T, B, 8]
  %s = sum(%squares) {axes=none, keepdims=false} : f32[]
  %t = sum(%cs) {axes=none, keepdims=false} : f32[]
  %J = add(%s, %t) : f32[]
  return %J, %h, %c
}"""

# No sequence: the length is the symbol T, which the input %weights binds.
ITERATE = """graph iterate(%h0: f32[B, 8], %weights: f32[T]) {
  param %U: f32[8, 8] = normal(0.0, 0.6)
  %h, %hs = scan(%h0, %U) {length=T, carried=1, scanned=0, reverse=REVERSE} body(%h.in: f32[B, 8], %u: f32[8, 8]) {
    %ut = transpose(%u) {perm=[1, 0]} : f32[8, 8]
    %b = matmul(%h.in, %ut) : f32[B, 8]
    %h.next = tanh(%b) : f32[B, 8]
    return %h.next, %h.next
  } : f32[B, 8], f32[T, B, 8]
  %w = reshape(%weights) {shape=[T, 1, 1]} : f32[T, 1, 1]
  %weighted = mul(%hs, %w) : f32[T, B, 8]
  %J = sum(%weighted) {axes=none, keepdims=false} : f32[]
  return %J, %h, %hs
}"""

# A scan in a scan: each outer step runs an RNN over the S steps of its slice.
NESTED = """graph nested(%xs: f32[T, S, B, 4], %h0: f32[B, 8]) {
  param %W: f32[8, 4] = normal(0.0, 0.4)
  param %U: f32[8, 8] = normal(0.0, 0.4)
  %h, %hs = scan(%h0, %xs, %W, %U) {length=T, carried=1, scanned=1, reverse=false} body(%h.in: f32[B, 8], %x: f32[S, B, 4], %w: f32[8, 4], %u: f32[8, 8]) {
    %g, %gs = scan(%h.in, %x, %w, %u) {length=S, carried=1, scanned=1, reverse=false} body(%g.in: f32[B, 8], %xt: f32[B, 4], %w2: f32[8, 4], %u2: f32[8, 8]) {
      %wt = transpose(%w2) {perm=[1, 0]} : f32[4, 8]
      %ut = transpose(%u2) {perm=[1, 0]} : f32[8, 8]
      %a = matmul(%xt, %wt) : f32[B, 8]
      %b = matmul(%g.in, %ut) : f32[B, 8]
      %c = add(%a, %b) : f32[B, 8]
      %g.next = tanh(%c) : f32[B, 8]
      return %g.next, %g.next
    } : f32[B, 8], f32[S, B, 8]
    %m = mean(%gs) {axes=[0], keepdims=false} : f32[B, 8]
    %e = add(%g, %m) : f32[B, 8]
    %h.next = tanh(%e) : f32[B, 8]
    return %h.next, %h.next
  } : f32[B, 8], f32[T, B, 8]
  %squares = mul(%hs, %hs) : f32[T, B, 8]
  %J = sum(%squares) {axes=none, keepdims=false} : f32[]
  return %J, %h
}"""

CASES = {
    "rnn": RNN.replace("REVERSE", "false"),
    "reverse_rnn": RNN.replace("REVERSE", "true"),
    "lstm": LSTM,
    "iterate": ITERATE.replace("REVERSE", "false"),
    "reverse_iterate": ITERATE.replace("REVERSE", "true"),
    "nested": NESTED,
}
BATCH, INNER_STEPS = 2, 3
LENGTHS = (3, 5)  # two lengths through one exported model


def compiled(case: str, dtype: str = "f32"):
    return chainrule.compile(source=CASES[case].replace("f32", dtype))


def batch(graph, length: int, rng) -> dict:
    sizes = {"T": length, "B": BATCH, "S": INNER_STEPS}
    return {v.name: rng.normal(size=[sizes.get(d, d) for d in v.type.shape]).astype(
        numpy_dtype(v.type.dtype)) for v in graph.inputs}


def assert_backends_agree(actual: dict, expected: dict, what: str, dtype: str = "f32") -> None:
    rtol, atol = TOLERANCES[dtype]
    assert list(actual) == list(expected), what
    for name, value in expected.items():
        assert_close(actual[name], value, rtol, atol, what=f"{what} {name}")


def check_against_numpy(graph, params: dict, what: str, dtype: str = "f32") -> None:
    """The graph's every output in onnxruntime (through the exported model) against numpy, at
    each length, with one session."""
    check_standard(export_onnx(graph, params))
    onnxruntime_backend, rng = OnnxRuntimeBackend(), np.random.default_rng(0)
    for length in LENGTHS:
        feeds = batch(graph, length, rng)
        expected = NumpyBackend().run(graph, feeds, params)
        actual = onnxruntime_backend.run(graph, feeds, params)
        assert_backends_agree(actual, expected, f"{what} at T={length}:", dtype)


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_numpy(case):
    model = compiled(case)
    graph, _ = model.compile_graph()
    check_against_numpy(graph, model.params_of(graph), case)


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("case", CASES)
def test_gradient_matches_numpy(case, dtype):
    model = compiled(case, dtype)
    # The inputs too: a sequence's gradient is a stack the backward scan writes.
    wrt = list(model.params) + [v.name for v in model.graph.inputs]
    graph, grads = model.grad_graph(wrt)
    assert set(grads) == set(wrt)
    check_against_numpy(graph, model.params_of(graph), f"{case} gradient", dtype)


@pytest.mark.parametrize("case", CASES)
def test_train_step_runs_in_onnxruntime_as_on_numpy(case):
    """The exported step, fed its own defaults and then its own next values, at a different
    T each step, against the same step's graph on numpy."""
    model, spec = compiled(case), OptimizerSpec("adam")
    proto = model.to_onnx(train_step=spec)
    check_standard(proto)
    graph, _ = model.train_step_graph(spec)
    state = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    session = onnxruntime.InferenceSession(proto.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    outputs = [o.name for o in proto.graph.output]
    params = {v.name for v in graph.param_values()}
    rng = np.random.default_rng(1)
    for length in LENGTHS:
        feeds = {**batch(model.graph, length, rng), "opt.lr": np.array(0.05, np.float32)}
        expected = NumpyBackend().run(
            graph, {**feeds, **{k: v for k, v in state.items() if k not in params}},
            {k: v for k, v in state.items() if k in params})
        actual = dict(zip(outputs, session.run(None, {**state, **feeds}), strict=True))
        assert_backends_agree({name: actual[name] for name in expected}, expected,
                              f"{case} train step at T={length}:")
        state = {name: actual[f"{name}.next"] for name in state}
    assert not np.array_equal(state["U"], model.params["U"])  # the steps trained


def test_a_nested_scans_gradient_equals_central_differences():
    """The inner scan's residuals are forward values of the outer body: the outer scan saves
    them, stacked once more."""
    model = compiled("nested", "f64")
    feeds = batch(model.graph, 3, np.random.default_rng(3))
    grads = model.grad(wrt=["W", "U", "xs", "h0"], **feeds)
    for name in ("W", "U", "xs", "h0"):
        point = model.params[name] if name in model.params else feeds[name]
        expected = central_difference(lambda: float(model.run(**feeds)["J"]), point)
        assert_close(grads[name], expected, 1e-7, what=name)


def loops(graph: onnx.GraphProto) -> list[str]:
    """The op types of the loops in graph and in their bodies (and in the branches of the If
    that guards a scan of a symbolic length), outermost first."""
    found = []
    for node in graph.node:
        if node.op_type in ("Scan", "Loop"):
            found.append(node.op_type)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found += loops(attribute.g)
    return found


def nodes_in_subgraphs(graph: onnx.GraphProto) -> int:
    """How many nodes the subgraphs hold: loop bodies, and the If that guards a scan of a
    symbolic length, with what they hold."""
    return sum(len(attribute.g.node) + nodes_in_subgraphs(attribute.g)
               for node in graph.node for attribute in node.attribute
               if attribute.type == onnx.AttributeProto.GRAPH)


@pytest.mark.parametrize("case, forward, gradient", [
    ("rnn", ["Scan"], ["Scan", "Scan"]),
    ("iterate", ["Loop"], ["Loop", "Scan"]),  # the backward scan reads the stacked cotangents
    # The backward body reads the inner forward scan's stacks, saved by the outer one.
    ("nested", ["Scan", "Scan"], ["Scan", "Scan", "Scan", "Scan"]),
])
def test_a_scan_is_one_loop_node_not_unrolled(case, forward, gradient):
    model = compiled(case)
    graph, _ = model.compile_graph()
    assert loops(export_onnx(graph, model.params).graph) == forward
    graph, _ = model.grad_graph()
    assert loops(export_onnx(graph, model.params).graph) == gradient


def test_body_names_are_unique_across_the_model():
    """The forward and backward bodies share IR values (%h.in, %x): in ONNX each has names
    of its own, prefixed by its scan's, which the full checker requires."""
    model = compiled("rnn")
    graph, _ = model.grad_graph()
    proto = export_onnx(graph, model.params)
    names = []

    def collect(onnx_graph):
        names.extend(i.name for i in onnx_graph.input)
        for node in onnx_graph.node:
            names.extend(node.output)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    collect(attribute.g)
    collect(proto.graph)
    assert len(names) == len(set(names))
    assert "h#body/h.in" in names and "dJ/dh0.scan#body/h.in" in names


def test_the_onnxruntime_backend_trains_a_model_with_a_scan():
    numpy_model, onnx_model = compiled("lstm"), compiled("lstm")
    rng = np.random.default_rng(2)
    for length in LENGTHS:
        feeds = batch(numpy_model.graph, length, rng)
        expected = numpy_model.train_step(lr=0.1, optimizer="sgd", backend="numpy", **feeds)
        actual = onnx_model.train_step(lr=0.1, optimizer="sgd", backend="onnxruntime", **feeds)
        assert_close(actual["J"], expected["J"], 1e-5, what=f"objective at T={length}")
    for name, value in numpy_model.params.items():
        assert_close(onnx_model.params[name], value, 1e-5, 1e-6, what=name)


def test_export_on_the_command_line_counts_the_bodies_nodes_apart(tmp_path):
    source = tmp_path / "rnn.cir"
    source.write_text(CASES["rnn"])
    for flags in (["--grad"], ["--train-step", "--optimizer", "adam"]):
        result = chainrule_cli("export", source, "-o", tmp_path / "out.onnx", *flags)
        assert result.returncode == 0, result.stderr
        proto = onnx.load(str(tmp_path / "out.onnx"))
        check_standard(proto)
        in_bodies = nodes_in_subgraphs(proto.graph)
        assert f"{len(proto.graph.node)} ONNX nodes (and {in_bodies} in loop bodies)" in \
            result.stdout
