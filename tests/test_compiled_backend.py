"""The compiled numpy backend (the default) against the numpy interpreter it replaces.

Both call the same kernels, so every op case's gradient graph and every example's must give
identical arrays, at -O0 and -O2. Calling one compiled function twice must give the same
results again: reusing dying buffers in place must never write into an input, a param or an
output handed out by an earlier call.
"""
import numpy as np
import pytest

import chainrule
from chainrule.api import evaluate_scalars
from chainrule.backends import get_backend
from chainrule.backends.numpy_backend import NumpyBackend
from chainrule.backends.numpy_compiled import (FRESH_RESULT_OPS, CompiledNumpyBackend,
                                               compile_graph, generate_source, plan_memory)
from chainrule.backends.numpy_kernels import KERNELS
from chainrule.cli import random_inputs
from chainrule.ir.types import numpy_dtype
from chainrule.passes import autodiff
from chainrule.passes.manager import PassContext, pipeline, run_passes
from op_cases import CASES, draw, in_dtype, scalar_objective_graph
from support.backend_checks import assert_identical, check_against_interpreter_twice, copies
from support.paths import EXAMPLES, ROOT

LEVELS = ("O0", "O2")


def case_grad_graph(case, level: str):
    graph, inputs, objective = scalar_objective_graph(case)
    wrt = [v for v in inputs if v.type.dtype in ("f32", "f64")]
    grad_graph, _ = autodiff(graph, objective, wrt)
    if level != "O0":
        grad_graph = run_passes(grad_graph, pipeline(None, level),
                                PassContext(evaluate=evaluate_scalars))
    return grad_graph, inputs


CASE_LEVELS = [pytest.param(case, level, id=f"{case.id}-{level}")
               for case in CASES for level in LEVELS]


@pytest.mark.parametrize("dtype", ["f64", "f32"])
@pytest.mark.parametrize("case, level", CASE_LEVELS)
def test_op_case_gradient_graph(case, dtype, level):
    case = in_dtype(case, dtype)
    rng = np.random.default_rng(2)
    graph, inputs = case_grad_graph(case, level)
    feeds = {v.name: draw(arg, rng) for v, arg in zip(inputs, case.args, strict=True)}
    weight = graph.find("weight").type
    feeds["weight"] = rng.normal(size=weight.shape).astype(numpy_dtype(weight.dtype))
    check_against_interpreter_twice(graph, feeds, {})


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_gradient_graph(path, level):
    model = chainrule.compile(str(path))
    graph, _ = model.compile_graph(grad=True, opt_level=level)
    feeds = random_inputs(graph, {"B": 5, "T": 3}, seed=0, given={})
    params = copies(model.params)
    convolutional = any(node.op in ("conv", "conv_transpose") for node in graph.nodes)
    check_against_interpreter_twice(graph, feeds, params, rtol=1e-6 if convolutional else 0.0)


def test_the_numpy_backend_is_the_compiled_one():
    assert isinstance(get_backend("numpy"), CompiledNumpyBackend)


def test_generated_code_frees_and_reuses_buffers():
    model = chainrule.compile(str(ROOT / "examples" / "mlp.nn"))
    graph, _ = model.compile_graph(grad=True)
    plan = plan_memory(graph)
    source, line_nodes = generate_source(graph, plan)
    assert "    del " in source
    assert ", out=" in source
    assert len(line_nodes) == len(source.splitlines())
    # Only the graph's own intermediates are overwritten, never what the caller passed in.
    caller_owned = set(graph.inputs) | set(graph.param_values())
    assert plan.in_place and not caller_owned & set(plan.in_place.values())
    assert not set(graph.outputs) & set(plan.in_place.values())


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_only_kernels_returning_new_arrays_are_trusted_as_fresh(case):
    """The memory plan may overwrite a dying value only if its op is in FRESH_RESULT_OPS; any
    other op's result is treated as a view of its inputs. A kernel listed there must return a
    new, writable array."""
    graph, _, _ = scalar_objective_graph(case)
    node = next(n for n in graph.nodes if n.outputs[0].name == "out")  # attrs with defaults
    rng = np.random.default_rng(0)
    arrays = [np.asarray(draw(arg, rng)) for arg in case.args]
    result = np.asarray(KERNELS[node.op](*arrays, **node.attrs))
    if case.op in FRESH_RESULT_OPS:
        assert not any(np.shares_memory(result, array) for array in arrays), case.op
        assert result.flags.writeable, case.op


