"""A cross-entropy and its gradient share one log_softmax at -O2, and kernels leave the label
check to the feeds check when the labels are a graph input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import chainrule
from chainrule.backends.numpy_compiled import compile_graph
from chainrule.ir import ChainruleError

from support.numeric import assert_close

MLP = str(Path(__file__).parent.parent / "examples" / "mlp.nn")


def ops_of(graph) -> list[str]:
    return [node.op for node in graph.nodes]


def test_the_loss_and_its_gradient_compute_one_log_softmax():
    graph, _ = chainrule.compile(MLP).grad_graph(opt_level="O2")
    ops = ops_of(graph)
    assert ops.count("log_softmax") == 1 and "softmax" not in ops
    assert {"nll", "cross_entropy_grad_from_log_probs"} <= set(ops)
    assert "cross_entropy" not in ops and "cross_entropy_grad" not in ops


def test_a_loss_without_its_gradient_stays_one_op():
    graph, _ = chainrule.compile(MLP).compile_graph(opt_level="O2")
    assert "cross_entropy" in ops_of(graph) and "nll" not in ops_of(graph)


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
def test_shared_log_softmax_gives_the_unfused_numbers(backend):
    model = chainrule.compile(MLP, seed=2).to_f64()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(16, 784)), "y": rng.integers(0, 10, 16)}
    fused = model.grad(backend=backend, **feeds)
    plain = model.grad(backend=backend, opt_level="O0", **feeds)
    for name, value in plain.items():
        assert_close(fused[name], value, 1e-12, what=name)


def test_labels_from_an_input_are_checked_once_by_the_feeds_check():
    graph, _ = chainrule.compile(MLP).grad_graph(opt_level="O2")
    source = compile_graph(graph).source
    assert source.count("checked=True") == 2  # the loss and its gradient
    model = chainrule.compile(MLP)
    with pytest.raises(ChainruleError, match=r"input 'y' holds 10, out of range"):
        model.grad(x=np.zeros((2, 784), np.float32), y=np.array([0, 10]))


def test_computed_labels_are_still_checked_by_the_kernels():
    model = chainrule.compile(source="""model m(x: f32[B, 3], z: f32[B]) {
    y = i64(z)
    return cross_entropy(x, y)
}""")
    source = compile_graph(model.grad_graph(wrt=["x"], opt_level="O2")[0]).source
    assert "checked=True" not in source and "K_nll(" in source
    with pytest.raises(ChainruleError, match=r"labels must lie in \[0, 3\)"):
        model.grad(wrt=["x"], x=np.zeros((2, 3), np.float32), z=np.array([5.0, 1.0], np.float32))
