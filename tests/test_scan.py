"""The scan op in the IR: its text form, its verifier rules, the passes inside bodies, both
numpy backends, and autodiff through it, each checked against the same graph unrolled."""
import numpy as np
import pytest

from chainrule.api import evaluate_scalars
from chainrule.backends.numpy_backend import ExecutionError, NumpyBackend
from chainrule.backends.onnx_backend import OnnxRuntimeBackend
from chainrule.backends.numpy_compiled import CompiledNumpyBackend, compile_graph
from chainrule.ir import ChainruleError, GraphBuilder, parse_graph, print_graph, verify
from chainrule.ir.text import graph_differences
from chainrule.ir.verify import verify_all
from chainrule.passes import autodiff
from chainrule.passes.manager import PassContext, run_passes
from chainrule.passes.promote import promote_to_f64
from support.unroll import unrolled

# h' = tanh(x W^T + h U^T + b), every step's h stacked.
RNN = """
graph rnn(%xs: f64[5, 3, 4], %h0: f64[3, 6], %W: f64[6, 4], %U: f64[6, 6], %b: f64[6]) {
  %h, %hs = scan(%h0, %xs, %W, %U, %b) {length=5, carried=1, scanned=1, reverse=REVERSE} body(%h.in: f64[3, 6], %x: f64[3, 4], %w: f64[6, 4], %u: f64[6, 6], %bias: f64[6]) {
    %wt = transpose(%w) {perm=[1, 0]} : f64[4, 6]
    %ut = transpose(%u) {perm=[1, 0]} : f64[6, 6]
    %a = matmul(%x, %wt) : f64[3, 6]
    %c = matmul(%h.in, %ut) : f64[3, 6]
    %s = add(%a, %c) : f64[3, 6]
    %z = add(%s, %bias) : f64[3, 6]                                 # rnn.nn:7:9
    %h.next = tanh(%z) : f64[3, 6]                                  # rnn.nn:7:13
    return %h.next, %h.next
  } : f64[3, 6], f64[5, 3, 6]                                       # rnn.nn:6:5
  %sq = mul(%hs, %hs) : f64[5, 3, 6]
  %J = sum(%sq) {axes=none, keepdims=false} : f64[]
  return %J, %h
}
"""

# Two carried values (h, c), two stacked values, an elementwise gate.
LSTM = """
graph lstm(%xs: f64[4, 2, 3], %h0: f64[2, 5], %c0: f64[2, 5], %W: f64[3, 5], %U: f64[5, 5]) {
  %h, %c, %hs, %cs = scan(%h0, %c0, %xs, %W, %U) {length=4, carried=2, scanned=1, reverse=false} body(%h.in: f64[2, 5], %c.in: f64[2, 5], %x: f64[2, 3], %w: f64[3, 5], %u: f64[5, 5]) {
    %a = matmul(%x, %w) : f64[2, 5]
    %r = matmul(%h.in, %u) : f64[2, 5]
    %g = add(%a, %r) : f64[2, 5]
    %f = sigmoid(%g) : f64[2, 5]
    %i = tanh(%g) : f64[2, 5]
    %fc = mul(%f, %c.in) : f64[2, 5]
    %c.next = add(%fc, %i) : f64[2, 5]
    %tc = tanh(%c.next) : f64[2, 5]
    %h.next = mul(%f, %tc) : f64[2, 5]
    return %h.next, %c.next, %h.next, %c.next
  } : f64[2, 5], f64[2, 5], f64[4, 2, 5], f64[4, 2, 5]
  %e = mul(%hs, %cs) : f64[4, 2, 5]
  %s = sum(%e) {axes=none, keepdims=false} : f64[]
  %t = sum(%c) {axes=none, keepdims=false} : f64[]
  %J = add(%s, %t) : f64[]
  return %J
}
"""

# No sequence: the length alone runs the body, which reads an outer value.
POWER = """
graph power(%v: f64[4], %M: f64[4, 4]) {
  %p, %ps = scan(%v, %M) {length=6, carried=1, scanned=0, reverse=false} body(%p.in: f64[4], %m: f64[4, 4]) {
    %q = matmul(%m, %p.in) : f64[4]
    %p.next = sin(%q) : f64[4]
    %y = mul(%p.next, %p.in) : f64[4]
    return %p.next, %y
  } : f64[4], f64[6, 4]
  %J = sum(%ps) {axes=none, keepdims=false} : f64[]
  return %J
}
"""

