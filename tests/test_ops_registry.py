"""The op registry is complete: every op has every rule and test piece it needs, the tables the
layers derive from its facts agree with it, and derivative rules only build graphs that can be
differentiated again."""
import dataclasses

import numpy as np
import pytest
from onnx import TensorProto

from chainrule.backends import fused_kernels
from chainrule.backends.fused_kernels import SCALAR_CODE
from chainrule.backends.numpy_compiled import FRESH_RESULT_OPS, UFUNCS
from chainrule.backends.numpy_kernels import KERNELS
from chainrule.backends.onnx_backend import export_onnx
from chainrule.backends.onnx_lowering import LOWERINGS
from chainrule.dsl.builtins import BUILTINS
from chainrule.ir import OPS, OpDef
from chainrule.ir.dsl_printer import SPELLINGS
from chainrule.ir.ops import ATTR_KINDS, ONE_OR_MORE, REQUIRED, complete_attrs
from chainrule.ir.types import ONNX_DTYPES
from chainrule.onnx_import import SUPPORTED_OPS, import_graph
from chainrule.passes import autodiff
from chainrule.passes.autodiff_rules import VJP_RULES
from op_cases import (CASES, FORWARD_CASES, REFERENCES, Arg, Case, draw, forward_graph, in_dtype,
                      scalar_objective_graph)

# Ops with the "expanded" trait, and the pass that replaces them.
EXPANDED_BY = {"grad": "expand_grad", "train_or_eval": "select_mode"}
# Ops no case can run: constant has no operands (every lowering builds it).
UNCASED = {"constant"}


def checklist(name: str, op: OpDef) -> list[str]:
    """Every piece `op` lacks, each with where it goes."""
    missing = []
    if not callable(op.infer):
        missing.append("type rule: the infer function of its register(...) in ir/ops.py")
    if op.num_inputs is not ONE_OR_MORE and len(op.operands) != op.num_inputs:
        missing.append(f"operand names: {op.num_inputs} in register(..., operands=...)")
    missing += [f"attribute '{attr}': a known kind ({', '.join(ATTR_KINDS)}), not '{spec.kind}'"
                for attr, spec in op.attrs.items() if spec.kind not in ATTR_KINDS]
    if "structured" in op.traits:  # scan: each layer handles it by hand (tests/test_scan*.py)
        return missing
    if "expanded" in op.traits:  # replaced by a pass before autodiff and the backends
        if name not in EXPANDED_BY:
            missing.append("the pass that expands it (an 'expanded' op reaches no backend)")
        return missing
    if op.differentiable and name not in VJP_RULES and "fused" not in op.traits:
        missing.append("derivative rule: @vjp in passes/autodiff_rules.py, or the "
                       "'nondifferentiable' trait")
    if name not in KERNELS:
        missing.append("numpy kernel: numpy= in ir/ops.py, or @kernel in "
                       "backends/numpy_kernels.py")
    if name not in LOWERINGS:
        missing.append("ONNX lowering: onnx= in ir/ops.py, or @lowering in "
                       "backends/onnx_lowering.py")
    if name not in SPELLINGS and "fused" not in op.traits:
        missing.append("DSL spelling: builtin= in ir/ops.py (its name by default), or an "
                       "entry in ir/dsl_printer.py's SPELLINGS")
    if name not in UNCASED:
        cases = CASES if op.differentiable and "fused" not in op.traits else \
            CASES + FORWARD_CASES
        if not any(case.op == name for case in cases):
            where = "CASES" if cases is CASES else "FORWARD_CASES"
            missing.append(f"test case: a Case('{name}', ...) in tests/op_cases.py's {where}")
        if name not in REFERENCES:
            missing.append("semantics reference: a plain numpy function in tests/op_cases.py's "
                           "REFERENCES")
    return missing


def registry_gaps(ops: dict[str, OpDef]) -> dict[str, list[str]]:
    """op -> the checklist of what it lacks, for every op that lacks something."""
    return {name: missing for name, op in sorted(ops.items())
            if (missing := checklist(name, op))}


def test_every_op_has_all_its_rules():
    gaps = registry_gaps(OPS)
    assert not gaps, "ops with missing pieces:\n" + "\n".join(
        f"  {name}:\n" + "".join(f"    [ ] {piece}\n" for piece in missing)
        for name, missing in gaps.items())


