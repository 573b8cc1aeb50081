"""A .nn `for` loop as one scan node: when it becomes one (the bound, `--loops`), and that the
scan computes what the unrolled loop computes, gradients included, to 1e-12 in float64."""
import re

import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.backends.numpy_backend import NumpyBackend
from chainrule.backends.numpy_compiled import compile_graph
from chainrule.ir import parse_graph, print_graph, verify
from chainrule.ir.dsl_printer import dsl_names, print_dsl
from chainrule.passes.manager import run_passes
from support.graphs import structure
from support.numeric import assert_close, central_difference

T = 5

GRU = """model gru(x: f64[B, T, 3], h0: f64[B, 4], y: f64[B, 4]) {
    param Wz: f64[4, 3] = glorot()
    param Uz: f64[4, 4] = glorot()
    param Wh: f64[4, 3] = glorot()
    param Uh: f64[4, 4] = glorot()
    h = h0
    for t in range(T) {
        xt = x[:, t]
        z = sigmoid(xt @ Wz.T + h @ Uz.T)
        candidate = tanh(xt @ Wh.T + (z * h) @ Uh.T)
        h = (1.0 - z) * h + z * candidate
    }
    return sum((h - y) ** 2)
}
"""
LSTM = """model lstm(x: f64[B, T, 3], y: f64[B, 4]) {
    param W: f64[16, 3] = glorot()
    param U: f64[16, 4] = glorot()
    param b: f64[16] = normal(0.0, 0.1)
    h = zeros((B, 4), dtype=f64)
    c = zeros((B, 4), dtype=f64)
    for t in range(T) {
        gates = x[:, t] @ W.T + h @ U.T + b
        i = sigmoid(gates[:, 0:4])
        f = sigmoid(gates[:, 4:8])
        g = tanh(gates[:, 8:12])
        o = sigmoid(gates[:, 12:16])
        c = f * c + i * g
        h = o * tanh(c)
    }
    return sum((h - y) ** 2) + sum(c)
}
"""
STACKED = """model stacked(x: f64[B, 4]) {
    param W: f64[5, 4, 4] = glorot()
    h = x
    for t in range(5) {
        h = tanh(h @ W[t].T)
    }
    return sum(h ** 2)
}
"""
REVERSE = """model backwards(x: f64[B, T, 3]) {
    param W: f64[4, 3] = glorot()
    param U: f64[4, 4] = glorot()
    h = zeros((B, 4), dtype=f64)
    for t in range(T - 1, -1, -1) {
        h = tanh(x[:, t] @ W.T + h @ U.T)
    }
    return sum(h * h)
}
"""
PER_STEP = """model per_step(x: f64[B, T, 3], y: f64[B, T, 4]) {
    param W: f64[4, 3] = glorot()
    param U: f64[4, 4] = glorot()
    h = zeros((B, 4), dtype=f64)
    hs = zeros((B, T, 4), dtype=f64)
    for t in range(T) {
        h = tanh(x[:, t] @ W.T + h @ U.T)
        hs[:, t] = h
    }
    return mean((hs - y) ** 2)
}
"""
NESTED = """model nested(x: f64[B, T, 3]) {
    param W: f64[2, 3, 3] = glorot()
    param U: f64[3, 3] = glorot()
    h = zeros((B, 3), dtype=f64)
    for t in range(T) {
        v = x[:, t]
        for i in range(2) {
            v = tanh(v @ W[i].T)
        }
        g = h
        for s in range(T) {
            g = tanh(g @ U.T + x[:, s] * 0.1)
        }
        h = h + v * g
    }
    return sum(h)
}
"""
ARITHMETIC = """model arithmetic(x: f64[B, 24], s: f64[B, 4]) {
    param W: f64[4, 8] = glorot()
    h = s
    for t in range(3) {
        row = x[:, 8 * t:8 * t + 8]
        h = tanh(row @ W.T + h * f64(t + 1) + s * 0.5)
    }
    return sum(h)
}
"""
PROGRAMS = {"gru": GRU, "lstm": LSTM, "stacked": STACKED, "reverse": REVERSE,
            "per_step": PER_STEP, "nested": NESTED, "arithmetic": ARITHMETIC}


