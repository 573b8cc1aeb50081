"""The interactive page's data (`chainrule viz --html`): what ties each backward node to the
forward node and rule that wrote it, the chain rule's formulas, groups, values, and the file
written. The page in a browser is tests/test_page_browser.py's."""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

import chainrule.api as api
from chainrule.page.graph_document import graph_page_data
from chainrule.page.html import SCRIPTS, embedded_json, page_html
from chainrule.page.values import summary
from chainrule.passes import gradient_prefix
from support.cli import chainrule
from support.paths import EXAMPLES, ROOT

EXAMPLE_DIR = ROOT / "examples"
MLP = EXAMPLE_DIR / "mlp.nn"


def page_data(path, **options) -> dict:
    model = api.compile(path)
    return graph_page_data(model, **options)


def view_of(data, key="O0") -> dict:
    return next(view for view in data["graph"]["views"] if view["key"] == key)


def by_name(view) -> dict:
    return {node["name"]: node for node in view["nodes"]}


def embedded(html: str) -> dict:
    found = re.search(r'<script type="application/json" id="chainrule-data">(.*?)</script>',
                      html, re.S)
    return json.loads(found.group(1))


# ---- what autodiff records ---------------------------------------------------------------------

def test_every_backward_value_of_the_lecture_mlp_knows_the_forward_node_that_wrote_it():
    graph, _ = api.compile(MLP).compile_graph(grad=True)
    prefix = gradient_prefix(graph.objective)
    backward = [out for node in graph.nodes for out in node.outputs
                if out.name.startswith(prefix)]
    assert backward and all(out in graph.derivations for out in backward)
    origin = {out.name: graph.derivations[out] for out in backward}
    assert origin["dJ/dh"].kind == "rule" and origin["dJ/dh"].node.outputs[0].name == "o"
    assert origin["dJ/dz"].node.op == "relu"
    assert origin["dJ/dL.softmax"].node.op == "cross_entropy"
    assert origin["dJ/dW1"].kind == "sum" and origin["dJ/dW1"].value.name == "W1"
    assert origin["dJ/dJ"].kind == "seed"


def test_cotangents_name_each_forward_values_summed_gradient():
    graph, _ = api.compile(MLP).compile_graph(grad=True)
    cotangent = {value.name: total.name for value, total in graph.cotangents.items()}
    assert cotangent["h"] == "dJ/dh" and cotangent["W1"] == "dJ/dW1"
    assert cotangent["L"] == "dJ/dJ"  # J = L + s passes J's cotangent on unchanged


def test_the_recorded_origins_survive_the_rest_of_the_pipeline():
    data = page_data(MLP, opt_level="O2")
    nodes = by_name(view_of(data, "O2"))
    assert nodes["dJ/dh"]["origin"] == nodes["o"]["id"]


# ---- the chain rule, as the lecture writes it ---------------------------------------------------

LECTURE_STEPS = [
    "∂J/∂J = 1",
    "∂J/∂L = ∂J/∂J = 1",
    "∂J/∂o = (softmax(o) − one_hot(y)) · ∂J/∂L / numel(y)",
    "∂J/∂h = ∂J/∂o W2",
    "∂J/∂z = ∂J/∂h ⊙ [z > 0]",
    "∂J/∂W1.T = xᵀ ∂J/∂z",
    "∂J/∂W1 = ∂J/∂pow ⊙ 2 · W1 + (∂J/∂W1.T)ᵀ",
]


def test_the_chain_from_J_back_to_W1_is_the_lectures():
    view = view_of(page_data(MLP))
    chain = next(p for p in view["params"] if p["name"] == "W1")
    assert [step["formula"] for step in chain["steps"]] == LECTURE_STEPS
    nodes = {node["id"]: node for node in view["nodes"]}
    assert [nodes[step["value"]]["name"] for step in chain["steps"]] == \
        ["J", "L", "o", "h", "z", "W1.T", "W1"]
    assert nodes[chain["steps"][-1]["node"]]["name"] == "dJ/dW1" == nodes[chain["gradient"]]["name"]
    assert "relu's derivative rule" in chain["steps"][4]["why"]


