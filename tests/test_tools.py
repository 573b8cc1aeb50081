"""User-facing tools: gradcheck, --check-numerics and viz pictures."""
import re
import shutil
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

import chainrule
from chainrule.cli import random_inputs
from chainrule.gradcheck import gradcheck
from support.cli import chainrule as run_cli
from support.paths import EXAMPLES, ROOT

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_gradcheck_passes_on_every_example_on_both_backends(path):
    model = chainrule.compile(str(path))
    inputs = random_inputs(model.graph, {}, seed=0, given={})
    rows = gradcheck(model, inputs, backends=("numpy", "onnxruntime"), samples=8)
    modes = [""] + ([" (training)"] if model.graph.updates else [])  # batch_norm: both modes
    assert {row.backend for row in rows} == {b + m for b in ("numpy", "onnxruntime") for m in modes}
    assert {row.param for row in rows} == {v.name for v in model.graph.trainable_values()}
    failed = [row for row in rows if not row.passed]
    assert not failed, failed


def test_gradcheck_command_prints_a_table_and_fails_on_a_wrong_rule(monkeypatch):
    result = run_cli("gradcheck", "examples/mlp.nn", "--random-inputs")
    assert result.returncode == 0, result.stderr
    assert re.search(r"onnxruntime\s+W1\s+20\s+\S+\s+\S+\s+pass", result.stdout)
    assert "4 passed, 0 failed" in result.stdout

    from chainrule.passes import autodiff_rules
    wrong = lambda bw, g, x, out: (bw.emit("mul", g, out),)  # noqa: E731  tanh' is not tanh
    monkeypatch.setitem(autodiff_rules.VJP_RULES, "tanh", wrong)
    source = "model m(x: f32[4, 3]) {\n  param W: f32[3] = normal(0.0, 1.0)\n" \
             "  J = sum(tanh(x * W))\n  return J\n}\n"
    model = chainrule.compile(source=source)
    rows = gradcheck(model, random_inputs(model.graph, {}, 0, {}))
    assert not rows[0].passed


def test_check_numerics_names_the_first_bad_node(tmp_path):
    model_file = tmp_path / "nan.nn"
    model_file.write_text("model m(x: f32[3]) {\n  param W: f32[3] = ones()\n"
                          "  a = log(x * W)\n  b = exp(a)\n  J = sum(b)\n  return J\n}\n")
    np.save(tmp_path / "x.npy", np.array([1.0, -1.0, 2.0], np.float32))
    for command in ("run", "grad"):
        result = run_cli(command, model_file, "--input", f"x={tmp_path / 'x.npy'}",
                         "--check-numerics")
        assert result.returncode == 1
        assert result.stderr.startswith(f"{model_file}:3:7: error: %a = log(...) produced NaN")
    unchecked = run_cli("run", model_file, "--input", f"x={tmp_path / 'x.npy'}")
    assert unchecked.returncode == 0  # without the flag NaNs flow through


def svg_shapes(path):
    tree = ElementTree.parse(path)
    nodes = [g for g in tree.iter(f"{SVG}g") if g.get("class") == "node"]
    circles = sum(1 for g in nodes if next(g.iter(f"{SVG}ellipse"), None) is not None)
    boxes = sum(1 for g in nodes if next(g.iter(f"{SVG}polygon"), None) is not None)
    return circles, boxes  # constants are rounded boxes (paths), counted in neither


def test_viz_writes_dot_without_graphviz_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    from chainrule.viz import render, to_dot
    model = chainrule.compile(str(ROOT / "examples" / "mlp.nn"))
    note = render(to_dot(model.graph), tmp_path / "mlp.svg")
    assert "apt-get install graphviz" in note
    dot_text = (tmp_path / "mlp.dot").read_text()
    assert dot_text.count("shape=circle") == 13  # the ops; constants are drawn as values


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is installed by .ci/run")
def test_viz_svg_has_a_circle_per_op_and_a_box_per_value(tmp_path):
    forward = tmp_path / "mlp.svg"
    result = run_cli("viz", "examples/mlp.nn", "-o", forward)
    assert result.returncode == 0, result.stderr
    # 16 nodes: 13 ops as circles and 3 constants; boxes for x, y, W1, W2 and the 13 results
    assert svg_shapes(forward) == (13, 17)
    backward = tmp_path / "mlp_grad.svg"
    assert run_cli("viz", "examples/mlp.nn", "--grad", "-o", backward).returncode == 0
    circles, boxes = svg_shapes(backward)
    model = chainrule.compile(str(ROOT / "examples" / "mlp.nn"))
    graph, _ = model.grad_graph()
    ops = [n for n in graph.nodes if n.op != "constant"]
    assert (circles, boxes) == (len(ops), len(ops) + 4)
    text = backward.read_text()
    assert "stroke-dasharray" in text  # dashed edges: forward values the backward graph reuses