# A scan inside a scan's body: each outer step runs an inner recurrence over its row.
NESTED = """
graph nested(%xs: f64[3, 4, 2], %W: f64[2, 2]) {
  %acc0 = cos(%W) : f64[2, 2]
  %acc, %accs = scan(%acc0, %xs, %W) {length=3, carried=1, scanned=1, reverse=false} body(%a.in: f64[2, 2], %row: f64[4, 2], %w: f64[2, 2]) {
    %v0 = sum(%a.in) {axes=[0], keepdims=false} : f64[2]
    %v, %vs = scan(%v0, %row, %w) {length=4, carried=1, scanned=1, reverse=true} body(%v.in: f64[2], %r: f64[2], %ww: f64[2, 2]) {
      %m = matmul(%ww, %v.in) : f64[2]
      %n = mul(%m, %r) : f64[2]
      %v.next = tanh(%n) : f64[2]
      return %v.next, %v.next
    } : f64[2], f64[4, 2]
    %o = unsqueeze(%v) {axes=[0]} : f64[1, 2]
    %p = mul(%a.in, %o) : f64[2, 2]
    %a.next = cos(%p) : f64[2, 2]
    %y = sum(%vs) {axes=[0], keepdims=false} : f64[2]
    return %a.next, %y
  } : f64[2, 2], f64[3, 2]
  %s = sum(%acc) {axes=none, keepdims=false} : f64[]
  %t = sum(%accs) {axes=none, keepdims=false} : f64[]
  %J = mul(%s, %t) : f64[]
  return %J
}
"""

GRAPHS = {"rnn": RNN.replace("REVERSE", "false"), "rnn-reverse": RNN.replace("REVERSE", "true"),
          "lstm": LSTM, "power": POWER, "nested": NESTED}


def feeds_for(graph, rng):
    return {v.name: rng.normal(size=v.type.shape) * 0.7 for v in graph.inputs}


@pytest.fixture(params=list(GRAPHS), ids=list(GRAPHS))
def graph(request):
    return parse_graph(GRAPHS[request.param], f"{request.param}.cir")


# ---- text ---------------------------------------------------------------------------------------

def test_the_text_form_round_trips(graph):
    text = print_graph(graph)
    again = parse_graph(text)
    assert graph_differences(graph, again) == []
    assert print_graph(again) == text
    verify(graph)


def test_locations_inside_a_body_are_read_back():
    graph = parse_graph(GRAPHS["rnn"], "rnn.cir")
    body = graph.nodes[0].attrs["body"]
    assert graph.nodes[0].loc.described() == "rnn.nn:6:5"
    assert [n.loc.described() for n in body.nodes if n.loc] == ["rnn.nn:7:9", "rnn.nn:7:13"]


@pytest.mark.parametrize("edit, message", [
    (("%a = matmul(%x, %wt)", "%a = matmul(%xs, %wt)"), "%xs is not defined before this use"),
    (("%h, %hs = scan", "%h = scan"), "scan gives 2 results; the line names 1"),
    (("} : f64[3, 6], f64[5, 3, 6]", "} : f64[3, 6], f64[4, 3, 6]"),
     "%hs is declared f64[4, 3, 6], but scan gives f64[5, 3, 6]"),
    (("%h.next = tanh(%z) : f64[3, 6]", "%h.next = sum(%z) {axes=[0], keepdims=true} : f64[1, 6]"),
     "scan's carried value 0 enters as f64[3, 6] and leaves the body as f64[1, 6]"),
    (("%xs: f64[5, 3, 4]", "%xs: f64[5, 3, 5]"),
     "scan's operand 1 gives its body f64[3, 5], but body input %x is f64[3, 4]"),
    (("length=5", "length=4"), "scan's sequence 0 is f64[5, 3, 4]; a sequence's leading axis"),
    (("carried=1, scanned=1", "carried=4, scanned=2"), "fewer than its carried (4)"),
    (("%z = add(%s, %bias)", "%z = add(%s, %bias) body() { return }"), "op 'add' has no body"),
])
def test_text_errors_are_located(edit, message):
    text = GRAPHS["rnn"].replace(*edit)
    with pytest.raises(ChainruleError) as error:
        parse_graph(text, "rnn.cir")
    assert message in error.value.message
    assert error.value.loc.file == "rnn.cir" and error.value.loc.line > 1