def test_a_backward_node_shows_its_origin_rule_and_formula_and_a_forward_node_its_terms():
    view = view_of(page_data(MLP))
    nodes = by_name(view)
    dh = nodes["dJ/dh"]
    assert dh["side"] == "backward" and dh["origin"] == nodes["o"]["id"]
    assert dh["rule"]["name"] == "matmul's derivative rule"
    assert re.fullmatch(r"chainrule/passes/autodiff_rules\.py:\d+", dh["rule"]["where"])
    assert '@vjp("matmul")' in dh["rule"]["text"]
    assert dh["formula"] == "∂J/∂h = ∂J/∂o W2"
    assert dh["loc"] == {"line": 9, "col": 9, "iteration": ""}
    relu_terms = {nodes_id for nodes_id in nodes["h"]["terms"]}
    assert nodes["dJ/dz"]["id"] in relu_terms and nodes["dJ/dh.greater"]["id"] in relu_terms
    assert nodes["h"]["gradient"] == dh["id"]
    assert nodes["z"]["side"] == "forward" and nodes["z"]["ir"].startswith("%z = matmul(%x, %W1.T)")


def test_w2s_chain_is_the_lectures_data_term_not_the_weight_decay():
    view = view_of(page_data(MLP))
    nodes = {node["id"]: node for node in view["nodes"]}
    chain = next(p for p in view["params"] if p["name"] == "W2")
    assert [nodes[step["value"]]["name"] for step in chain["steps"]] == \
        ["J", "L", "o", "W2.T", "W2"]


def test_a_chain_runs_through_any_output_of_a_node_and_starts_at_the_seed():
    """A bidirectional GRU imported as scans: its params reach the loss through a scan's
    second output; at -O1 the seed constant is folded away, and the first step is still 1."""
    model = api.import_onnx(ROOT / "tests/fixtures/onnx/recurrent/gru2bi-ts.onnx", loss="mse",
                            targets="tgt")
    for level in ("O0", "O1"):
        view = graph_page_data(model, opt_level=level)["graph"]["views"][0]
        for chain in view["params"]:
            assert chain["steps"][0]["formula"] == "∂loss/∂loss = 1", (level, chain["name"])
            assert chain["steps"][-1]["value"] == chain["node"]
            assert len(chain["steps"]) > 2


def test_every_example_ties_every_backward_node_to_an_origin():
    for path in EXAMPLES:
        view = view_of(page_data(path))
        backward = [node for node in view["nodes"] if node["side"] == "backward"]
        assert backward, path
        assert all(node["origin"] for node in backward), path
        ids = {node["id"] for node in view["nodes"]}
        assert all(a in ids and b in ids for a, b, _ in view["edges"]), path
        for chain in view["params"]:
            assert chain["steps"][0]["formula"].endswith("= 1"), (path, chain["name"])
            assert chain["steps"][-1]["formula"].startswith(f"∂J/∂{chain['name']} ="), path


# ---- groups: calls and unrolled loop steps -----------------------------------------------------

def test_layers_calls_and_loop_steps_become_nested_groups():
    view = view_of(page_data(EXAMPLE_DIR / "gru_digits.nn"))
    groups = {group["id"]: group for group in view["groups"]}
    steps = [g for g in groups.values() if g["kind"] == "iteration" and g["parent"] is None]
    assert {g["label"] for g in steps} >= {f"t={t}" for t in range(1, 8)}
    calls = [g for g in groups.values() if g["kind"] == "call"]
    assert calls and all(groups[g["parent"]]["kind"] == "iteration" for g in calls)
    assert all(g["label"].startswith(("gru_cell (line", "∂ gru_cell (line")) for g in calls)
    # forward and backward nodes of one call are grouped apart, one band each
    for node in view["nodes"]:
        if node["group"]:
            assert groups[node["group"]]["label"].startswith("∂ ") == (node["side"] == "backward")

    lenet = view_of(page_data(EXAMPLE_DIR / "lenet_digits.nn"))
    norms = {group["label"]: group["id"] for group in lenet["groups"]}
    members = Counter(node["group"] for node in lenet["nodes"])
    assert members[norms["batch_norm (line 25)"]] >= 5  # a built-in's nodes, one group
    assert members[norms["∂ batch_norm (line 25)"]] >= 5

    resnet = view_of(page_data(EXAMPLE_DIR / "resnet_digits.nn"))
    labels = {group["label"] for group in resnet["groups"]}
    assert "layer1.0 (line 66)" in labels and "layer1.0.bn1 (line 52)" in labels