@pytest.mark.parametrize("level", ["O0", "O1", "O2"])
def test_views_of_inputs_are_never_overwritten(level):
    # broadcast_to returns a read-only view of x; from -O1 on, the cotangent of reshape(x) is
    # w itself, so dJ/dx's first term is a view of the caller's w.
    model = chainrule.compile(source="""model m(x: f64[2, 3], w: f64[6], y: f64[4, 2, 3]) {
        b = broadcast_to(x, (4, 2, 3))
        J = sum(tanh(x)) + sum(reshape(x, (6,)) * w) + sum(b * y)
        return J
    }""")
    graph, _ = model.compile_graph(grad=True, wrt=["x"], opt_level=level)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(2, 3)), "w": rng.normal(size=6),
             "y": rng.normal(size=(4, 2, 3))}
    check_against_interpreter_twice(graph, feeds, {})


def test_what_a_backend_compiles_is_freed_with_its_graph():
    import gc
    import weakref

    backends = [get_backend("numpy"), get_backend("onnxruntime")]
    batch = {"x": np.zeros((2, 784), np.float32), "y": np.zeros(2, np.int64)}
    graphs = []
    for _ in range(3):
        model = chainrule.compile(str(ROOT / "examples" / "mlp.nn"))
        graph, _ = model.compile_graph()
        for backend in backends:
            backend.run(graph, batch, model.params)
        graphs.append(weakref.ref(graph))
        del model, graph
    gc.collect()
    assert all(ref() is None for ref in graphs)


# ---- values that follow from shapes alone ------------------------------------------------------

SHAPED = """model m(x: f32[B, 3], y: i64[B]) {
    param W: f32[4, 3] = normal(0.0, 0.5)
    L = cross_entropy(x @ W.T, y)
    return L
}"""
SHAPE_AS_OUTPUT = """model m(x: f32[B, 3], y: i64[B]) {
    n = numel(y)
    return sum(x) / n, n
}"""


def test_shape_values_are_computed_once_per_shape_signature():
    model = chainrule.compile(source=SHAPED)
    graph, _ = model.grad_graph(opt_level="O2")
    compiled = compile_graph(graph)
    assert "SHAPE_VALUES.get(shapes)" in compiled.source
    cache = compiled.quiet_function.__wrapped__.__globals__["SHAPE_VALUES"]
    rng = np.random.default_rng(0)
    batches = [{"x": rng.normal(size=(rows, 3)).astype(np.float32),
                "y": rng.integers(0, 4, rows)} for rows in (4, 6, 4)]
    for feeds in batches:
        expected = NumpyBackend().run(graph, feeds, model.params)
        assert_identical(compiled(feeds, model.params), expected, f"B={len(feeds['y'])}")
    assert len(cache) == 2  # B=4 and B=6


def test_a_shape_value_that_is_an_output_is_computed_each_call():
    """The caller may write into an output: a cached array would carry that to the next call."""
    model = chainrule.compile(source=SHAPE_AS_OUTPUT)
    graph, _ = model.compile_graph(opt_level="O2")
    compiled = compile_graph(graph)
    assert "SHAPE_VALUES" not in compiled.source
    feeds = {"x": np.zeros((2, 3), np.float32), "y": np.array([0, 1])}
    first = compiled(feeds, model.params)
    first["n"][...] = 99
    assert compiled(feeds, model.params)["n"] == 2


def test_a_numel_of_an_intermediate_reads_an_input_of_its_shape():
    """Its operand is computed after the block runs, and may die at the numel."""
    model = chainrule.compile(source="""model m(x: f32[B, 3], t: f32[B, 3]) {
    d = x * t
    n = numel(d)
    return sum(x) / n
}""")
    graph, _ = model.compile_graph(opt_level="O2")
    compiled = compile_graph(graph)
    assert "K_numel(v0" in compiled.source and "SHAPE_VALUES" in compiled.source
    for rows in (2, 5):
        feeds = {"x": np.ones((rows, 3), np.float32), "t": np.ones((rows, 3), np.float32)}
        assert_identical(compiled(feeds, {}), NumpyBackend().run(graph, feeds, {}))