def test_the_verifier_checks_a_body_in_its_own_scope():
    graph = parse_graph(GRAPHS["rnn"])
    node = graph.nodes[0]
    body = node.attrs["body"]
    inner = body.nodes[2]
    # The body reading the outer graph's %xs directly: a body is closed.
    body.nodes[2] = type(inner)(inner.op, (graph.inputs[0],) + inner.inputs[1:], inner.attrs,
                                inner.outputs, inner.loc)
    problems = verify_all(graph)
    assert any("uses %xs, which the graph does not define" in p for p in problems), problems


def test_the_verifier_refuses_a_body_that_keeps_state():
    graph = parse_graph(GRAPHS["power"])
    graph.nodes[0].attrs["body"].objective = graph.nodes[0].attrs["body"].outputs[0]
    assert any("it has an objective" in p for p in verify_all(graph))


# ---- running ------------------------------------------------------------------------------------

def run_all(graph, feeds):
    return [backend.run(graph, feeds, {}) for backend in (CompiledNumpyBackend(), NumpyBackend())]


def test_both_backends_equal_the_unrolled_graph(graph, rng):
    feeds = feeds_for(graph, rng)
    reference = NumpyBackend().run(unrolled(graph), feeds, {})
    for results in run_all(graph, feeds):
        for name, expected in reference.items():
            np.testing.assert_allclose(results[name], expected, rtol=1e-12, atol=1e-12)


def test_a_reverse_scan_stacks_each_step_at_its_index(rng):
    """Running backwards over xs is running forwards over xs reversed, with the stack
    reversed too."""
    forward = parse_graph(GRAPHS["rnn"])
    backward = parse_graph(GRAPHS["rnn-reverse"])
    feeds = feeds_for(forward, rng)
    flipped = dict(feeds, xs=feeds["xs"][::-1].copy())
    hs_forward, hs_backward = (run_all(g, f)[0] for g, f in ((forward, flipped),
                                                               (backward, feeds)))
    np.testing.assert_allclose(hs_backward["h"], hs_forward["h"], rtol=1e-14)


def test_a_symbolic_length_takes_the_sequences_length(rng):
    text = GRAPHS["rnn"].replace("5, 3, 4]", "T, B, 4]").replace("[3, ", "[B, ")
    text = text.replace("length=5", "length=T").replace("[5, 3, 6]", "[T, B, 6]")
    graph = parse_graph(text)
    for steps, batch in ((2, 1), (7, 3)):
        feeds = {v.name: rng.normal(size=[{"T": steps, "B": batch}.get(d, d)
                                          for d in v.type.shape]) for v in graph.inputs}
        h = feeds["h0"]
        for t in range(steps):
            h = np.tanh(feeds["xs"][t] @ feeds["W"].T + h @ feeds["U"].T + feeds["b"])
        for results in run_all(graph, feeds):
            np.testing.assert_allclose(results["h"], h, rtol=1e-12)


def test_a_failing_step_is_named_with_its_body_node_and_step():
    text = GRAPHS["power"].replace("%q = matmul(%m, %p.in) : f64[4]",
                                   "%q = matmul(%m, %p.in) : f64[4]" + " " * 30 + "# power.nn:3:9")
    runner = compile_graph(parse_graph(text)).scans[0]
    with pytest.raises(ExecutionError) as error:
        runner((np.ones(4), np.ones((4, 5))), 6, False, None)  # M of the wrong shape
    assert error.value.message.startswith("at step 0 of the scan, while computing %q = matmul")
    assert error.value.loc.described() == "power.nn:3:9"


def test_the_python_listing_shows_each_body():
    listing = compile_graph(parse_graph(GRAPHS["nested"])).listing()
    assert listing.count("def run(") == 3
    assert "# SCANS[1]: the body of %acc, %accs, called once per step" in listing


# ---- passes -------------------------------------------------------------------------------------

def test_dce_drops_a_stack_nothing_reads_and_the_body_nodes_only_it_needed():
    text = GRAPHS["lstm"].replace("%J = add(%s, %t) : f64[]", "%J = add(%t, %t) : f64[]")
    graph = run_passes(parse_graph(text), ["dce"])
    scan = graph.nodes[0]
    assert [v.name for v in scan.outputs] == ["h", "c"]
    verify(graph)


