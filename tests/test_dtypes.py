"""Dtypes: the promotion table (JAX's lattice), the DSL's casts and constants in every dtype,
and the names and numbers each dtype has in numpy and ONNX."""
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.ir.types import (DTYPES, FLOAT_DTYPES, INT_DTYPES, LATTICE, NARROW_DTYPES,
                                dtype_of_numpy, int_range, numpy_dtype, promote_types)

FIXTURES = Path(__file__).parent / "fixtures" / "promotion"
DOCS = Path(__file__).parents[1] / "docs"
PROMOTING = [d for d in LATTICE if d in DTYPES]


def test_the_table_is_jaxs_in_its_64_bit_mode():
    recorded = json.loads((FIXTURES / "jax_x64.json").read_text())["table"]
    assert set(recorded) == set(PROMOTING)
    for a, b in itertools.product(PROMOTING, repeat=2):
        assert promote_types(a, b) == recorded[a][b], (a, b)


def test_promotion_is_a_join_of_all_operands_at_once():
    for a, b, c in itertools.product(PROMOTING, repeat=3):
        joined = promote_types(a, b, c)
        assert all(promote_types(*order) == joined for order in itertools.permutations((a, b, c)))
        assert promote_types(joined, a) == joined  # above each operand
    assert all(promote_types(a, a) == a for a in PROMOTING)
    # f* is resolved once: i64 and u64 alone are f64, but with f16 all three are f16.
    assert (promote_types("i64", "u64"), promote_types("i64", "u64", "f16")) == ("f64", "f16")


def test_ints_meeting_floats_take_the_float_and_half_floats_meet_at_f32():
    assert [promote_types(i, "f16") for i in INT_DTYPES] == ["f16"] * len(INT_DTYPES)
    assert promote_types("bf16", "f16") == "f32"
    assert (promote_types("u8", "i8"), promote_types("u32", "i32")) == ("i16", "i64")
    assert promote_types("u64", "i64") == "f64"


def test_narrow_dtypes_promote_to_nothing():
    for narrow, other in itertools.product(NARROW_DTYPES, ["f32", "i8", "f8e5m2"]):
        if narrow != other:
            assert promote_types(narrow, other) is None


def test_the_language_reference_prints_the_table():
    text = (DOCS / "language.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| | **bool**"))
    columns = re.findall(r"\*\*(\w+)\*\*", header)
    for a in columns:
        row = next(line for line in text.splitlines() if line.startswith(f"| **{a}** |"))
        assert row.split("|")[2:-1] == [f" {promote_types(a, b)} " for b in columns], a


def test_every_dtype_has_a_numpy_dtype_that_names_it_back():
    for dtype in DTYPES:
        assert dtype_of_numpy(numpy_dtype(dtype)) == dtype


def test_integer_ranges_are_numpys():
    for dtype in INT_DTYPES:
        info = np.iinfo(numpy_dtype(dtype))
        assert int_range(dtype) == (info.min, info.max)


# ---- the DSL --------------------------------------------------------------------------------

def compiled(signature: str, body: str) -> chainrule.Model:
    return chainrule.compile(source=f"model m({signature}) {{\n    y = {body}\n    return y\n}}\n")


def error_of(signature: str, body: str) -> ChainruleError:
    with pytest.raises(ChainruleError) as caught:
        compiled(signature, body)
    return caught.value


def result_dtype(model) -> str:
    return model.graph.outputs[0].type.dtype


@pytest.mark.parametrize("a, b", itertools.combinations(
    ["bool", "u8", "i16", "u32", "i64", "f16", "bf16", "f32", "f64"], 2))
def test_the_dsl_casts_mixed_operands_to_their_promoted_dtype(a, b):
    model = compiled(f"x: {a}[3], z: {b}[3]", "maximum(x, z)")
    assert result_dtype(model) == promote_types(a, b)
    casts = {node.inputs[0].type.dtype for node in model.graph.nodes if node.op == "cast"}
    assert casts == {a, b} - {promote_types(a, b)}


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_a_float_literal_meeting_any_integer_tensor_makes_it_f64(dtype):
    assert result_dtype(compiled(f"x: {dtype}[3]", "x * 0.5")) == "f64"
    assert result_dtype(compiled(f"x: {dtype}[3]", "x + 1")) == dtype


@pytest.mark.parametrize("dtype", [d for d in INT_DTYPES if d != "i64"])  # i64: past 64 bits
def test_an_integer_literal_outside_its_dtypes_range_is_a_located_error(dtype):
    least, greatest = int_range(dtype)
    for fitting in (least, greatest) if greatest < 2 ** 53 else (least,):
        assert result_dtype(compiled(f"x: {dtype}[3]", f"maximum(x, {fitting})")) == dtype
    error = error_of(f"x: {dtype}[3]", f"maximum(x, {least - 1})")
    assert f"is no {dtype} a constant holds exactly" in error.message and error.line == 2


def test_matmul_and_concat_promote_without_taking_float_literals():
    assert result_dtype(compiled("x: i32[3], z: f16[3]", "x @ z")) == "f16"
    assert result_dtype(compiled("x: u8[3], z: i8[2]", "concat(x, z)")) == "i16"


def test_narrow_operands_are_refused_by_the_op_that_meets_them():
    error = error_of("x: f8e4m3fn[3], z: f32[3]", "x + z")
    assert error.message == "add needs operands of one dtype, got f8e4m3fn[3] and f32[3]"
    error = error_of("x: f8e4m3fn[3]", "x + x")
    assert error.message == "add needs a numeric operand, got f8e4m3fn[3]"


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_every_dtype_is_a_cast_and_a_type(dtype):
    model = compiled("x: f32[2, 3]", f"{dtype}(x)")
    assert str(model.graph.outputs[0].type) == f"{dtype}[2, 3]"


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_a_float_cast_gives_a_weak_value_its_dtype(dtype):
    model = compiled("x: f32[2]", f"{dtype}(sqrt(2.0))")
    constant = next(node for node in model.graph.nodes if node.op == "constant")
    assert constant.attrs["dtype"] == dtype and result_dtype(model) == dtype
