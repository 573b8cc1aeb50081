"""Every dtype through files, the command line and the Python API: .npz files that keep bf16 and
the narrow dtypes without pickle, casts by the exactness rules for every pair, random inputs
drawn in their own dtype, summaries, checkpoints, gradcheck in f16 and bf16, and the decompiler."""
import re
import warnings

import ml_dtypes
import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError, InputNote
from chainrule.cli.inputs import random_inputs
from chainrule.cli.running import describe
from chainrule.data import bind_inputs, read_dataset, safe_cast
from chainrule.dsl import lower_source
from chainrule.fileio import DTYPES_MEMBER, load_npy, load_npz, save_npz
from chainrule.gradcheck import gradcheck, tolerance
from chainrule.ir import DTYPES, Graph, GraphBuilder, TensorType, Value
from chainrule.ir.dsl_printer import print_dsl
from chainrule.ir.types import INT_DTYPES, NARROW_INT_DTYPES, numpy_dtype
from support.cli import chainrule as run_cli
from support.cli import fails, ok
from support.graphs import structure

def every_dtype(shape=(3, 2), seed=0) -> dict[str, np.ndarray]:
    """An array of each dtype, of values each can hold (small whole numbers, 0 and 1 in bool)."""
    rng = np.random.default_rng(seed)
    return {dtype: rng.integers(0, 2, shape).astype(numpy_dtype(dtype)) for dtype in DTYPES}


# ---- .npz files -------------------------------------------------------------------------------

def test_every_dtype_round_trips_through_npz_bit_for_bit(tmp_path):
    arrays = every_dtype()
    # NaN payloads and signed zeros too: the bits are kept, not the values.
    arrays["bf16_bits"] = np.array([0x7FC1, 0x8000, 0xFF80], np.uint16).view(ml_dtypes.bfloat16)
    arrays["scalar"] = np.array(1.5, ml_dtypes.float8_e4m3fn)
    save_npz(tmp_path / "a.npz", arrays)
    back = load_npz(tmp_path / "a.npz")
    assert list(back) == list(arrays)
    for name, array in arrays.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape, name
        assert back[name].tobytes() == array.tobytes(), name


def test_numpy_reads_the_file_without_pickle_as_bits_and_a_dtype_list(tmp_path):
    save_npz(tmp_path / "a.npz", {"w": np.array([1.5, -2.0], ml_dtypes.bfloat16),
                                  "b": np.zeros(2, np.float16)})
    with np.load(tmp_path / "a.npz", allow_pickle=False) as plain:
        assert plain["w"].dtype == np.uint16 and plain["b"].dtype == np.float16
        assert plain[DTYPES_MEMBER].tolist() == ["w:bf16"]
        assert plain["w"].view(ml_dtypes.bfloat16).tolist() == [1.5, -2.0]


def test_a_file_of_bits_written_by_hand_reads_in_its_dtype(tmp_path):
    bits = np.array([1.0, 0.5], ml_dtypes.float8_e5m2).view(np.uint8)
    np.savez(tmp_path / "a.npz", x=bits, __dtypes__=np.array(["x:f8e5m2"]))
    assert load_npz(tmp_path / "a.npz")["x"].tolist() == [1.0, 0.5]


@pytest.mark.parametrize("entries, arrays, message", [
    (["x:f32"], {"x": np.zeros(2, np.uint32)}, "'f32' is not one of the dtypes stored as bits"),
    (["y:bf16"], {"x": np.zeros(2, np.uint16)}, "entry 'y:bf16' names no array"),
    (["x:bf16"], {"x": np.zeros(2, np.uint8)}, "bf16 is stored as the bits of uint16"),
    ([[1, 2]], {}, "must be a 1-D array of 'NAME:DTYPE' strings"),
])
def test_a_wrong_dtype_list_is_a_located_error(tmp_path, entries, arrays, message):
    np.savez(tmp_path / "a.npz", __dtypes__=np.array(entries), **arrays)
    with pytest.raises(ChainruleError, match=message) as caught:
        load_npz(tmp_path / "a.npz")
    assert caught.value.loc.file.endswith("a.npz")


