"""GEMM epilogues: a weight's update folded into its gradient's matrix product (gemm_acc), which
the numpy backend writes into the weight's own buffer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import chainrule
from chainrule.backends.numpy_compiled import compile_graph
from chainrule.backends.numpy_kernels import KERNELS
from chainrule.passes.optimizers import OptimizerSpec
from chainrule.train import TrainConfig, Trainer

from support.numeric import assert_close

EXAMPLES = Path(__file__).parent.parent / "examples"
MLP = str(EXAMPLES / "mlp.nn")


def ops_of(graph) -> list[str]:
    return [node.op for node in graph.nodes]


# ---- the kernel -------------------------------------------------------------------------------

# (m, k, n): alpha scales a, b or the product, whichever is smallest
@pytest.mark.parametrize("m, k, n", [(2, 2, 9), (9, 2, 2), (2, 9, 2), (3, 5, 4)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True),
                                              (True, True)])
def test_gemm_acc_is_alpha_product_plus_beta_c(m, k, n, dtype, trans_a, trans_b):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.normal(size=(m, n)).astype(dtype)
    expected = -0.5 * ((a.T if trans_a else a) @ (b.T if trans_b else b)) + 0.75 * c
    result = KERNELS["gemm_acc"](a, b, c.copy(), dtype(-0.5), dtype(0.75), trans_a, trans_b)
    assert result.dtype == dtype
    assert_close(result, expected, 1e-5 if dtype == np.float32 else 1e-12)


def test_gemm_acc_overwrites_c_only_when_told():
    rng = np.random.default_rng(1)
    a, b, c = rng.normal(size=(3, 5)), rng.normal(size=(5, 4)), rng.normal(size=(3, 4))
    kept = c.copy()
    fresh = KERNELS["gemm_acc"](a, b, c, 1.0, 2.0, False, False)
    assert not np.shares_memory(fresh, c) and np.array_equal(c, kept)
    into = KERNELS["gemm_acc"](a, b, c, 1.0, 2.0, False, False, overwrite=True)
    assert into is c
    assert_close(c, a @ b + 2.0 * kept, 1e-12)


def test_gemm_acc_takes_operands_in_any_memory_order():
    rng = np.random.default_rng(2)
    a = np.asfortranarray(rng.normal(size=(3, 5)))
    b = rng.normal(size=(4, 10))[:, ::2]  # neither C- nor Fortran-ordered
    c = rng.normal(size=(3, 4))
    expected = a @ b.T + c
    assert_close(KERNELS["gemm_acc"](a, b, c, 1.0, 1.0, False, True), expected, 1e-12)


# ---- the pass ---------------------------------------------------------------------------------

def test_the_lecture_step_updates_each_weight_with_one_gemm_acc_in_place():
    model = chainrule.compile(MLP)
    step, interface = model.train_step_graph(OptimizerSpec("sgd"), "O2")
    updates = {node.outputs[0].name: node for node in step.nodes if node.op == "gemm_acc"}
    assert set(updates) == set(interface.params.values()) == {"W1.next", "W2.next"}
    # Weight decay, the learning rate and the subtraction all went into alpha and beta:
    # nothing of W1's size is computed besides the product.
    sized_like_w1 = [node.op for node in step.nodes
                     if node.outputs[0].type == model.graph.param_values()[0].type]
    assert sized_like_w1 == ["gemm_acc"]
    source = compile_graph(step, donate_params=True).source
    assert source.count("overwrite=True") == 2


def test_a_forward_product_plus_an_array_folds():
    model = chainrule.compile(source="""
model m(x: f32[B, 3], t: f32[B, 2]) {
    param W: f32[2, 3] = normal(0.0, 0.1)
    d = x @ W.T - t
    return sum(d * d)
}""")
    graph, _ = model.compile_graph(opt_level="O2")
    assert ops_of(graph).count("gemm_acc") == 1 and "gemm" not in ops_of(graph)


def test_a_product_read_twice_is_not_folded():
    """Folding it would compute the product twice."""
    model = chainrule.compile(source="""