def test_dce_drops_outer_values_the_body_no_longer_reads():
    text = GRAPHS["power"].replace("%y = mul(%p.next, %p.in)", "%y = mul(%p.in, %p.in)")
    text = text.replace("%q = matmul(%m, %p.in) : f64[4]\n    %p.next = sin(%q)",
                        "%p.next = sin(%p.in)")
    graph = run_passes(parse_graph(text), ["dce"])
    assert [v.name for v in graph.nodes[0].inputs] == ["v"]
    verify(graph)


def test_simplify_and_cse_run_inside_bodies():
    text = GRAPHS["power"].replace(
        "%y = mul(%p.next, %p.in) : f64[4]",
        "%one = constant() {value=1.0, dtype=f64} : f64[]\n"
        "    %p1 = mul(%p.in, %one) : f64[4]\n"
        "    %p2 = mul(%p.in, %one) : f64[4]\n"
        "    %y = mul(%p.next, %p2) : f64[4]")
    graph = run_passes(parse_graph(text), ["simplify", "cse", "dce"])
    body = graph.nodes[0].attrs["body"]
    assert [n.op for n in body.nodes] == ["matmul", "sin", "mul"]


def test_promotion_to_f64_promotes_bodies():
    graph = parse_graph(GRAPHS["rnn"].replace("f64", "f32"))
    promoted, _ = promote_to_f64(graph)
    verify(promoted)
    assert all(v.type.dtype == "f64" for v in promoted.nodes[0].attrs["body"].inputs)


# ---- autodiff -----------------------------------------------------------------------------------

def gradients(graph, feeds):
    wrt = list(graph.inputs)
    differentiated, grads = autodiff(graph, graph.objective, wrt)
    verify(differentiated)
    runs = [backend.run(differentiated, feeds, {})
            for backend in (CompiledNumpyBackend(), NumpyBackend())]
    return [{name: run[value.name] for name, value in grads.items()} for run in runs]


def test_gradients_equal_the_unrolled_graphs_to_1e_12(graph, rng):
    feeds = feeds_for(graph, rng)
    (expected, _) = gradients(unrolled(graph), feeds)
    for ours in gradients(graph, feeds):
        for name in expected:
            np.testing.assert_allclose(ours[name], expected[name], rtol=1e-12, atol=1e-12,
                                       err_msg=name)


def test_gradients_equal_finite_differences(rng):
    graph = parse_graph(GRAPHS["lstm"])
    feeds = feeds_for(graph, rng)
    (ours, _) = gradients(graph, feeds)
    run = compile_graph(graph)
    for name in ("W", "c0", "xs"):
        for index in list(np.ndindex(feeds[name].shape))[:6]:
            plus, minus = dict(feeds), dict(feeds)
            plus[name] = feeds[name].copy()
            plus[name][index] += 1e-6
            minus[name] = feeds[name].copy()
            minus[name][index] -= 1e-6
            numeric = (run(plus, {})["J"] - run(minus, {})["J"]) / 2e-6
            assert ours[name][index] == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_the_backward_scan_runs_the_other_way_and_saves_what_changes_per_step():
    graph = parse_graph(GRAPHS["rnn"])
    differentiated, _ = autodiff(graph, graph.objective, list(graph.inputs[2:]))
    forward, backward = [n for n in differentiated.nodes if n.op == "scan"]
    assert backward.attrs["reverse"] is True
    saved = [v.name for v in forward.outputs[2:]]
    assert saved == ["h.in.saved", "h.next.saved"]
    # the transposed weights depend on outer values alone: recomputed, not saved
    assert {n.op for n in backward.attrs["body"].nodes} >= {"transpose"}
    # the derivative of tanh(%z) points at tanh's line
    lines = {n.loc.described() for n in backward.attrs["body"].nodes if n.loc}
    assert {"rnn.nn:7:9", "rnn.nn:7:13"} <= lines


def test_second_order_through_a_scan_equals_the_unrolled_graphs(rng):
    """d/dW of (sum of dJ/dW * V): the backward scan differentiated again."""
    graph = parse_graph(GRAPHS["rnn"])
    feeds = feeds_for(graph, rng)

    def second(g):
        W = next(v for v in g.inputs if v.name == "W")
        first, grads = autodiff(g, g.objective, [W])
        builder = GraphBuilder(first)
        product = builder.emit("mul", (grads["W"], grads["W"]))
        total = builder.emit("sum", (product,), {"axes": None, "keepdims": False},
                             name="K")
        first.outputs = [total] + first.outputs
        first.objective = total
        twice, grads2 = autodiff(first, total, [W, next(v for v in g.inputs if v.name == "U")])
        verify(twice)
        out = CompiledNumpyBackend().run(twice, feeds, {})
        return {name: out[v.name] for name, v in grads2.items()}

    ours, expected = second(graph), second(unrolled(graph))
    for name in expected:
        np.testing.assert_allclose(ours[name], expected[name], rtol=1e-11, atol=1e-12)


