"""The op registry is complete: every op has its four rules, and derivative rules only build
graphs that can be differentiated again."""
import pytest

from chainrule.backends.numpy_kernels import KERNELS
from chainrule.backends.onnx_lowering import LOWERINGS
from chainrule.ir import OPS, OpDef
from chainrule.ir.ops import ATTR_KINDS, REQUIRED, complete_attrs
from chainrule.passes import autodiff
from chainrule.passes.autodiff_rules import VJP_RULES
from op_cases import CASES, scalar_objective_graph


# Ops with the "expanded" trait, and the pass that replaces them.
EXPANDED_BY = {"grad": "expand_grad", "train_or_eval": "select_mode"}


def registry_gaps(ops: dict[str, OpDef]) -> list[str]:
    """'op: missing piece' for every rule an op lacks."""
    gaps = []
    for name, op in sorted(ops.items()):
        if not callable(op.infer):
            gaps.append(f"{name}: type rule")
        if "expanded" in op.traits:  # replaced by a pass before autodiff and the backends
            if name not in EXPANDED_BY:
                gaps.append(f"{name}: the pass that expands it")
            continue
        if op.differentiable and name not in VJP_RULES and "fused" not in op.traits:
            gaps.append(f"{name}: derivative rule (or the 'nondifferentiable' trait)")
        if name not in KERNELS:
            gaps.append(f"{name}: numpy kernel")
        if name not in LOWERINGS:
            gaps.append(f"{name}: ONNX lowering")
        gaps += [f"{name}: attribute '{attr}' has unknown kind '{spec.kind}'"
                 for attr, spec in op.attrs.items() if spec.kind not in ATTR_KINDS]
    return gaps


def test_every_op_has_all_its_rules():
    gaps = registry_gaps(OPS)
    assert not gaps, "ops with missing rules:\n  " + "\n  ".join(gaps)


def test_the_gap_list_names_the_op_and_the_piece(monkeypatch):
    fake = OpDef("frobnicate", 1, infer=None, attrs={})
    monkeypatch.setitem(OPS, "frobnicate", fake)
    assert registry_gaps(OPS) == ["frobnicate: type rule",
                                  "frobnicate: derivative rule (or the 'nondifferentiable' trait)",
                                  "frobnicate: numpy kernel", "frobnicate: ONNX lowering"]


@pytest.mark.parametrize("name", sorted(OPS))
def test_attribute_defaults_are_of_their_kind(name):
    op = OPS[name]
    defaults = {attr: spec.default for attr, spec in op.attrs.items()
                if spec.default is not REQUIRED}
    for attr, value in defaults.items():
        assert ATTR_KINDS[op.attrs[attr].kind](value), f"{name}.{attr} = {value!r}"


def test_complete_attrs_names_the_op_and_attribute():
    with pytest.raises(Exception, match="op 'clip' needs attribute 'hi'"):
        complete_attrs(OPS["clip"], {"lo": 0.0})
    with pytest.raises(Exception, match="op 'leaky_relu': attribute 'alpha' must be float"):
        complete_attrs(OPS["leaky_relu"], {"alpha": "f32"})


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_derivative_rules_emit_only_ops_that_can_be_differentiated_again(case):
    graph, inputs, objective = scalar_objective_graph(case)
    grad_graph, _ = autodiff(graph, objective, [v for v in inputs if v.type.dtype == "f64"])
    backward = grad_graph.nodes[len(graph.nodes):]
    stuck = sorted({n.op for n in backward
                    if OPS[n.op].differentiable and n.op not in VJP_RULES})
    assert not stuck, f"{case.op}'s rule emits ops with no derivative rule: {stuck}"
