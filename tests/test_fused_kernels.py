"""Fused elementwise kernels: the group pass (-O2) and the numpy backend's two ways of running a
group, one numba kernel (when numba is installed) and numpy node by node (the fallback).

Both paths run in every suite run: `path` sets CHAINRULE_FUSED_KERNELS, and the size thresholds
drop to 1 so that the small test shapes use kernels too. Each path is checked against the
numpy interpreter, which ignores groups, on every example and on train steps.
"""
import numpy as np
import onnx
import pytest

import chainrule
from chainrule.backends import fused_kernels
from chainrule.backends.numpy_compiled import compile_graph
from chainrule.cli import random_inputs
from chainrule.ir import print_graph
from chainrule.ir.text import parse_graph
from chainrule.ir.verify import verify
from chainrule.passes.optimizers import OptimizerSpec
from support.backend_checks import check_against_interpreter_twice, copies
from support.paths import EXAMPLES, ROOT

HAS_NUMBA = fused_kernels.numba_installed()
PATHS = [pytest.param("fused", marks=pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")),
         "numpy"]
# exp, log and tanh stay on numpy, so the kernels only add, multiply, divide, compare and take
# square roots and powers: equal to numpy's up to the last bit of a power.
RTOL = 1e-6


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    monkeypatch.setenv("CHAINRULE_FUSED_KERNELS", "1" if request.param == "fused" else "0")
    monkeypatch.setattr(fused_kernels, "KERNEL_MIN_ELEMENTS", 1)
    return request.param


def lecture_mlp():
    return chainrule.compile(str(ROOT / "examples" / "mlp.nn"))


def group_names(graph):
    return [[node.output.name for node in group] for group in graph.groups]


MOMENTUM = OptimizerSpec("sgd", momentum=0.9, weight_decay=0.01)


def test_the_momentum_step_groups_the_velocity_and_the_decayed_update():
    graph, _ = lecture_mlp().train_step_graph(MOMENTUM, "O2")
    assert group_names(graph) == [
        ["h"], ["dJ/dz"],
        ["mul", "opt.velocity.W1.next"], ["mul.1", "mul.3", "add.1", "W1.next"],
        ["mul.4", "opt.velocity.W2.next"], ["mul.5", "mul.7", "add.2", "W2.next"]]
    verify(graph)


def test_plain_sgd_leaves_no_update_to_group():
    """Its whole update folds into the weight gradient's product (gemm_epilogue.py)."""
    graph, _ = lecture_mlp().train_step_graph(OptimizerSpec("sgd"), "O2")
    assert group_names(graph) == [["h"], ["dJ/dz"]]


def test_a_value_read_twice_ends_a_group():
    """Adam's decayed gradient feeds both moments: each moment's group starts after it."""
    graph, _ = lecture_mlp().train_step_graph(OptimizerSpec("adam", weight_decay=0.01), "O2")
    groups = group_names(graph)
    results = [group[-1] for group in groups]
    assert results[2:5] == ["opt.m.W1.next", "opt.v.W1.next", "W1.next"]
    read_twice = [node.inputs[1].name for node in graph.nodes
                  if node.outputs[0].name == "mul.2"]
    assert read_twice and not any(read_twice[0] in group for group in groups)
    verify(graph)


def test_a_broken_group_fails_verification():
    graph, _ = lecture_mlp().train_step_graph(MOMENTUM, "O2")
    group = graph.groups[3]
    graph.groups[3] = group[1:] + group[:1]  # no longer consecutive, result not last
    with pytest.raises(Exception, match="group ending at"):
        verify(graph)


def test_groups_are_an_annotation_the_text_and_onnx_forms_ignore():
    model = lecture_mlp()
    graph, _ = model.train_step_graph(OptimizerSpec("sgd"), "O2")
    assert graph.groups
    text = print_graph(graph)
    assert print_graph(parse_graph(text)) == text
    assert not graph.copy().groups  # a pass editing a copy cannot leave a stale group
    exported = model._train_step_onnx(OptimizerSpec("sgd"), 21, "O2")
    onnx.checker.check_model(exported)
    assert {node.domain for node in exported.graph.node} == {""}  # standard ops only


def test_generated_code_calls_a_kernel_with_a_fallback(path):
    graph, _ = lecture_mlp().train_step_graph(OptimizerSpec("sgd"), "O2")
    source = compile_graph(graph).source
    if path == "fused":
        assert "fused_" in source and "else:" in source  # %h's size depends on B
    else:
        assert "fused_" not in source


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_examples_match_the_interpreter(example, path):
    model = chainrule.compile(str(example))
    graph, _ = model.compile_graph(grad=True, opt_level="O2")
    feeds = random_inputs(graph, {"B": 5, "T": 3}, seed=0, given={})
    check_against_interpreter_twice(graph, feeds, copies(model.params), rtol=RTOL)


OPTIMIZERS = [OptimizerSpec("sgd"), OptimizerSpec("sgd", momentum=0.9, weight_decay=1e-3),
              OptimizerSpec("sgd", momentum=0.9, nesterov=True),
              OptimizerSpec("adam", weight_decay=0.01), OptimizerSpec("adamw", weight_decay=0.1)]


@pytest.mark.slow
@pytest.mark.parametrize("spec", OPTIMIZERS, ids=lambda s: s.kind)
def test_train_steps_match_the_interpreter(spec, path):
    check_train_step(spec)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.parametrize("spec", OPTIMIZERS[:4], ids=lambda s: s.kind)
def test_multithreaded_kernels_match_the_interpreter(spec, monkeypatch):
    monkeypatch.setenv("CHAINRULE_FUSED_KERNELS", "1")
    monkeypatch.setattr(fused_kernels, "KERNEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(fused_kernels, "PARALLEL_MIN_ELEMENTS", 1)
    check_train_step(spec)


def check_train_step(spec):
    model = lecture_mlp()
    graph, interface = model.train_step_graph(spec, "O2")
    feeds = random_inputs(graph, {"B": 7}, seed=1, given={})
    feeds["opt.lr"] = np.asarray(0.05, np.float32)
    if "opt.step" in feeds:
        feeds["opt.step"] = np.asarray(2.0, np.float32)
    for name in interface.state:
        if name.startswith("opt.v."):
            feeds[name] = np.abs(feeds[name])  # Adam's second moment is never negative
    check_against_interpreter_twice(graph, feeds, copies(model.params), rtol=RTOL)


def test_a_donated_param_takes_its_own_update(path):
    """With params donated (the Trainer), the update kernel may write into the param."""
    model = lecture_mlp()
    graph, _ = model.train_step_graph(OptimizerSpec("sgd", weight_decay=1e-3), "O2")
    feeds = random_inputs(graph, {"B": 7}, seed=1, given={})
    feeds["opt.lr"] = np.asarray(0.05, np.float32)
    expected = compile_graph(graph)(feeds, copies(model.params))
    donated = compile_graph(graph, donate_params=True)(feeds, copies(model.params))
    for name, value in expected.items():
        np.testing.assert_allclose(donated[name], value, rtol=RTOL, atol=0)


@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
@pytest.mark.skipif(not HAS_NUMBA, reason="needs numba")
def test_small_static_groups_stay_on_numpy(monkeypatch):
    monkeypatch.setenv("CHAINRULE_FUSED_KERNELS", "1")
    monkeypatch.setattr(fused_kernels, "KERNEL_MIN_ELEMENTS", 10**9)
    graph, _ = lecture_mlp().train_step_graph(OptimizerSpec("sgd"), "O2")
    source = compile_graph(graph).source
    assert "# %W1.next (fused" not in source  # 256 x 784 elements, fewer than the threshold
    assert "# %h (fused)" in source  # B x 256: a size test at run time