def test_the_o2_pipeline_keeps_the_gradients(rng):
    graph = parse_graph(GRAPHS["lstm"])
    feeds = feeds_for(graph, rng)
    ctx = PassContext(wrt=["W", "U"])
    plain = run_passes(graph, ["autodiff"], PassContext(wrt=["W", "U"]))
    optimised = run_passes(graph, ["select_mode", "autodiff", "simplify", "cse", "fuse",
                                   "gemm_epilogue", "dce"], ctx)
    a = CompiledNumpyBackend().run(plain, feeds, {})
    b = CompiledNumpyBackend().run(optimised, feeds, {})
    for name in ctx.grads.values():
        np.testing.assert_allclose(b[name], a[name], rtol=1e-12)


# ---- scan_hoist ---------------------------------------------------------------------------------

def test_hoisting_keeps_every_result_and_gradient(graph, rng):
    feeds = feeds_for(graph, rng)
    differentiated = run_passes(graph, ["autodiff"], PassContext(wrt=[v.name for v in
                                                                     graph.inputs]))
    hoisted = run_passes(differentiated, ["scan_hoist", "dce"])
    expected = NumpyBackend().run(differentiated, feeds, {})
    for results in run_all(hoisted, feeds):
        for name in expected:
            np.testing.assert_allclose(results[name], expected[name], rtol=1e-12, atol=1e-12,
                                       err_msg=name)


def test_the_input_projection_and_the_weight_gradients_leave_the_loop():
    graph = parse_graph(GRAPHS["rnn"])
    hoisted = run_passes(graph, ["autodiff", "scan_hoist", "dce"], PassContext(wrt=["W", "U"]))
    forward, backward = [n for n in hoisted.nodes if n.op == "scan"]
    # x @ W^T for all steps before the loop; only h @ U^T stays per step
    assert [n.op for n in forward.attrs["body"].nodes].count("matmul") == 1
    before = hoisted.nodes[:hoisted.nodes.index(forward)]
    assert any(n.op == "matmul" and n.output.type.shape == (5, 3, 6) for n in before)
    # dW and dU: one product over all steps' rows each, after the backward loop
    after = hoisted.nodes[hoisted.nodes.index(backward) + 1:]
    products = [n for n in after if n.op == "matmul"]
    assert sorted(n.inputs[0].type.shape for n in products) == [(4, 15), (6, 15)]
    assert backward.attrs["carried"] == 1  # only dh: the weights' sums left the loop


# ---- regressions: each broke once --------------------------------------------------------------

PASSTHROUGH = """
graph a(%x0: f64[3, 4], %xs: f64[5, 3, 4]) {
  %c, %ys = scan(%x0, %xs) {length=5, carried=1, scanned=1, reverse=false} body(%c.in: f64[3, 4], %x: f64[3, 4]) {
    %y = mul(%c.in, %x) : f64[3, 4]
    return %c.in, %y
  } : f64[3, 4], f64[5, 3, 4]
  %d = neg(%c) : f64[3, 4]
  %z = sin(%d) : f64[3, 4]
  %s = sum(%ys) {axes=none, keepdims=false} : f64[]
  %t = sum(%z) {axes=none, keepdims=false} : f64[]
  %J = add(%s, %t) : f64[]
  return %J
}
"""


def test_a_carried_value_that_leaves_as_it_came_is_not_written_in_place(rng):
    """The final value of a carried value passed through is the caller's array: an in-place
    op after the scan must not write into it."""
    graph = parse_graph(PASSTHROUGH)
    feeds = feeds_for(graph, rng)
    kept = {name: array.copy() for name, array in feeds.items()}
    first = CompiledNumpyBackend().run(graph, feeds, {})["J"]
    for name in feeds:
        np.testing.assert_array_equal(feeds[name], kept[name])
    assert CompiledNumpyBackend().run(graph, feeds, {})["J"] == first