def test_the_checklist_names_every_missing_piece(monkeypatch):
    fake = OpDef("frobnicate", 1, infer=None, attrs={})
    monkeypatch.setitem(OPS, "frobnicate", fake)
    assert [piece.split(":")[0] for piece in registry_gaps(OPS)["frobnicate"]] == [
        "type rule", "operand names", "derivative rule", "numpy kernel", "ONNX lowering",
        "DSL spelling", "test case", "semantics reference"]
    assert list(registry_gaps(OPS)) == ["frobnicate"]


def test_the_layers_tables_follow_the_registrys_facts():
    for name, op in OPS.items():
        if name in UFUNCS:
            assert name in FRESH_RESULT_OPS, name  # a ufunc returns a new array
        if op.onnx is not None:
            assert op.onnx in SUPPORTED_OPS, f"{name}: the importer lacks {op.onnx}"
        if op.builtin is not None:
            assert BUILTINS[op.builtin].op in (name, None), name  # None: a composition


@pytest.mark.parametrize("case", [case for case in CASES + FORWARD_CASES
                                  if OPS[case.op].onnx is not None], ids=lambda c: c.id)
def test_the_importer_reads_an_ops_onnx_op_back_as_the_op(case):
    """The importer's 1:1 map is the lowering's, inverted."""
    model = export_onnx(forward_graph(in_dtype(case, "f32")), {})
    if OPS[case.op].onnx in {node.op_type for node in model.graph.node}:
        imported = import_graph(model).graph
        assert case.op in {node.op for node in imported.nodes}


# Of the elementwise ops a fused kernel runs, the cases with a loop to fuse (not a scalar).
SCALAR_CASES = [case for case in CASES + FORWARD_CASES
                if case.op in SCALAR_CODE and forward_graph(case).outputs[0].type.rank]


@pytest.mark.skipif(not fused_kernels.numba_installed(), reason="fused kernels need numba")
@pytest.mark.parametrize("case", SCALAR_CASES, ids=lambda c: c.id)
def test_an_ops_scalar_code_computes_its_numpy_kernel(case):
    graph = forward_graph(case)
    if fused_kernels.kernel_source(tuple(graph.nodes)) is None:
        # A broadcast the loop nest cannot read (numpy runs it): operands of the result's shape.
        shape = graph.outputs[0].type.shape
        case = dataclasses.replace(case, args=tuple(dataclasses.replace(arg, shape=shape)
                                                    for arg in case.args))
        graph = forward_graph(case)
    (node,) = graph.nodes
    source, operands = fused_kernels.kernel_source((node,))
    rng = np.random.default_rng(7)
    arrays = {v: np.asarray(draw(arg, rng)) for v, arg in zip(graph.inputs, case.args,
                                                              strict=True)}
    expected = np.asarray(KERNELS[node.op](*arrays.values(), **node.attrs))
    out = np.empty_like(expected)
    fused_kernels.kernel_for(source)(*(arrays[v] for v in operands), out)
    np.testing.assert_allclose(out, expected, rtol=1e-12, err_msg=case.id)


def test_a_scalar_result_is_left_to_numpy():
    graph = forward_graph(Case("add", (Arg(()), Arg(()))))
    assert fused_kernels.kernel_source(tuple(graph.nodes)) is None


ONNX_NAMES = {"f16": "FLOAT16", "bf16": "BFLOAT16", "f32": "FLOAT", "f64": "DOUBLE",
              "i8": "INT8", "i16": "INT16", "i32": "INT32", "i64": "INT64", "u8": "UINT8",
              "u16": "UINT16", "u32": "UINT32", "u64": "UINT64", "bool": "BOOL",
              "f8e4m3fn": "FLOAT8E4M3FN", "f8e4m3fnuz": "FLOAT8E4M3FNUZ", "f8e5m2": "FLOAT8E5M2",
              "f8e5m2fnuz": "FLOAT8E5M2FNUZ", "f8e8m0": "FLOAT8E8M0", "f4e2m1": "FLOAT4E2M1",
              "i4": "INT4", "u4": "UINT4", "i2": "INT2", "u2": "UINT2"}


def test_onnx_dtypes_are_onnxs_numbers():
    assert set(ONNX_DTYPES) == set(ONNX_NAMES)
    known = TensorProto.DataType.values()  # an older onnx lacks the newest ones
    for dtype, number in ONNX_DTYPES.items():
        if number in known:
            assert TensorProto.DataType.Name(number) == ONNX_NAMES[dtype], dtype


def test_a_facts_numpy_function_exists():
    for name, op in OPS.items():
        if op.numpy is not None:
            assert callable(getattr(np, op.numpy, None)), f"{name}: np.{op.numpy}"


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