model m(x: f32[B, 3], t: f32[B, 2]) {
    param W: f32[2, 3] = normal(0.0, 0.1)
    p = x @ W.T
    return sum(p * p) + sum(p - t)
}""")
    graph, _ = model.compile_graph(opt_level="O2")
    assert "gemm_acc" not in ops_of(graph)


def test_a_broadcast_operand_is_not_folded():
    model = chainrule.compile(source="""
model m(x: f32[B, 3], t: f32[B, 2]) {
    param W: f32[2, 3] = normal(0.0, 0.1)
    param b: f32[2] = zeros()
    d = x @ W.T + b - t
    return sum(d * d)
}""")
    graph, _ = model.compile_graph(opt_level="O2")
    assert "gemm_acc" not in ops_of(graph)


@pytest.mark.parametrize("spec", [
    OptimizerSpec("sgd"), OptimizerSpec("sgd", weight_decay=0.01),
    OptimizerSpec("sgd", momentum=0.9), OptimizerSpec("sgd", momentum=0.9, nesterov=True),
    OptimizerSpec("adamw", weight_decay=0.1)], ids=lambda spec: repr(spec)[14:60])
@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_folded_steps_train_as_the_unfolded_ones(spec, backend):
    rng = np.random.default_rng(3)
    data = {"x": rng.normal(size=(16, 784)), "y": rng.integers(0, 10, 16)}
    params = {}
    for level in ("O1", "O2"):
        trainer = Trainer(chainrule.compile(MLP, seed=4).to_f64(),
                          TrainConfig(optimizer=spec, opt_level=level, backend=backend))
        for _ in range(3):
            trainer.train_step(data, 0.05)
        params[level] = {name: np.array(value) for name, value in trainer.params.items()}
    # The weight-decay term of the lecture's objective folds into every gradient; SGD without
    # momentum folds the update too.
    folded = {node.outputs[0].name for node in trainer.step_graph.nodes
              if node.op == "gemm_acc"}
    assert ("W1.next" in folded) == (spec.kind == "sgd" and not spec.momentum)
    assert folded
    for name, value in params["O1"].items():
        assert_close(params["O2"][name], value, 1e-10, what=name)  # Adam amplifies rounding


def test_a_chain_folds_when_the_longer_chain_around_it_cannot():
    model = chainrule.compile(source="""
model m(a: f32[4, 3], b: f32[4, 5]) {
    param W: f32[3, 5] = normal(0.0, 0.1)
    param V: f32[3, 5] = normal(0.0, 0.1)
    g = a.T @ b + 0.1 * W
    r = g + V
    return sum(r * r)
}""")
    graph, _ = model.compile_graph(opt_level="O2")
    assert ops_of(graph).count("gemm_acc") == 1
    rng = np.random.default_rng(5)
    feeds = {"a": rng.normal(size=(4, 3)).astype(np.float32),
             "b": rng.normal(size=(4, 5)).astype(np.float32)}
    assert_close(model.run(**feeds)["sum"], model.run(opt_level="O0", **feeds)["sum"], 1e-5)


def test_a_plain_matmul_folds_too():
    model = chainrule.compile(source="""
model m(h: f32[B, 4], x: f32[B, 3]) {
    param W: f32[4, 3] = normal(0.0, 0.5)
    return sum(tanh(h @ W + x))
}""")
    graph, _ = model.compile_graph(opt_level="O2")
    assert "gemm_acc" in ops_of(graph) and "matmul" not in ops_of(graph)
    rng = np.random.default_rng(6)
    feeds = {"h": rng.normal(size=(5, 4)), "x": rng.normal(size=(5, 3))}
    model = model.to_f64()
    for backend in ("numpy", "onnxruntime"):
        assert_close(model.run(backend=backend, **feeds)["sum"],
                     model.run(backend=backend, opt_level="O0", **feeds)["sum"], 1e-12)