def feeds_for(model, rng):
    sizes = {"B": 2, "T": T}
    return {v.name: rng.normal(size=tuple(sizes.get(d, d) for d in v.type.shape))
            for v in model.graph.inputs}


def objective_renamed(results: dict, model, other) -> dict:
    """Results of `model` with its objective under `other`'s name (the values carried out of
    a loop get other names when it unrolls)."""
    return {other.objective.name if key == model.objective.name else key: value
            for key, value in results.items()}


def walk_scans(graph):
    """Every scan node, in bodies too."""
    for node in scans(graph):
        yield node
        yield from walk_scans(node.attrs["body"])


def scans(graph) -> list:
    return [node for node in graph.nodes if node.op == "scan"]


def pair(source):
    """The program as scans, and unrolled at T steps (where it has a dim T: binding a dim a
    model lacks is refused), holding the same params."""
    scanned = chainrule.compile(source=source, loops="scan")
    dims = {"T": T} if re.search(r"(?<![\w.])T\b", source) else None
    unrolled = chainrule.compile(source=source, loops="unroll", dims=dims)
    unrolled.set_params(scanned.params)
    return scanned, unrolled


@pytest.mark.parametrize("name", PROGRAMS)
def test_gradients_through_a_scan_equal_the_unrolled_loops(name):
    scanned, unrolled = pair(PROGRAMS[name])
    assert scans(scanned.graph) and not scans(unrolled.graph)
    feeds = feeds_for(scanned, np.random.default_rng(0))
    expected = objective_renamed(unrolled.grad(**feeds), unrolled, scanned)
    graph, grads = scanned.compile_graph(grad=True)
    params = scanned.params_of(graph)
    results = {"compiled": compile_graph(graph)(feeds, params),
               "interpreter": NumpyBackend().run(graph, feeds, params)}
    for backend, got in results.items():
        for key, value in expected.items():
            assert_close(got[grads.get(key, key)], value, 1e-12, what=f"{name} {backend}: {key}")


def test_scan_gradients_match_finite_differences():
    model = chainrule.compile(source=LSTM)
    assert scans(model.graph)
    feeds = feeds_for(model, np.random.default_rng(1))
    grads = model.grad(wrt=["U", "x"], **feeds)
    objective = model.objective.name
    numeric = central_difference(lambda: float(model.run(**feeds)[objective]), model.params["U"])
    assert_close(grads["U"], numeric, 1e-6, what="U")
    numeric = central_difference(lambda: float(model.run(**feeds)[objective]), feeds["x"])
    assert_close(grads["x"], numeric, 1e-6, what="x")


def test_a_symbolic_bound_is_one_scan_and_a_small_constant_one_unrolls():
    graph = chainrule.compile(source=GRU).graph
    assert len(scans(graph)) == 1 and not scans(graph.bodies()[0])
    verify(graph)
    small = chainrule.compile(source=GRU.replace("range(T)", "range(5)")).graph
    assert not scans(small)
    large = chainrule.compile(source=GRU.replace("range(T)", "range(17)").replace(
        "x: f64[B, T, 3]", "x: f64[B, 17, 3]")).graph
    assert len(scans(large)) == 1
    forced = chainrule.compile(source=GRU.replace("range(T)", "range(5)"), loops="scan").graph
    assert len(scans(forced)) == 1
    text = print_graph(graph)
    assert print_graph(parse_graph(text)) == text
    assert "[t]" in text  # the body's nodes say which loop they are in


