"""Every differentiable op's derivative rule against central finite differences in float64."""
import pytest

from chainrule.ir import OPS
from chainrule.passes.autodiff_rules import VJP_RULES
from op_cases import CASES
from support.op_checks import check_derivative_rule


# Ops whose rule is by design not their derivative (a straight-through estimator's), checked
# against its definition there.
DEFINED_NOT_DERIVED = {"fake_quantize": "tests/test_quantized.py"}


@pytest.mark.parametrize("case", [c for c in CASES if c.op not in DEFINED_NOT_DERIVED],
                         ids=lambda c: c.id)
def test_derivative_rule_matches_finite_differences(case):
    check_derivative_rule(case)


# Ops no backend runs (a pass replaces them first), whose rules are checked by model tests.
CHECKED_ELSEWHERE = {"train_or_eval": "tests/test_state.py", **DEFINED_NOT_DERIVED}


def test_every_differentiable_op_has_a_case():
    covered = {case.op for case in CASES} | set(CHECKED_ELSEWHERE)
    untested = sorted(op for op in VJP_RULES if op not in covered)
    assert not untested, f"ops whose derivative rule no case checks: {untested}"


def test_nondifferentiable_ops_have_no_rule():
    both = [name for name, op in OPS.items() if not op.differentiable and name in VJP_RULES]
    assert not both, f"ops marked non-differentiable but given a rule: {both}"