# ---- values ------------------------------------------------------------------------------------

def test_a_summary_counts_nan_and_inf_and_describes_the_rest():
    values = np.array([[1.0, np.nan, 3.0], [np.inf, -2.0, 0.5]], np.float32)
    found = summary(values)
    assert found["shape"] == [2, 3] and found["count"] == 6 and found["dtype"] == "float32"
    assert (found["nan"], found["inf"]) == (1, 1)
    assert (found["min"], found["max"]) == (-2.0, 3.0)
    assert found["mean"] == pytest.approx(0.625)
    assert found["sample"] == [1.0, "nan", 3.0, "inf", -2.0, 0.5]
    assert sum(found["histogram"]["counts"]) == 4
    assert found["heatmap"]["rows"] == 2 and found["heatmap"]["cells"][0][1] is None
    json.dumps(found, allow_nan=False)


def test_a_summary_reads_bfloat16_and_survives_a_range_past_float64():
    import ml_dtypes
    found = summary(np.array([1.5, -2.0, np.nan], dtype=ml_dtypes.bfloat16))
    assert (found["min"], found["max"], found["nan"]) == (-2.0, 1.5, 1)
    assert sum(found["histogram"]["counts"]) == 2
    extreme = summary(np.array([1e308, -1e308]))
    assert extreme["max"] == 1e308 and extreme["histogram"] is None


def test_a_summary_of_a_big_matrix_is_small():
    found = summary(np.arange(300 * 200, dtype=np.float64).reshape(300, 200))
    assert len(found["sample"]) == 8 and len(found["histogram"]["counts"]) == 24
    heatmap = found["heatmap"]
    assert (heatmap["rows"], heatmap["cols"]) == (16, 16)
    assert heatmap["low"] < heatmap["high"]


def test_values_are_each_nodes_own_on_the_given_batch():
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(3, 784)).astype(np.float32), "y": np.array([1, 2, 3])}
    model = api.compile(MLP)
    nodes = by_name(view_of(graph_page_data(model, feeds=feeds)))
    z = feeds["x"] @ model.params["W1"].T
    assert nodes["z"]["value"]["shape"] == [3, 256]
    assert nodes["z"]["value"]["max"] == pytest.approx(float(z.max()), rel=1e-5)
    assert nodes["h"]["value"]["min"] == 0.0
    assert nodes["dJ/dW1"]["value"]["shape"] == [256, 784]
    assert nodes["x"]["value"]["count"] == 3 * 784


# ---- optimised views -----------------------------------------------------------------------------

def test_an_optimised_page_holds_the_graph_as_written_to_compare():
    data = page_data(MLP, opt_level="O2")
    assert [view["key"] for view in data["graph"]["views"]] == ["O2", "O0"]
    optimised, written = view_of(data, "O2"), view_of(data, "O0")
    assert len(optimised["nodes"]) < len(written["nodes"])
    assert any("gemm" in line for line in optimised["changes"])
    new = {node["op"] for node in optimised["nodes"] if node["new"]}
    assert "gemm" in new and not any(node["new"] for node in written["nodes"])
    # the chain still walks the optimised graph, through values passes rebuilt (found by name)
    nodes = {node["id"]: node for node in optimised["nodes"]}
    steps = next(p for p in optimised["params"] if p["name"] == "W1")["steps"]
    assert [nodes[s["value"]]["name"] for s in steps] == \
        ["J", "L", "L.log_probs", "o", "h", "z", "W1"]
    assert steps[3]["formula"].startswith("∂J/∂o = cross_entropy_grad_from_log_probs(")
    assert steps[2]["node"] is None and "fused" in steps[2]["formula"]
    assert steps[-1]["formula"].startswith("∂J/∂W1 = gemm_acc(∂J/∂z, x, W1")