def test_the_first_values_get_gradients_from_the_stacks_alone(rng):
    graph = parse_graph(GRAPHS["rnn"])
    feeds = feeds_for(graph, rng)
    h0 = [v for v in graph.inputs if v.name == "h0"]
    ours, grads = autodiff(graph, graph.objective, h0)
    twin = unrolled(graph)
    reference, expected = autodiff(twin, twin.objective, h0)
    np.testing.assert_allclose(
        CompiledNumpyBackend().run(ours, feeds, {})[grads["h0"].name],
        CompiledNumpyBackend().run(reference, feeds, {})[expected["h0"].name], rtol=1e-12)


SUMMED_PRODUCT_READ_TWICE = """
graph c(%xs: f64[5, 3, 4], %h0: f64[3, 6], %U: f64[6, 6], %acc0: f64[6, 4]) {
  %h, %acc, %qs = scan(%h0, %acc0, %xs, %U) {length=5, carried=2, scanned=1, reverse=false} body(%h.in: f64[3, 6], %acc.in: f64[6, 4], %x: f64[3, 4], %u: f64[6, 6]) {
    %r = matmul(%h.in, %u) : f64[3, 6]
    %h.next = tanh(%r) : f64[3, 6]
    %ht = transpose(%h.in) {perm=[1, 0]} : f64[6, 3]
    %p = matmul(%ht, %x) : f64[6, 4]
    %acc.next = add(%acc.in, %p) : f64[6, 4]
    %ht2 = transpose(%h.in) {perm=[1, 0]} : f64[6, 3]
    %p2 = matmul(%ht2, %x) : f64[6, 4]
    %q = sin(%p2) : f64[6, 4]
    return %h.next, %acc.next, %q
  } : f64[3, 6], f64[6, 4], f64[5, 6, 4]
  %s = sum(%qs) {axes=none, keepdims=false} : f64[]
  %t = sum(%acc) {axes=none, keepdims=false} : f64[]
  %J = add(%s, %t) : f64[]
  return %J, %h
}
"""

TWO_STACKS_OF_ONE_VALUE = """
graph d(%xs: f64[5, 3], %h0: f64[3]) {
  %h, %ys, %zs = scan(%h0, %xs) {length=5, carried=1, scanned=1, reverse=false} body(%h.in: f64[3], %x: f64[3]) {
    %a = mul(%h.in, %x) : f64[3]
    %h.next = tanh(%a) : f64[3]
    %e = exp(%x) : f64[3]
    return %h.next, %e, %e
  } : f64[3], f64[5, 3], f64[5, 3]
  %J = sum(%ys) {axes=none, keepdims=false} : f64[]
  return %J, %ys, %zs, %h
}
"""

A_SIZE_FROM_A_SEQUENCE = """
graph k(%xs: f64[5, N], %h0: f64[3]) {
  %h, %ys = scan(%h0, %xs) {length=5, carried=1, scanned=1, reverse=false} body(%h.in: f64[3], %x: f64[N]) {
    %s = sum(%x) {axes=none, keepdims=false} : f64[]
    %e = exp(%s) : f64[]
    %bt = broadcast_to(%h.in) {shape=[N, 3]} : f64[N, 3]
    %m = mean(%bt) {axes=[0], keepdims=false} : f64[3]
    %a = mul(%m, %e) : f64[3]
    %h.next = tanh(%a) : f64[3]
    %y = exp(%x) : f64[N]
    return %h.next, %y
  } : f64[3], f64[5, N]
  %J = sum(%h) {axes=none, keepdims=false} : f64[]
  return %J
}
"""

A_SCALAR_RECURRENCE = """
graph f(%x: f64[3]) {
  %c = constant() {value=0.5, dtype=f64} : f64[]
  %r = scan(%c) {length=3, carried=1, scanned=0, reverse=false} body(%r.in: f64[]) {
    %r.next = sin(%r.in) : f64[]
    return %r.next
  } : f64[]
  %y = mul(%x, %r) : f64[3]
  %J = sum(%y) {axes=none, keepdims=false} : f64[]
  return %J
}
"""


@pytest.mark.parametrize("text, sizes", [
    (SUMMED_PRODUCT_READ_TWICE, {}), (TWO_STACKS_OF_ONE_VALUE, {}),
    (A_SIZE_FROM_A_SEQUENCE, {"N": 4}), (A_SCALAR_RECURRENCE, {}), (PASSTHROUGH, {})],
    ids=["summed-product-read-twice", "two-stacks-of-one-value", "size-from-a-sequence",
         "scalar-recurrence", "passthrough"])