def test_a_constant_loop_whose_body_cannot_be_a_scan_unrolls_in_auto():
    source = """model m(x: f64[20]) {
    s = x
    for t in range(20) {
        for i in range(t // 4) {
            s = s + x
        }
    }
    return sum(s)
}
"""
    assert not scans(chainrule.compile(source=source).graph)
    with pytest.raises(ChainruleError, match="changes with 't'") as caught:
        chainrule.compile(source=source, loops="scan")
    assert "(in the loop over t)" in caught.value.render()


def test_per_step_outputs_agree_in_both_modes_and_collect_along_the_axis():
    scanned, unrolled = pair(PER_STEP)
    feeds = feeds_for(scanned, np.random.default_rng(2))
    source = PER_STEP.replace("return mean((hs - y) ** 2)", "return mean((hs - y) ** 2), hs")
    outputs = [chainrule.compile(source=source, loops=mode, dims=dims) for mode, dims
               in (("scan", None), ("unroll", {"T": T}))]
    outputs[1].set_params(outputs[0].params)
    got, expected = (m.run(**feeds)["hs"] for m in outputs)
    assert got.shape == (2, T, 4)
    np.testing.assert_array_equal(got, expected)


def test_second_order_through_a_scan_equals_the_unrolled_loops():
    source = """model penalty(x: f64[B, T, 3]) {
    param W: f64[4, 3] = glorot()
    param U: f64[4, 4] = glorot()
    h = zeros((B, 4), dtype=f64)
    for t in range(T) {
        h = tanh(x[:, t] @ W.T + h @ U.T)
    }
    L = sum(h * h)
    g = grad(L, x)
    return L + 0.5 * sum(g * g)
}
"""
    scanned, unrolled = pair(source)
    feeds = feeds_for(scanned, np.random.default_rng(3))
    expected = objective_renamed(unrolled.grad(**feeds), unrolled, scanned)
    got = scanned.grad(**feeds)
    for key, value in expected.items():
        assert_close(got[key], value, 1e-12, what=key)


def test_the_cli_switch_reaches_the_lowering(tmp_path):
    from support.cli import chainrule as run_cli
    path = tmp_path / "gru.nn"
    path.write_text(GRU.replace("range(T)", "range(4)"))
    assert "scan(" in run_cli("ir", str(path), "--loops", "scan").stdout
    assert "scan(" not in run_cli("ir", str(path)).stdout


LOCATED = [
    # (source, loops, line, col, message)
    ("model m(x: f64[B, T]) {\n    for t in range(T) {\n        y = x\n    }\n"
     "    return x\n}\n", "unroll", 2, 20, "T is a symbolic dim, known only when the model "
     "runs, but a loop bound (a loop unrolls with --loops unroll) must be known when it "
     "compiles; bind it (--dim T=N"),
    ("model m(x: f64[3]) {\n    s = x\n    for t in range(10 ** 6) {\n        s = s + x\n"
     "    }\n    return s\n}\n", "unroll", 3, 5, "this loop runs 1,000,000 times; a loop "
     "unrolls into the graph, at most 100,000 times"),
    ("model m(x: f64[T, 3]) {\n    s = 0.0\n    for t in range(T) {\n        s = s + x[t]\n"
     "    }\n    return s\n}\n", "auto", 4, 9, "start it as a tensor, e.g. zeros((3,), "
     "dtype=f64) (in the loop over t)"),
    ("model m(x: f64[T, 3]) {\n    n = 0\n    for t in range(T) {\n        n = n + 1\n"
     "    }\n    return x\n}\n", "auto", 4, 9, "'n' is carried through a scan as a number; a "
     "scan carries tensors: start it as a tensor"),
    ("model m(x: f64[T, 3]) {\n    s = x[0]\n    for t in range(T) {\n        s = s + "
     "zeros((t, 3))\n    }\n    return s\n}\n", "auto", 4, 17, "changes with 't'; in a scan "
     "every step has the same shapes (in the loop over t)"),
    ("model m(x: f64[T, 3]) {\n    s = x[0]\n    for t in range(T) {\n        for i in "
     "range(T) {\n            s = s + zeros((t, 3))[0]\n        }\n    }\n    return s\n}\n",
     "auto", 5, 21, "changes with 't'; in a scan every step has the same shapes (in the loop "
     "over t, the loop over i)"),
    ("model m(x: f64[T, 3]) {\n    s = x[0]\n    for t in range(T) {\n        s = s * "
     "dropout(x[t], 0.5)\n    }\n    return s\n}\n", "auto", 4, 17, "dropout_mask cannot be in "
     "the body of a scan"),
    ("model m(x: f64[T, 3]) {\n    ys = x\n    for t in range(T) {\n        ys[t] = ys[t] "
     "* 2.0\n    }\n    return ys\n}\n", "auto", 4, 17, "'ys' collects the values of the "
     "loop over 't' step by step; it is read after the loop, not in it"),
    ("model m(x: f64[T, 3]) {\n    s = x[0]\n    for t in range(T) {\n        s = s + "
     "x[t] * (0.5 * t)\n    }\n    return s\n}\n", "auto", 4, 25, "'mul' of the loop variable t "
     "and 0.5"),
    ("model m(x: f64[T, 3]) {\n    s = x[0]\n    for t in range(T) {\n        s = s + "
     "x[t, t:T]\n    }\n    return s\n}\n", "auto", 4, 17, "in the loop over t"),
]