def test_numpys_untyped_bf16_arrays_are_refused_with_the_way_out(tmp_path):
    np.savez(tmp_path / "a.npz", w=np.ones(2, ml_dtypes.bfloat16))
    np.save(tmp_path / "a.npy", np.ones(2, ml_dtypes.float8_e4m3fn))
    for load, name in ((load_npz, "a.npz"), (load_npy, "a.npy")):
        with pytest.raises(ChainruleError, match="untyped 2-byte|untyped 1-byte") as caught:
            load(tmp_path / name)
        assert name in caught.value.message and DTYPES_MEMBER in caught.value.message


# ---- casts ------------------------------------------------------------------------------------

BF16, F8 = ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn


@pytest.mark.parametrize("given, declared, note", [
    (np.array([0, 255], np.uint8), "f16", "u8 from d.npz cast to f16 (exact)"),
    (np.array([2048], np.int32), "f16", "i32 from d.npz cast to f16 (exact)"),
    (np.array([2049], np.int32), "f16", "cast to f16 (integers past 2,048 are rounded)"),
    (np.array([257], np.int16), "bf16", "cast to bf16 (integers past 256 are rounded)"),
    (np.array([1.5], BF16), "f32", "bf16 from d.npz cast to f32 (exact)"),
    (np.array([1.5], np.float16), "f32", "f16 from d.npz cast to f32 (exact)"),
    (np.array([1.5], F8), "f16", "f8e4m3fn from d.npz cast to f16 (exact)"),
    (np.array([0.1], np.float32), "bf16", "rounded to bf16 (precision only"),
    (np.array([0.1], np.float16), "bf16", "rounded to bf16 (precision only"),
    (np.array([0.1], BF16), "f16", "rounded to f16 (precision only"),
    (np.array([0.5]), "f8e4m3fn", "rounded to f8e4m3fn (precision only"),
    (np.array([3.0], BF16), "i32", "bf16 from d.npz cast to i32 (exact)"),
    (np.array([0, 255]), "u8", "i64 from d.npz cast to u8 (exact)"),
    (np.array([-8, 7], np.int32), "i4", "i32 from d.npz cast to i4 (exact)"),
    (np.array([3], ml_dtypes.uint4), "i8", "u4 from d.npz cast to i8 (exact)"),
    (np.array([0.0, 1.0]), "bool", "f64 from d.npz cast to bool (exact)"),  # a CSV's 0 and 1
    (np.array([True]), "f16", "bool from d.npz cast to f16 (exact)"),
])
def test_exact_and_rounding_casts_happen_with_a_note(given, declared, note):
    cast, said = safe_cast("v", given, declared, "d.npz")
    assert cast.dtype == numpy_dtype(declared) and note in said
    np.testing.assert_allclose(cast.astype(np.float64), given.astype(np.float64), rtol=1e-2)


@pytest.mark.parametrize("given, declared, problem", [
    (np.array([70000], np.int32), "f16", "too large for f16 (they would become inf)"),
    (np.array([1e5]), "f16", "too large for f16"),
    (np.array([1e39]), "bf16", "too large for bf16"),
    (np.array([500.0]), "f8e4m3fn", "500.0, which f8e4m3fn cannot hold (it would be NaN)"),
    (np.array([-1.0]), "f8e8m0", "-1.0, which f8e8m0 cannot hold"),
    # f4e2m1 has no inf or NaN: a cast would clamp 7 (past 6 by half its last place) to 6.
    (np.array([1.0, 7.0]), "f4e2m1", "too large for f4e2m1, whose largest is 6"),
    (np.array([256]), "u8", "past the range of u8"),
    (np.array([-1], np.int8), "u16", "past the range of u16"),
    (np.array([8]), "i4", "past the range of i4"),
    (np.array([2.5], np.float16), "i32", "fractional part, such as 2.5"),
    (np.array([np.nan], BF16), "i8", "nan, which is no integer"),
    (np.array([0.5]), "bool", "only 0 and 1"),
])
def test_casts_that_change_a_value_are_refused(given, declared, problem):
    with pytest.raises(ChainruleError, match=re.escape(problem)) as caught:
        safe_cast("v", given, declared, "d.npz")
    assert caught.value.message.startswith(f"input 'v' is {declared} but d.npz holds")