def test_the_o1_pipeline_keeps_every_output(text, sizes, rng):
    graph = parse_graph(text)
    feeds = {v.name: rng.normal(size=[sizes.get(d, d) for d in v.type.shape])
             for v in graph.inputs}
    expected = NumpyBackend().run(graph, feeds, {})
    optimised = run_passes(graph, ["simplify", "cse", "scan_hoist", "dce"],
                           PassContext(evaluate=evaluate_scalars))
    verify(optimised)
    for results in run_all(optimised, feeds):
        assert set(results) == set(expected)
        for name in expected:
            np.testing.assert_allclose(results[name], expected[name], rtol=1e-12)


def test_labels_read_in_a_body_are_checked_at_every_step():
    graph = parse_graph("""
graph x(%xs: f64[3, 2, 4], %ys: i64[3, 2], %h0: f64[]) {
  %h, %ls = scan(%h0, %xs, %ys) {length=3, carried=1, scanned=2, reverse=false} body(%h.in: f64[], %x: f64[2, 4], %y: i64[2]) {
    %l = cross_entropy(%x, %y) : f64[]
    %h.next = add(%h.in, %l) : f64[]
    return %h.next, %l
  } : f64[], f64[3]
  return %h, %ls
}""")
    feeds = {"xs": np.zeros((3, 2, 4)), "ys": np.array([[0, 1], [2, 3], [-1, 2]]),
             "h0": np.array(0.0)}
    for backend in (CompiledNumpyBackend(), NumpyBackend()):
        with pytest.raises(ChainruleError, match="at step 2 of the scan"):
            backend.run(graph, feeds, {})


def test_a_reversed_scan_of_no_sequence_and_no_carried_value_exports(rng):
    graph = parse_graph("""
graph l(%w: f64[3], %v: f64[T]) {
  %ys = scan(%w) {length=T, carried=0, scanned=0, reverse=true} body(%ww: f64[3]) {
    %p = exp(%ww) : f64[3]
    return %p
  } : f64[T, 3]
  %J = sum(%ys) {axes=none, keepdims=false} : f64[]
  return %J, %ys
}""")
    feeds = {"w": rng.normal(size=3), "v": rng.normal(size=4)}
    expected = NumpyBackend().run(graph, feeds, {})
    results = OnnxRuntimeBackend().run(graph, feeds, {})
    for name in expected:
        np.testing.assert_allclose(results[name], expected[name], rtol=1e-12)


def test_a_nested_scan_that_draws_random_numbers_is_saved_not_recomputed():
    """The backward must see the masks the forward drew: a random inner scan changes from
    step to step even when it reads outer values alone."""
    graph = parse_graph("""
graph d(%xs: f64[3, 4], %h0: f64[4], %w: f64[4]) {
  %h, %hs = scan(%h0, %xs, %w) {length=3, carried=1, scanned=1, reverse=false} body(%h.in: f64[4], %x: f64[4], %ww: f64[4]) {
    %m, %ms = scan(%ww) {length=1, carried=1, scanned=0, reverse=false} body(%m.in: f64[4]) {
      %mask = dropout_mask(%m.in) {p=0.5, seed=0} : f64[4]
      %m.next = mul(%m.in, %mask) : f64[4]
      return %m.next, %mask
    } : f64[4], f64[1, 4]
    %a = mul(%h.in, %m) : f64[4]
    %b = add(%a, %x) : f64[4]
    %h.next = tanh(%b) : f64[4]
    return %h.next, %h.next
  } : f64[4], f64[3, 4]
  %J = sum(%hs) {axes=none, keepdims=false} : f64[]
  return %J
}""")
    feeds = feeds_for(graph, np.random.default_rng(0))
    differentiated, grads = autodiff(graph, graph.objective, [graph.find("w")])
    backend = CompiledNumpyBackend()

    def objective(changed):
        return backend.run(graph, changed, {}, training=True, rng=np.random.default_rng(5))["J"]
    ours = backend.run(differentiated, feeds, {}, training=True,
                       rng=np.random.default_rng(5))[grads["w"].name]
    for index in range(4):
        plus, minus = dict(feeds, w=feeds["w"].copy()), dict(feeds, w=feeds["w"].copy())
        plus["w"][index] += 1e-6
        minus["w"][index] -= 1e-6
        numeric = (objective(plus) - objective(minus)) / 2e-6
        assert ours[index] == pytest.approx(numeric, rel=1e-6, abs=1e-9)