@pytest.mark.parametrize("source, loops, line, col, message", LOCATED)
def test_errors_in_a_scan_are_located_and_name_the_loop_variable(source, loops, line, col,
                                                                 message):
    with pytest.raises(ChainruleError) as caught:
        chainrule.compile(source=source, loops=loops)
    error = caught.value
    assert message in error.render(), error.render()
    assert (error.line, error.col) == (line, col), error.render()


def test_an_unknown_loop_mode_is_an_error():
    with pytest.raises(ChainruleError, match="loops is one of auto, unroll, scan"):
        chainrule.compile(source=GRU, loops="fast")


@pytest.mark.parametrize("name", PROGRAMS)
def test_a_scan_prints_as_a_for_loop_that_lowers_back_to_it(name):
    """The decompiler writes a scan as a loop; compiled with --loops scan (a constant bound
    under the unroll limit would unroll in auto), it is the same graph once dce drops the
    zeros the text defines each stack with."""
    model = chainrule.compile(source=PROGRAMS[name], loops="scan")
    text = print_dsl(model.graph)
    assert text.count(" in range(") == sum(1 for _ in walk_scans(model.graph))
    printed = chainrule.compile(source=text, loops="scan")
    assert structure(run_passes(printed.graph, ["dce"])) == \
        structure(run_passes(model.graph, ["dce"]))
    names = dsl_names(model.graph)
    printed.set_params({names[key]: value for key, value in model.params.items()})
    feeds = feeds_for(model, np.random.default_rng(4))
    expected, got = model.run(**feeds), printed.run(**feeds)
    for before, after in zip(expected.values(), got.values(), strict=True):
        np.testing.assert_array_equal(before, after)


def test_a_reverse_scan_cannot_print_as_a_loop():
    graph = chainrule.compile(source=GRU).compile_graph(grad=True)[0]
    with pytest.raises(ChainruleError, match="a reverse scan has no for loop"):
        print_dsl(graph)


SCAN_IR = """graph rnn(%xs: f64[T, B, 4], %h0: f64[B, 8], %W: f64[8, 4], %U: f64[8, 8]) {
  %h, %hs = scan(%h0, %xs, %W, %U) {length=T, carried=1, scanned=1, reverse=false} body(%h.in: f64[B, 8], %x: f64[B, 4], %w: f64[8, 4], %u: f64[8, 8]) {
    %wt = transpose(%w) {perm=[1, 0]} : f64[4, 8]
    %ut = transpose(%u) {perm=[1, 0]} : f64[8, 8]
    %a = matmul(%x, %wt) : f64[B, 8]
    %b = matmul(%h.in, %ut) : f64[B, 8]
    %c = add(%a, %b) : f64[B, 8]
    %h.next = tanh(%c) : f64[B, 8]
    return %h.next, %h.next
  } : f64[B, 8], f64[T, B, 8]
  %s = sum(%hs) {axes=none, keepdims=false} : f64[]
  return %s, %h
}
"""