def test_a_csv_fills_inputs_of_any_dtype(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,flag,label\n1,0.5,1,3\n2,-1.5,0,250\n")
    data = read_dataset(tmp_path / "d.csv", label_column="label")
    inputs = [Value("features", TensorType("f16", ("B", 3))),
              Value("label", TensorType("u8", ("B",)))]
    bound = bind_inputs(inputs, data)
    assert bound.arrays["features"].dtype == np.float16 and bound.arrays["label"].dtype == np.uint8
    assert bound.arrays["label"].tolist() == [3, 250]
    too_small = [inputs[0], Value("label", TensorType("i8", ("B",)))]
    with pytest.raises(ChainruleError, match="past the range of i8"):
        bind_inputs(too_small, data)


def write_idx(path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    path.write_bytes(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def test_idx_arrays_keep_their_own_dtype_where_it_is_declared(tmp_path):
    write_idx(tmp_path / "x-idx3-ubyte", np.arange(8, dtype=np.uint8).reshape(2, 2, 2), 0x08)
    write_idx(tmp_path / "y-idx1-ubyte", np.array([-3, 300], np.int16), 0x0B)
    data = read_dataset(tmp_path / "x-idx3-ubyte")
    data.update(read_dataset(tmp_path / "y-idx1-ubyte"))
    inputs = [Value("images", TensorType("u8", ("B", 2, 2))),
              Value("labels", TensorType("i16", ("B",)))]
    bound = bind_inputs(inputs, data)
    assert bound.notes == []  # no cast: each is its declared dtype already
    assert bound.arrays["images"].dtype == np.uint8 and bound.arrays["labels"].dtype == np.int16


# ---- random inputs and summaries --------------------------------------------------------------

def test_random_inputs_are_drawn_in_each_dtype_within_its_range():
    graph = Graph("g")
    graph.inputs = [Value(f"x_{d}", TensorType(d, (64,))) for d in DTYPES]
    arrays = random_inputs(graph, {}, 0, {})
    for dtype in DTYPES:
        array = arrays[f"x_{dtype}"]
        assert array.dtype == numpy_dtype(dtype), dtype
        values = array.astype(np.float64)
        assert np.isfinite(values).all() and len(np.unique(values)) > 1, dtype
    assert set(arrays["x_i32"].tolist()) <= set(range(10))  # integers, not bools cast
    assert set(arrays["x_i2"].tolist()) <= {0, 1}
    assert (arrays["x_f8e8m0"].astype(np.float64) > 0).all()
    assert arrays["x_bf16"].astype(np.float64).min() < 0  # drawn from the normal


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_has_a_summary(dtype):
    array = every_dtype((4,))[dtype]
    line = describe(array)
    assert line.startswith(f"{array.dtype}[4]")
    if dtype != "bool":
        assert " mean " in line and " max " in line
    assert describe(array[0]).startswith(f"{array.dtype}[] = ")


def test_a_nan_in_a_bf16_result_is_warned_of(tmp_path):
    model = tmp_path / "m.nn"
    model.write_text("model m(x: bf16[3]) {\n    y = log(x - x - bf16(1.0))\n    return y\n}\n")
    result = ok(run_cli("run", model, "--random-inputs"))
    assert "y holds NaN or Inf" in result.stderr


# ---- the command line -------------------------------------------------------------------------

MIXED = """model m(x: DT[B, 3], y: i32[B], k: u8[B]) {
    param W: DT[3, 2] = normal(0.0, 0.5)
    param b: DT[2] = zeros()
    o = tanh(x @ W + b)
    J = mean(o * o) + mean(DT(y) * DT(0.0)) + mean(DT(k) * DT(0.0))
    return J, o
}
"""


def mixed_model(tmp_path, dtype: str):
    path = tmp_path / f"m_{dtype}.nn"
    path.write_text(MIXED.replace("DT", dtype))
    return path


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_run_draws_each_input_in_its_dtype_and_writes_every_dtype(tmp_path, dtype):
    model = mixed_model(tmp_path, dtype)
    result = ok(run_cli("run", model, "--random-inputs", "--backend", "numpy",
                        "-o", tmp_path / "out.npz"))
    assert "cast to" not in result.stderr  # drawn as i32 and u8, not as bools cast
    outputs = load_npz(tmp_path / "out.npz")
    for name, array in outputs.items():  # the file keeps each dtype the backend gave
        assert f"{name}  {array.dtype}[" in result.stdout
    assert outputs["J"].dtype == numpy_dtype(dtype) or dtype == "bf16"


def test_train_and_predict_keep_f16_and_bf16_params_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    for dtype in ("f16", "bf16"):
        model = mixed_model(tmp_path, dtype)
        save_npz(tmp_path / "d.npz", {"x": rng.standard_normal((16, 3)).astype(numpy_dtype(dtype)),
                                      "y": rng.integers(0, 2, 16).astype(np.int32),
                                      "k": rng.integers(0, 256, 16).astype(np.uint8)})
        ok(run_cli("train", model, "--data", tmp_path / "d.npz", "--epochs", "2", "-q",
                   "--checkpoint", tmp_path / f"ck_{dtype}", "-o", tmp_path / "p.npz"))
        params = load_npz(tmp_path / "p.npz")
        checkpoint = load_npz(tmp_path / f"ck_{dtype}" / "checkpoint.npz")
        assert params["W"].dtype == numpy_dtype(dtype)
        assert checkpoint["param/W"].tobytes() == params["W"].tobytes()
        ok(run_cli("check", model, "--params", tmp_path / "p.npz"))
        wrong = {"W": params["W"].astype(np.float32), "b": params["b"]}
        save_npz(tmp_path / "wrong.npz", wrong)
        error = fails(run_cli("check", model, "--params", tmp_path / "wrong.npz")).stderr
        assert f"the dtype is f32, not {dtype}" in error


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_predict_writes_low_precision_scores_and_their_argmax_to_csv(tmp_path, dtype):
    model = tmp_path / "m.nn"
    model.write_text(ELEMENTWISE_SCORES.replace("DT", dtype))
    x = np.array([[1, 0, 3], [0, -1, 0.5]], numpy_dtype(dtype))
    save_npz(tmp_path / "d.npz", {"x": x})
    ok(run_cli("predict", model, "--data", tmp_path / "d.npz", "--argmax",
               "-o", tmp_path / "p.csv"))
    header, *rows = (tmp_path / "p.csv").read_text().splitlines()
    assert header == "o.0,o.1,o.2,o.argmax"
    assert [[float(v) for v in row.split(",")] for row in rows] == [[2, 0, 12, 2], [0, 0, 0.75, 2]]


ELEMENTWISE_SCORES = """model m(x: DT[B, 3]) {
    o = x * x + x
    return o
}
"""


def test_resuming_a_bf16_checkpoint_goes_on_from_its_exact_params(tmp_path):
    model = mixed_model(tmp_path, "bf16")
    rng = np.random.default_rng(1)
    save_npz(tmp_path / "d.npz", {"x": rng.standard_normal((8, 3)).astype(BF16),
                                  "y": np.zeros(8, np.int32), "k": np.zeros(8, np.uint8)})
    ok(run_cli("train", model, "--data", tmp_path / "d.npz", "--epochs", "1", "-q",
               "--checkpoint", tmp_path / "ck"))
    ok(run_cli("train", "--resume", tmp_path / "ck", "--epochs", "2", "--override", "-q",
               "-o", tmp_path / "resumed.npz"))
    ok(run_cli("train", model, "--data", tmp_path / "d.npz", "--epochs", "2", "-q",
               "-o", tmp_path / "straight.npz"))
    resumed, straight = load_npz(tmp_path / "resumed.npz"), load_npz(tmp_path / "straight.npz")
    assert resumed["W"].dtype == BF16
    assert resumed["W"].tobytes() == straight["W"].tobytes()


# ---- the Python API ---------------------------------------------------------------------------

ELEMENTWISE = """model m(x: DT[3], n: u8[3]) {
    y = x * x + DT(n)
    return y
}
"""


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_run_casts_lists_by_the_same_rules_and_outputs_keep_their_dtype(dtype):
    model = chainrule.compile(source=ELEMENTWISE.replace("DT", dtype))
    with pytest.warns(InputNote) as caught:
        y = model.run(x=[0.5, 1.0, 2.0], n=[1, 2, 100])["y"]
    notes = sorted(str(w.message) for w in caught)
    assert notes == ["input 'n': i64 from the argument cast to u8 (exact)",
                     f"input 'x': f64 from the argument rounded to {dtype} (precision only, as "
                     f"every framework does)"]
    assert y.dtype == numpy_dtype(dtype) and y.astype(np.float64).tolist() == [1.25, 3.0, 104.0]
    with pytest.raises(ChainruleError, match="past the range of u8"):
        model.run(x=np.ones(3, numpy_dtype(dtype)), n=[0, 0, 256])
    with pytest.raises(ChainruleError, match=f"too large for {dtype}"):
        model.run(x=[1e39, 1.0, 1.0], n=[0, 0, 0])


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_grad_of_a_low_precision_model_is_in_its_dtype(tmp_path, dtype):
    model = chainrule.compile(mixed_model(tmp_path, dtype))
    inputs = {"x": np.ones((2, 3), numpy_dtype(dtype)), "y": np.zeros(2, np.int32),
              "k": np.zeros(2, np.uint8)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no cast is needed: nothing is said
        grads = model.grad(**inputs)
    assert grads["b"].dtype == numpy_dtype(dtype) and grads["b"].shape == (2,)


# ---- gradcheck --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, epsilon", [("f16", 2.0 ** -10), ("bf16", 2.0 ** -7)])
def test_gradcheck_checks_the_low_precision_gradient_against_f64_differences(tmp_path, dtype,
                                                                             epsilon):
    model = chainrule.compile(mixed_model(tmp_path, dtype))
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((16, 3)).astype(numpy_dtype(dtype)),
              "y": np.zeros(16, np.int32), "k": np.zeros(16, np.uint8)}
    assert tolerance(model) == 16 * epsilon
    rows = gradcheck(model, inputs)
    assert all(row.passed for row in rows) and {row.param for row in rows} == {"W", "b"}
    # The gradient checked is the one computed in the low dtype: it differs from the exact one
    # by its rounding, which a check of the f64 model's gradient would not see.
    assert max(row.max_rel_error for row in rows) > 1e-6


def test_gradcheck_fails_a_low_precision_gradient_that_is_wrong(tmp_path, monkeypatch):
    model = chainrule.compile(mixed_model(tmp_path, "f16"))
    inputs = {"x": np.ones((4, 3), np.float16), "y": np.zeros(4, np.int32),
              "k": np.zeros(4, np.uint8)}
    right = model.grad

    def doubled(**kwargs):
        return {name: value * 2 for name, value in right(**kwargs).items()}

    monkeypatch.setattr(model, "grad", doubled)
    assert not any(row.passed for row in gradcheck(model, inputs))


def test_gradcheck_on_the_command_line_names_the_dtype_and_tolerance(tmp_path):
    model = mixed_model(tmp_path, "f16")
    result = ok(run_cli("gradcheck", model, "--random-inputs", "--dim", "B=8",
                        "--backend", "numpy"))
    assert "gradients of J computed in f16 against central differences in float64" in result.stdout
    assert "tolerance 0.015625" in result.stdout and "2 passed, 0 failed" in result.stdout


# ---- the decompiler ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_the_decompiler_prints_every_dtype(dtype):
    graph = Graph("m")
    builder = GraphBuilder(graph)
    graph.inputs = [Value("x", TensorType("f32", ("B", 2))), Value("z", TensorType(dtype, (2,)))]
    cast = builder.emit("cast", [graph.inputs[0]], {"dtype": dtype})
    constant = builder.emit("constant", [], {"value": 1.0, "dtype": dtype})
    graph.outputs = [cast, constant, graph.inputs[1]]
    text = print_dsl(graph)
    assert f"z: {dtype}[2]" in text and (f"{dtype}(x)" in text or dtype == "f32")
    whole = dtype in INT_DTYPES + NARROW_INT_DTYPES
    spelled = "true" if dtype == "bool" else "1" if whole else "1.0"
    assert f" = {dtype}({spelled})\n" in text
    assert structure(lower_source(text)) == structure(graph)
