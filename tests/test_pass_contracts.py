"""Pass contracts, derived presets, the stored objective and the one renaming discipline."""
import numpy as np
import pytest

import chainrule
from chainrule.cli import main
from chainrule.ir import ChainruleError, Value, parse_graph, print_graph, scalar
from chainrule.passes import select_outputs
from chainrule.passes.autodiff_rules import VJP_RULES
from chainrule.passes.manager import (PASSES, PRESETS, PassContext, check_order, pipeline,
                                      run_passes)
from chainrule.passes.simplify import simplify

MLP = "examples/mlp.nn"


@pytest.mark.parametrize("names, message", [
    ("fuse,autodiff", "autodiff cannot run after fuse: fuse writes fused ops, which have no "
                      "derivative rule (relu_grad, cross_entropy_grad, nll, "
                      "cross_entropy_grad_from_log_probs, sum_squares, gemm, gemm_acc); run "
                      "autodiff before fuse"),
    ("select_mode,gemm_epilogue,autodiff", "autodiff cannot run after gemm_epilogue"),
    ("select_mode,autodiff,group,dce", "dce cannot run after group: dce would drop the groups "
                                       "of elementwise nodes (graph.groups)"),
])
def test_a_pipeline_breaking_a_contract_is_refused_before_any_pass_runs(names, message):
    model = chainrule.compile(MLP)
    ctx = PassContext()
    with pytest.raises(ChainruleError, match="run .* (before|last)") as refusal:
        model.compile_graph(passes=names, ctx=ctx)
    assert message in str(refusal.value)
    assert ctx.timings == []


def test_the_command_line_refuses_a_bad_order(capsys):
    assert main(["ir", MLP, "--passes", "fuse,autodiff"]) == 1
    assert "error: autodiff cannot run after fuse" in capsys.readouterr().err


def test_the_orders_the_presets_run_are_accepted():
    for level in PRESETS:
        for grad in (False, True):
            check_order(pipeline(None, level, grad))
    check_order(["autodiff", "dce"])
    check_order(["select_mode", "autodiff", "fuse", "dce", "group", "group"])


def test_presets_are_the_declared_levels_in_pipeline_order():
    assert PRESETS == {"O0": ["select_mode", "dce"],
                       "O1": ["select_mode", "simplify", "cse", "scan_hoist", "dce"],
                       "O2": ["select_mode", "simplify", "cse", "scan_hoist", "fuse",
                              "gemm_epilogue", "dce", "group"]}
    assert pipeline(None, "O2", grad=True) == ["select_mode", "autodiff", "simplify", "cse",
                                               "scan_hoist", "fuse", "gemm_epilogue", "dce",
                                               "group"]


def test_the_ops_a_pass_says_lack_derivative_rules_lack_them():
    for contract in PASSES.values():
        reason = contract.invalidates.get("differentiable", "")
        named = reason.partition("(")[2].rstrip(")").split(", ") if "(" in reason else []
        assert all(op not in VJP_RULES for op in named if op)


def test_the_front_ends_store_the_objective():
    model = chainrule.compile(MLP)
    assert model.graph.objective is model.graph.outputs[0] and model.objective.name == "J"
    parsed = parse_graph(print_graph(model.graph))
    assert parsed.objective is parsed.outputs[0]


def test_picking_outputs_without_the_objective_leaves_none():
    graph = chainrule.compile(MLP).graph
    assert select_outputs(graph, ["o"]).objective is None
    assert select_outputs(graph, ["J", "o"]).objective.name == "J"


def test_a_value_keeps_the_name_it_was_made_with():
    value = Value("x", scalar("f32"))
    with pytest.raises(AttributeError):
        value.name = "y"


def test_a_rule_after_a_rename_reads_the_renamed_value():
    """%J takes %t's place, so %t's producer and %n, kept before, are made anew reading %J;
    double negation on %m then reads %n's current node and gives %J, not the stale %t."""
    graph = parse_graph("graph g(%x: f32[3]) {\n"
                        "  %one = constant() {value=1.0, dtype=f32} : f32[]\n"
                        "  %t = exp(%x) : f32[3]\n"
                        "  %n = neg(%t) : f32[3]\n"
                        "  %J = mul(%t, %one) : f32[3]\n"
                        "  %m = neg(%n) : f32[3]\n"
                        "  %r = mul(%m, %m) : f32[3]\n"
                        "  return %J, %r\n}\n")
    result = run_passes(graph, ["simplify", "dce"], PassContext(verify_each=True))
    text = print_graph(result, locations=False)
    assert "%J = exp(%x)" in text and "%r = mul(%J, %J)" in text and "%t" not in text


def test_simplify_reports_whether_it_changed_the_graph():
    graph = chainrule.compile(MLP).graph
    simplified, changed = simplify(graph)
    again, changed_again = simplify(simplified)
    assert changed and not changed_again
    assert print_graph(again) == print_graph(simplified)


def test_gradients_are_unchanged_by_the_identity_based_passes():
    model = chainrule.compile(MLP)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(4, 784)).astype(np.float32),
             "y": rng.integers(0, 10, size=4)}
    plain = model.grad(opt_level="O0", **feeds)
    fused = model.grad(opt_level="O2", **feeds)
    for name, gradient in plain.items():
        np.testing.assert_allclose(fused[name], gradient, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("training", [False, True])
def test_select_mode_may_follow_autodiff(training):
    """No contract puts select_mode first: autodiff differentiates train_or_eval like any op,
    so choosing the mode after it gives the same gradients."""
    model = chainrule.compile("examples/resnet_block.nn")
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(4, 64)).astype(np.float32), "y": rng.integers(0, 10, 4)}
    gradients = []
    for passes in ("select_mode,autodiff,dce", "autodiff,select_mode,dce"):
        graph, grads = model.compile_graph(passes=passes, ctx=PassContext(training=training),
                                           training=training)
        results = model.backend("numpy").run(graph, feeds, model.params_of(graph))
        gradients.append({name: results[gradient] for name, gradient in grads.items()})
    first, second = gradients
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