def test_a_scan_from_ir_text_prints_as_a_loop_that_computes_it():
    """A scan no .nn text made (as an importer builds one) decompiles to a loop too."""
    model = chainrule.compile(source=SCAN_IR)
    printed = chainrule.compile(source=print_dsl(model.graph))
    assert structure(run_passes(printed.graph, ["dce"])) == \
        structure(run_passes(model.graph, ["dce"]))
    rng = np.random.default_rng(5)
    feeds = {name: rng.normal(size=shape) for name, shape in
             (("xs", (T, 2, 4)), ("h0", (2, 8)), ("W", (8, 4)), ("U", (8, 8)))}
    for before, after in zip(model.run(**feeds).values(), printed.run(**feeds).values(),
                             strict=True):
        np.testing.assert_array_equal(before, after)


# ---- regressions: each broke once --------------------------------------------------------------

def sequence_program(body: str, before: str = "", inputs: str = "") -> str:
    return (f"model m(x: f64[B, T, 3]{inputs}) {{\n    h = zeros((B, 3), dtype=f64)\n"
            f"{before}    for t in RANGE {{\n{body}    }}\n    return sum(h * h)\n}}\n")


@pytest.mark.parametrize("body", [
    "        h = h + x[:, t // 2]\n", "        h = h + x[:, t] * f64(t % 2)\n",
    "        h = h + sum(x[:, 0:t + 1], axis=1)\n", "        h = h + x[:, t] * (0.5 * t)\n",
    "        h = h + sum(zeros((t + 1, 3), dtype=f64))\n",
    "        h = dropout(h + x[:, t], 0.5)\n"],
    ids=["floordiv", "mod", "growing-slice", "float-of-t", "size-of-t", "dropout"])
def test_any_body_that_cannot_be_a_scan_unrolls_a_constant_loop_in_auto(body):
    source = sequence_program(body).replace("RANGE", "range(20)").replace("T, 3]", "40, 3]")
    graph = chainrule.compile(source=source).graph
    assert not scans(graph)


@pytest.mark.parametrize("statement", ["update(s, s + 1.0)", "batch_norm(h, g, bb, s, v)"])
def test_a_state_update_in_a_scan_body_is_refused_by_name(statement):
    source = ("model m(x: f64[B, T, 3]) {\n    param g: f64[3] = ones()\n"
              "    param bb: f64[3] = zeros()\n    state s: f64[3] = zeros()\n"
              "    state v: f64[3] = ones()\n    h = zeros((B, 3), dtype=f64)\n"
              "    for t in range(T) {\n        n = " + statement + "\n"
              "        h = h + x[:, t]\n    }\n    return sum(h)\n}\n")
    with pytest.raises(ChainruleError, match="a state update .* cannot be in the body of a "
                                             "scan") as caught:
        chainrule.compile(source=source)
    assert caught.value.line == 8 and "(in the loop over t)" in caught.value.render()