# ---- the file --------------------------------------------------------------------------------

def test_data_in_the_page_cannot_close_its_script_element():
    text = embedded_json({"s": "</script><script>alert(1)</script> <!-- \u2028"})
    assert "<" not in text and ">" not in text and "\u2028" not in text
    assert json.loads(text) == {"s": "</script><script>alert(1)</script> <!-- \u2028"}
    html = page_html({"title": "a <b> & \"c\"", "source": {"path": "x", "lines": ["</script>"]}})
    assert "<title>a &lt;b&gt; &amp; &quot;c&quot;</title>" in html
    assert embedded(html)["source"]["lines"] == ["</script>"]


def test_a_placeholder_in_a_title_stays_text():
    html = page_html({"title": "{{script}}{{data}}"})
    assert "<title>{{script}}{{data}}</title>" in html
    assert html.count("const ChainruleGraph = ") == 1


def test_the_page_needs_no_network():
    html = page_html(page_data(MLP))
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "fetch(" not in html and "XMLHttpRequest" not in html and "@import" not in html


def test_every_static_script_is_inlined_after_the_scripts_it_uses():
    static = ROOT / "chainrule" / "page" / "static"
    assert sorted(SCRIPTS) == sorted(path.name for path in static.glob("*.js"))
    defined = set()
    for name in SCRIPTS:
        text = (static / name).read_text(encoding="utf-8")
        defined |= set(re.findall(r"^const (Chainrule\w*) =", text, re.M))
        used = set(re.findall(r"\b(Chainrule\w*)\b", text))
        assert used <= defined, f"{name} uses {sorted(used - defined)} before it is defined"


def test_viz_html_writes_the_page_from_the_command_line(tmp_path):
    out = tmp_path / "mlp.html"
    result = chainrule("viz", MLP, "--html", out, "--random-inputs", "-O2")
    assert result.returncode == 0, result.stderr
    assert "O2: 15 forward" in result.stdout and "with values" in result.stdout
    data = embedded(out.read_text())
    assert data["source"]["path"] == str(MLP)
    assert data["source"]["lines"][8].strip() == "o = h @ W2.T"
    assert data["graph"]["views"][0]["nodes"][0]["value"]["shape"] == [4, 784]


def test_viz_html_of_an_imported_model_without_a_loss_is_the_forward_graph(tmp_path):
    onnx_file, out = tmp_path / "lenet.onnx", tmp_path / "lenet.html"
    assert chainrule("export", EXAMPLE_DIR / "lenet_digits.nn", "-o", onnx_file,
                     "--outputs", "logits").returncode == 0
    result = chainrule("viz", onnx_file, "--html", out)
    assert result.returncode == 0, result.stderr
    assert "forward graph only" in result.stderr and "--loss" in result.stderr
    data = embedded(out.read_text())
    assert data["source"] is None
    assert {node["side"] for node in data["graph"]["views"][0]["nodes"]} == {"forward"}
    with_loss = chainrule("viz", ROOT / "tests/fixtures/onnx/lenet_bn.onnx", "--loss",
                          "cross_entropy", "--html", out)
    assert with_loss.returncode == 0 and "backward" in with_loss.stdout


@pytest.mark.parametrize("args, message", [
    (["--random-inputs"], "give --html PAGE.html"),
    (["--html", "{tmp}/a.html", "-o", "{tmp}/a.svg"], "not both"),
    (["--html", "{tmp}"], "directory"),
])
def test_viz_html_refuses_what_it_cannot_do(tmp_path, args, message):
    result = chainrule("viz", MLP, *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode in (1, 2) and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "a.html").exists()
