"""Data as users have it: formats, binding arrays to inputs, safe casts, and label checks."""
import gzip
import os
import stat

import numpy as np
import pytest

import chainrule
from support.paths import ROOT
from chainrule.data import (Dataset, bind_inputs, check_rows, read_array, read_dataset,
                            safe_cast)
from chainrule.fileio import atomic_write_bytes, read_text, save_npz
from chainrule.ir import ChainruleError, TensorType, Value

DIGITS = ROOT / "examples" / "digits_classifier.nn"
X = Value("x", TensorType("f32", ("B", 4)))
Y = Value("y", TensorType("i64", ("B",)))


def write_idx(path, array: np.ndarray, code: int, compress: bool = False) -> None:
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    data = header + big_endian.tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


# ---- formats ----------------------------------------------------------------------------------

def test_csv_with_a_label_column(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b,label,c\n1,2,3,4\n5,6.5,7,8\n")
    data = read_dataset(path, label_column="label")
    np.testing.assert_array_equal(data.arrays["features"], [[1, 2, 4], [5, 6.5, 8]])
    assert data.arrays["label"].dtype == np.int64
    np.testing.assert_array_equal(data.arrays["label"], [3, 7])
    assert data.roles == {"label": "labels", "features": "features"}


def test_csv_without_a_label_column_is_all_features(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("\ufeffa,b\n1,2\n3,4\n")  # a byte-order mark, as spreadsheets write
    data = read_dataset(path)
    assert list(data.arrays) == ["features"]
    assert data.arrays["features"].shape == (2, 2)


def test_csv_labels_with_fractions_stay_float(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("x,t\n1,0.5\n2,1\n")
    assert read_dataset(path, label_column="t").arrays["t"].dtype == np.float64


@pytest.mark.parametrize("text, message", [
    ("", "empty; a CSV file starts with a header row"),
    ("a,b\n1,x\n", "not numeric CSV after the header row"),
    ("a,b\n1,2,3\n", "the header names 2"),
])
def test_bad_csv_is_a_located_error(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ChainruleError, match=message) as caught:
        read_dataset(path)
    assert caught.value.file == str(path)


def test_csv_label_column_must_exist(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ChainruleError, match="no column named 'y'; the columns are 'a', 'b'"):
        read_dataset(path, label_column="y")


@pytest.mark.parametrize("compress", [False, True])
def test_idx_images_find_their_labels(tmp_path, compress):
    suffix = ".gz" if compress else ""
    images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    labels = np.array([7, 1], np.uint8)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, 0x08, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels, 0x08, compress)
    data = read_dataset(tmp_path / f"train-images-idx3-ubyte{suffix}")
    np.testing.assert_array_equal(data.arrays["images"], images)
    np.testing.assert_array_equal(data.arrays["labels"], labels)
    assert data.roles == {"images": "features", "labels": "labels"}


@pytest.mark.parametrize("dtype, code", [(np.int16, 0x0B), (np.int32, 0x0C),
                                         (np.float32, 0x0D), (np.float64, 0x0E)])
def test_idx_reads_every_dtype_big_endian(tmp_path, dtype, code):
    array = np.array([[1, -2], [3, 4]], dtype)
    write_idx(tmp_path / "a.idx2-ubyte", array, code)
    read = read_array(tmp_path / "a.idx2-ubyte")
    assert read.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(read, array)


def test_truncated_and_overlong_idx_are_refused(tmp_path):
    array = np.zeros((4, 2), np.uint8)
    path = tmp_path / "x-images-idx3-ubyte"
    write_idx(path, array, 0x08)
    data = path.read_bytes()
    path.write_bytes(data[:-1])
    with pytest.raises(ChainruleError, match="truncated"):
        read_array(path)
    path.write_bytes(data + b"\0")
    with pytest.raises(ChainruleError, match="more data than the header's shape"):
        read_array(path)


def test_unknown_format_names_the_formats(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"hello world")
    with pytest.raises(ChainruleError, match="unknown data format; chainrule reads .npz"):
        read_dataset(path)


def test_pickles_are_refused_in_npy(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ChainruleError, match="pickle"):
        read_array(path)


# ---- binding ----------------------------------------------------------------------------------

def dataset(**arrays) -> Dataset:
    data = Dataset()
    for name, array in arrays.items():
        data.add(name, np.asarray(array), "data.npz")
    return data


def test_extra_arrays_are_ignored_with_a_note_or_refused_when_strict():
    data = dataset(x=np.zeros((2, 4), np.float32), y=[1, 2], ids=[10, 11])
    bound = bind_inputs([X, Y], data)
    assert set(bound.arrays) == {"x", "y"}
    assert any("ignoring array 'ids' in data.npz" in note for note in bound.notes)
    with pytest.raises(ChainruleError, match="--strict-inputs: array 'ids'"):
        bind_inputs([X, Y], data, strict=True)


def test_map_binds_inputs_to_other_names():
    data = dataset(images=np.zeros((2, 4), np.float32), labels=[1, 2])
    bound = bind_inputs([X, Y], data, {"x": "images", "y": "labels"})
    assert not bound.missing and not bound.notes
    with pytest.raises(ChainruleError, match="holds no array 'pixels'"):
        bind_inputs([X, Y], data, {"x": "pixels"})


def test_a_missing_input_is_reported_not_guessed():
    bound = bind_inputs([X, Y], dataset(x=np.zeros((2, 4), np.float32)))
    assert [v.name for v in bound.missing] == ["y"]


def test_roles_bind_features_and_labels_by_kind():
    data = Dataset()
    data.add("features", np.zeros((3, 4)), "d.csv", "features")
    data.add("digit", np.array([1, 2, 3]), "d.csv", "labels")
    bound = bind_inputs([X, Y], data)
    assert bound.arrays["x"].dtype == np.float32 and bound.arrays["y"].dtype == np.int64
    assert any("input 'y' reads the labels of d.csv ('digit')" in n for n in bound.notes)


def test_images_are_flattened_for_a_matrix_input():
    data = dataset(x=np.zeros((5, 2, 2), np.uint8), y=np.zeros(5, np.uint8))
    bound = bind_inputs([X, Y], data)
    assert bound.arrays["x"].shape == (5, 4) and bound.arrays["x"].dtype == np.float32
    assert any("flattened to [5, 4]" in note for note in bound.notes)


@pytest.mark.parametrize("given, declared, note", [
    (np.array([1, 2], np.int32), "i64", "i32 from data.npz cast to i64 (exact)"),
    (np.array([1, 2], np.uint8), "i64", "u8 from data.npz cast to i64 (exact)"),
    (np.array([1, 255], np.uint8), "f32", "u8 from data.npz cast to f32 (exact)"),
    (np.array([0.1], np.float64), "f32", "rounded to f32 (precision only"),
    (np.array([0.5], np.float32), "f64", "f32 from data.npz cast to f64 (exact)"),
    (np.array([2.0, 3.0]), "i64", "f64 from data.npz cast to i64 (exact)"),
    (np.array([2 ** 30], np.int64), "f32", "integers past 16,777,216 are rounded"),
])
def test_casts_that_lose_nothing_happen_with_a_note(given, declared, note):
    cast, said = safe_cast("v", given, declared, "data.npz")
    assert cast.dtype == np.dtype(chainrule.ir.numpy_dtype(declared))
    np.testing.assert_allclose(cast.astype(np.float64), given.astype(np.float64), rtol=1e-7)
    assert said.startswith("input 'v': ") and note in said


@pytest.mark.parametrize("given, declared, problem", [
    (np.array([1.5]), "i64", "fractional part, such as 1.5"),
    (np.array([np.nan]), "i64", "nan, which is no integer"),
    (np.array([-1, 1]), "bool", "only 0 and 1"),
    (np.array([1e300]), "f32", "too large for f32"),
    (np.array(["a"]), "f32", "not numeric"),
    (np.array([2 ** 64 - 1], np.uint64), "i64", "past the range of i64"),
])
def test_casts_that_change_meaning_are_refused(given, declared, problem):
    with pytest.raises(ChainruleError, match=problem) as caught:
        safe_cast("v", given, declared, "data.npz")
    assert "input 'v'" in caught.value.message and declared in caught.value.message


def test_check_rows_reports_the_file_shape():
    arrays = {"x": np.zeros((100, 5), np.float32), "y": np.zeros(100, np.int64)}
    with pytest.raises(ChainruleError, match=r"declared f32\[B, 4\] but given f32\[100, 5\]"):
        check_rows([X, Y], arrays, {"x": "train.npz", "y": "train.npz"})
    arrays["x"] = np.zeros((99, 4), np.float32)
    with pytest.raises(ChainruleError, match="same number of rows"):
        check_rows([X, Y], arrays, {"x": "train.npz", "y": "train.npz"})


# ---- files ------------------------------------------------------------------------------------

def test_written_files_honour_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"data")
        save_npz(tmp_path / "b.npz", {"a": np.zeros(2)})
    finally:
        os.umask(previous)
    for name in ("a.bin", "b.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640


@pytest.mark.parametrize("data, offset", [(b"model m() {\xff\xfe}", 11),
                                          ("caf\u00e9 = 1".encode("latin-1"), 3)])
def test_a_model_file_that_is_not_utf8_names_the_byte(tmp_path, data, offset):
    path = tmp_path / "bad.nn"
    path.write_bytes(data)
    with pytest.raises(ChainruleError, match=f"not UTF-8 text: byte 0x.. at offset {offset}"):
        read_text(path)
    with pytest.raises(ChainruleError) as caught:
        chainrule.compile(str(path))
    assert caught.value.render().startswith(f"{path}: error: not UTF-8")


# ---- labels out of range, the same on every backend -------------------------------------------

LABELS_MODEL = """
model m(x: f32[B, 3], y: i64[B], k: i64[2]) {
    L = cross_entropy(x, y)
    picked = take(x, k, axis=1)
    hot = one_hot(y, n=3)
    return L, picked, hot
}
"""


@pytest.mark.parametrize("backend", ["numpy", "onnxruntime"])
@pytest.mark.parametrize("y, k, message", [
    ([0, 3], [0, 1], "input 'y' holds 3, out of range: labels for cross_entropy over 3 "
                     "classes lie in [0, 3)"),
    ([-1, 0], [0, 1], "input 'y' holds -1, out of range: labels for cross_entropy"),
    ([0, 1], [0, 3], "input 'k' holds 3, out of range: indices for take over 3 items lie "
                     "in [-3, 3)"),
])
def test_labels_and_indices_out_of_range_are_refused_by_every_backend(backend, y, k, message):
    model = chainrule.compile(source=LABELS_MODEL)
    x = np.zeros((2, 3), np.float32)
    for _ in range(2):  # the second call takes the backend's cached, checked path
        with pytest.raises(ChainruleError, match=message.replace("[", r"\[").replace(
                ")", r"\)").replace("(", r"\(")) as caught:
            model.run(backend=backend, x=x, y=np.array(y), k=np.array(k))
        assert caught.value.line is not None  # it points at the op's DSL line
    model.run(backend=backend, x=x, y=np.array([0, 2]), k=np.array([-3, 2]))


def test_run_computes_only_what_the_named_outputs_need():
    model = chainrule.compile(str(DIGITS))
    x = np.zeros((3, 64), np.float32)
    outputs = model.run(outputs=["logits"], x=x)  # no labels needed
    assert list(outputs) == ["logits"] and outputs["logits"].shape == (3, 10)
    with pytest.raises(ChainruleError, match="missing input 'y'"):
        model.run(outputs=["acc"], x=x)


def test_predict_runs_in_batches_and_joins_them():
    model = chainrule.compile(str(DIGITS))
    x = np.random.default_rng(0).normal(size=(70, 64)).astype(np.float32)
    seen = []
    whole = model.predict({"x": x}, batch_size=32, progress=lambda d, t: seen.append((d, t)))
    assert list(whole) == ["logits"]  # J and acc have no row per example and need labels
    assert seen == [(32, 70), (64, 70), (70, 70)]
    np.testing.assert_allclose(whole["logits"], model.run(outputs=["logits"], x=x)["logits"],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ChainruleError, match="J .*no row per example"):
        model.predict({"x": x, "y": np.zeros(70, np.int64)}, ["J"])


def test_run_with_outputs_that_need_only_some_params():
    model = chainrule.compile(source="model m(x: f32[B, 3]) {\n    param W: f32[3, 3] = glorot()\n"
                              "    param V: f32[3] = zeros()\n    b = sum(V)\n    a = x @ W.T\n"
                              "    return b, a\n}\n")
    x = np.ones((2, 3), np.float32)
    for backend in ("numpy", "onnxruntime"):
        assert model.run(backend=backend, outputs=["a"], x=x)["a"].shape == (2, 3)
        assert model.predict({"x": x}, ["a"], backend=backend)["a"].shape == (2, 3)