@pytest.mark.parametrize("body, loop", [
    ("        h = h + x[:, t]\n        c = y\n", "range(T)"),        # an outer value carried
    ("        h = h + x[:, t]\n        ys[:, t] = y\n", "range(T)"),  # an outer value stacked
    ("        h = h * 0.5 + x[:, t]\n", "range(T - 1, 0, -1)"),     # a reverse range past 0
    ("        g = h * 0.5 + x[:, t]\n        for s in range(1, T) {\n"
     "            g = tanh(g + x[:, s])\n        }\n        h = g\n", "range(T)"),  # T inside
], ids=["carried-outer", "stacked-outer", "reverse-to-1", "inner-length-from-outside"])
def test_scans_equal_their_unrolled_loops(body, loop):
    before = "    c = zeros((B, 3), dtype=f64)\n    ys = zeros((B, T, 3), dtype=f64)\n"
    source = sequence_program(body, before, ", y: f64[B, 3]").replace("RANGE", loop)
    source = source.replace("return sum(h * h)", "return sum(h * h) + sum(c) + sum(ys)")
    scanned, unrolled = pair(source)
    assert scans(scanned.graph)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(2, T, 3)), "y": rng.normal(size=(2, 3))}
    (expected,) = unrolled.run(**feeds).values()
    for backend in ("numpy", "numpy-check", "onnxruntime"):
        (ours,) = scanned.run(backend=backend, **feeds).values()
        assert_close(ours, expected, rtol=1e-12)


def test_a_window_that_leaves_its_axis_at_the_first_step_is_refused():
    source = sequence_program("        h = h + sum(x[:, t - 1:t + 1], axis=1)\n")
    with pytest.raises(ChainruleError, match="at the loop's first step this reads indices -1 "
                                             "to 1 of an axis of size T"):
        chainrule.compile(source=source.replace("RANGE", "range(T)"))


def test_carried_values_that_swap_print_as_a_loop_that_swaps_them():
    source = """model m(x: f64[B, T, 3]) {
    a = zeros((B, 3), dtype=f64)
    b = ones((B, 3), dtype=f64)
    for t in range(T) {
        tmp = a
        a = b + x[:, t]
        b = tmp
    }
    return sum(a * a) + sum(b)
}"""
    model = chainrule.compile(source=source, loops="scan")
    again = chainrule.compile(source=print_dsl(model.graph), loops="scan")
    x = np.random.default_rng(0).normal(size=(2, 5, 3))
    assert_close(list(again.run(x=x).values())[0], list(model.run(x=x).values())[0],
                 rtol=1e-15)


@pytest.mark.parametrize("backend", ["numpy", "numpy-check", "onnxruntime"])
def test_a_loop_longer_than_the_sequence_it_reads_fails_on_every_backend(backend):
    """Scan counts its steps by its sequences: the export checks them against the length."""
    model = chainrule.compile(source="model m(x: f64[B, T, 3], m: f64[B, S]) {\n"
                              "    h = zeros((B, 3), dtype=f64)\n    for t in range(S) {\n"
                              "        h = tanh(h + x[:, t])\n    }\n    return sum(h)\n}\n")
    feeds = {"x": np.ones((2, 4, 3)), "m": np.ones((2, 6))}
    with pytest.raises(ChainruleError) as caught:
        model.run(backend=backend, **feeds)
    assert caught.value.line == 3
    model.run(backend=backend, x=np.ones((2, 6, 3)), m=np.ones((2, 6)))


def test_a_loop_of_one_step_can_be_a_scan():
    source = sequence_program("        h = tanh(h + x[:, t])\n").replace("RANGE", "range(1)")
    source = source.replace("f64[B, T, 3]", "f64[B, 1, 3]")
    scanned = chainrule.compile(source=source, loops="scan")
    assert scans(scanned.graph)
    x = np.random.default_rng(0).normal(size=(2, 1, 3))
    assert_close(scanned.run(x=x)["sum"], np.sum(np.tanh(x[:, 0]) ** 2), rtol=1e-15)


def test_a_failing_step_points_at_the_expression_in_the_body(tmp_path):
    source = sequence_program("        h = tanh(h + x[:, t + 1])\n").replace("RANGE", "range(T)")
    model = chainrule.compile(source=source)
    with pytest.raises(ChainruleError) as caught:
        model.run(x=np.ones((2, 4, 3)))
    assert (caught.value.line, caught.value.col) == (4, 22)
    assert caught.value.message.startswith("at step 3 of the scan")
