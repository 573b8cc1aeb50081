"""Hostile and unusual ONNX models at the importer: names that could inject text into what
chainrule prints, external data outside the model's folder, tied initializers, and the
scikit-learn converters' `ai.onnx.ml` ops.

Each imported model is checked against onnxruntime on the original file.
"""
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import chainrule
from chainrule.ir import dsl_names, print_dsl, print_graph
from chainrule.ir.text import graph_differences, parse_graph
from support.cli import chainrule as chainrule_cli
from support.paths import ROOT

# Names that end a line, hide text, look like a comment, a location or an escape.
HOSTILE_NAMES = ["n\nout = out * 1000", "cr\rreturn x", "a [t=3]", "trailing ", "ls\u2028x = 1",
                 "ends]", "esc\x1b[31m", "back\\nslash", "ps\u2029", "rtl\u202eevil", "nel\x85",
                 "tab\tv", "m.onnx:fake", "#\"'; x", "nul\x00x", ""]


def onnxruntime_outputs(model: onnx.ModelProto, feeds: dict) -> list:
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def hostile_mlp(names) -> onnx.ModelProto:
    """x @ W + b, relu, times 2: each node, value and initializer named from `names`, the
    nodes first."""
    names = iter(names)
    gemm, doc, relu, mul, x, w, b, h, r, two, out, graph, graph_doc = (next(names)
                                                                      for _ in range(13))
    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), w),
                    numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), b),
                    numpy_helper.from_array(np.full((3,), 2, np.float32), two)]
    nodes = [helper.make_node("Gemm", [x, w, b], [h], name=gemm, doc_string=doc),
             helper.make_node("Relu", [h], [r], name=relu),
             helper.make_node("Mul", [r, two], [out], name=mul)]
    model = helper.make_model(helper.make_graph(
        nodes, graph, [helper.make_tensor_value_info(x, TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [2, 3])], initializers,
        doc_string=graph_doc), opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return model


def unique_hostile_names(count: int) -> list[str]:
    """`count` distinct names (ONNX values need distinct ones), each hostile."""
    return [f"{i}{HOSTILE_NAMES[i % len(HOSTILE_NAMES)]}" for i in range(count)]


def decompiled(model: onnx.ModelProto) -> chainrule.Model:
    """The model imported, printed as .nn, compiled again with the imported values."""
    imported = chainrule.import_onnx(model)
    printed = chainrule.compile(source=print_dsl(imported.graph))
    names = dsl_names(imported.graph)
    printed.set_params({names[name]: value for name, value in imported.params.items()})
    return printed


def test_hostile_names_stay_in_their_comments_and_the_model_computes_the_same():
    model = hostile_mlp(unique_hostile_names(13))
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    expected = onnxruntime_outputs(model, {model.graph.input[0].name: x})
    printed = decompiled(model)
    (result,) = printed.run(**{printed.graph.inputs[0].name: x}).values()
    np.testing.assert_allclose(result, expected[0], rtol=1e-6)


def test_the_ir_text_of_a_model_with_hostile_names_reads_back_as_the_same_graph():
    graph = chainrule.import_onnx(hostile_mlp(unique_hostile_names(13))).graph
    text = print_graph(graph)
    assert len(text.splitlines()) == len(text.split("\n")) - 1  # no other line end in it
    assert graph_differences(parse_graph(text), graph) == []


def test_import_writes_hostile_names_escaped(tmp_path):
    path = tmp_path / "hostile.onnx"
    onnx.save(hostile_mlp(unique_hostile_names(13)), path)
    result = chainrule_cli("import", path, "-o", tmp_path / "m.nn")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "m.nn").read_text()
    assert "# 0n\\nout = out * 1000\n" in text and "# 2a [t=3]\n" in text
    assert "# value from hostile.onnx: '5ends]'\n" in text
    ran = chainrule_cli("run", tmp_path / "m.nn", "--params", tmp_path / "m.npz",
                        "--random-inputs")
    assert ran.returncode == 0, ran.stderr


def test_an_error_naming_a_hostile_node_stays_on_one_line(tmp_path):
    model = hostile_mlp(unique_hostile_names(13))
    model.graph.node[1].op_type = "NoSuchOp"
    path = tmp_path / "hostile.onnx"
    onnx.save(model, path)
    result = chainrule_cli("check", path)
    assert result.returncode == 1
    assert all(line.startswith(("chainrule:", str(tmp_path), "  ", "    ")) or not line
               for line in result.stderr.splitlines()), result.stderr


# ---- external data -------------------------------------------------------------------------------

def saved_with_external_data(folder, location="w.bin"):
    """The hostile-free MLP saved in `folder` with every initializer in `location`."""
    model = hostile_mlp([f"v{i}" for i in range(13)])
    folder.mkdir(exist_ok=True)
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # saving moves the values out of the proto it is given
    onnx.save_model(saved, folder / "m.onnx", save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)
    return model, folder / "m.onnx"


def test_external_data_is_read_beside_the_model_whatever_the_working_directory(tmp_path):
    model, path = saved_with_external_data(tmp_path / "model")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "w.bin").write_bytes(np.ones(64, np.float32).tobytes())  # a stray file
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    np.save(elsewhere / "x.npy", x)
    result = chainrule_cli("run", path, "--input", "v4=x.npy", "-o", "out.npz", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    (expected,) = onnxruntime_outputs(model, {"v4": x})
    np.testing.assert_allclose(np.load(elsewhere / "out.npz")["v10"], expected, rtol=1e-6)


@pytest.mark.parametrize("edit, message", [
    (lambda entries, folder: entries.update(location="../w.bin"), "outside the model's folder"),
    (lambda entries, folder: entries.update(location=str(folder / "w.bin")),
     "outside the model's folder"),
    (lambda entries, folder: entries.update(location="."), "not a regular file"),
    (lambda entries, folder: entries.update(location="none.bin"), "No such file"),
    (lambda entries, folder: entries.update(length="4"), "length 4 is not the 48 bytes"),
    (lambda entries, folder: entries.update(offset="1000000"), "fewer than the 1000048"),
    (lambda entries, folder: entries.update(offset="-1"), "is not a byte count"),
])
def test_external_data_that_is_not_the_models_own_is_refused(tmp_path, edit, message):
    _, path = saved_with_external_data(tmp_path / "model")
    (tmp_path / "w.bin").write_bytes((tmp_path / "model" / "w.bin").read_bytes())
    model = onnx.load(path, load_external_data=False)
    tensor = model.graph.initializer[0]
    entries = {entry.key: entry.value for entry in tensor.external_data}
    edit(entries, tmp_path)
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    onnx.save(model, path)
    result = chainrule_cli("check", path, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_proto_whose_external_data_was_not_loaded_is_refused(tmp_path):
    _, path = saved_with_external_data(tmp_path)
    with pytest.raises(chainrule.ChainruleError, match="onnx.load"):
        chainrule.import_onnx(onnx.load(path, load_external_data=False))


# ---- scikit-learn's converters: ai.onnx.ml ---------------------------------------------------

SKLEARN = ROOT / "tests" / "fixtures" / "onnx" / "sklearn"


@pytest.mark.parametrize("name", sorted(path.stem for path in SKLEARN.glob("*.onnx")))
def test_scikit_learn_models_give_onnxruntimes_outputs(name):
    expected = np.load(SKLEARN / f"{name}.npz")
    model = chainrule.import_onnx(str(SKLEARN / f"{name}.onnx"))
    x = expected["input/X"]
    for backend in ("numpy", "onnxruntime"):
        outputs = model.run(backend=backend, X=x)
        for key in (k for k in expected.files if k.startswith("output/")):
            result = outputs[model.onnx_names[key.removeprefix("output/")]]
            if result.dtype == np.int64:  # the label: exactly
                np.testing.assert_array_equal(result, expected[key])
            else:
                np.testing.assert_allclose(result, expected[key], rtol=1e-5, atol=1e-6)
    printed = decompiled(onnx.load(SKLEARN / f"{name}.onnx"))  # and as a .nn model
    for key, value in printed.run(X=x).items():
        np.testing.assert_allclose(value, model.run(X=x)[key], rtol=1e-6)


def test_a_zipmap_reads_as_the_tensor_of_probabilities_and_says_so():
    model = chainrule.import_onnx(str(SKLEARN / "logistic_regression.onnx"))
    assert any("ZipMap" in note and "[0, 1, 2]" in note for note in model.notes)
    result = chainrule_cli("run", SKLEARN / "logistic_regression.onnx", "--random-inputs",
                           "--dim", "X_0=3")
    assert result.returncode == 0, result.stderr
    assert "ZipMap" in result.stderr


def test_an_unneeded_node_is_pruned_before_its_op_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Relu", ["x"], ["y"]),
             helper.make_node("TreeEnsembleClassifier", ["x"], ["label", "scores"],
                              domain="ai.onnx.ml", name="unused")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[
        helper.make_opsetid("", 18), helper.make_opsetid("ai.onnx.ml", 3)])
    imported = chainrule.import_onnx(model)
    np.testing.assert_array_equal(imported.run(x=-np.ones((2, 3), np.float32))["y"], 0)
    model.graph.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, None))
    with pytest.raises(chainrule.ChainruleError) as caught:
        chainrule.import_onnx(model)
    assert str(caught.value.problems[0]) == "TreeEnsembleClassifier node 'unused': op not supported"


# ---- where an imported param's value comes from ----------------------------------------------

LENET_BN = ROOT / "tests" / "fixtures" / "onnx" / "lenet_bn.onnx"


def test_check_and_import_say_a_params_value_comes_from_the_file(tmp_path):
    checked = chainrule_cli("check", LENET_BN)
    assert checked.returncode == 0, checked.stderr
    assert ("features.1.weight: f32[6] value from lenet_bn.onnx: 'features.1.weight' "
            "(fresh: ones())") in checked.stdout
    assert "= glorot()" not in checked.stdout
    imported = chainrule_cli("import", LENET_BN, "-o", tmp_path / "lenet.nn")
    assert imported.returncode == 0, imported.stderr
    text = (tmp_path / "lenet.nn").read_text()
    assert "= ones()" in text and "# value from lenet_bn.onnx: 'features.1.running_var'" in text


def test_a_decompiled_model_with_the_params_import_wrote_computes_what_the_onnx_file_does(
        tmp_path):
    assert chainrule_cli("import", LENET_BN, "-o", tmp_path / "lenet.nn").returncode == 0
    for model, extra in ((LENET_BN, ()), (tmp_path / "lenet.nn", ("--params",
                                                                 tmp_path / "lenet.npz"))):
        result = chainrule_cli("run", model, *extra, "--random-inputs", "--dim", "B=3",
                               "-o", tmp_path / f"{model.stem}{model.suffix[1:]}.npz")
        assert result.returncode == 0, result.stderr
    original, decompiled = (np.load(tmp_path / name) for name in ("lenet_bnonnx.npz",
                                                                  "lenetnn.npz"))
    (logits,) = original.files
    np.testing.assert_array_equal(original[logits], decompiled[decompiled.files[0]])


# ---- batch norm whose running statistics the exporter merged with its weights ---------------

TIED_BN = ROOT / "tests" / "fixtures" / "onnx" / "tied_bn.onnx"


def test_merged_initializers_are_imported_as_values_of_their_own():
    expected = np.load(TIED_BN.with_suffix(".npz"))
    model = chainrule.import_onnx(str(TIED_BN), loss="cross_entropy")
    assert any("4.weight (= 1.weight)" in note for note in model.notes)
    names = model.onnx_names
    state = {p.value.name for p in model.graph.params if p.kind == "state"}
    assert state == {names[f"{layer}.running_{kind}"] for layer in (1, 4)
                     for kind in ("mean", "var")}
    assert names["4.weight"] != names["1.weight"]
    x = expected["input/x"]
    np.testing.assert_allclose(model.run(outputs=["logits"], x=x)["logits"], expected["output/logits"], rtol=1e-5,
                               atol=1e-6)
    model.train_step(lr=0.0, x=x, y=expected["labels"])  # moves the running statistics only
    for key in (k for k in expected.files if k.startswith("state/")):
        np.testing.assert_allclose(model.params[names[key.removeprefix("state/")]],
                                   expected[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model.params[names["1.weight"]], np.ones(4, np.float32))


# ---- the IR text keeps batch norm's training form ----------------------------------------------

def test_training_a_cir_file_trains_the_model_its_source_is(tmp_path):
    source = ROOT / "examples" / "lenet_digits.nn"
    printed = chainrule_cli("ir", source)
    assert printed.returncode == 0, printed.stderr
    (tmp_path / "lenet.cir").write_text(printed.stdout)
    from_source = chainrule.compile(str(source))
    from_ir = chainrule.compile(str(tmp_path / "lenet.cir"))
    from_ir.set_params(from_source.params)
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = {"x": rng.normal(size=(8, 64)).astype(np.float32),
                 "y": rng.integers(0, 10, size=8)}
        for model in (from_source, from_ir):
            model.train_step(lr=0.1, **batch)
    assert sorted(from_ir.params) == sorted(from_source.params)
    for name, value in from_source.params.items():
        np.testing.assert_allclose(from_ir.params[name], value, rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    x = rng.normal(size=(4, 64)).astype(np.float32)
    np.testing.assert_allclose(from_ir.run(outputs=["logits"], x=x)["logits"],
                               from_source.run(outputs=["logits"], x=x)["logits"], rtol=1e-5)


def ml_model(node, outputs) -> onnx.ModelProto:
    """A model of one ai.onnx.ml node on X: f32[3, 4]."""
    graph = helper.make_graph([node], "ml", [
        helper.make_tensor_value_info("X", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info(name, dtype, None) for name, dtype in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                   helper.make_opsetid("ai.onnx.ml", 3)])


COEFFICIENTS = [0.5, -1.0, 0.25, 2.0, -0.5, 1.5, 0.0, -2.0, 1.0, 1.0, -1.0, 0.5]
ML_NODES = {
    "normalizer_max": (helper.make_node("Normalizer", ["X"], ["Y"], domain="ai.onnx.ml",
                                        norm="MAX"), [("Y", TensorProto.FLOAT)]),
    "normalizer_l1": (helper.make_node("Normalizer", ["X"], ["Y"], domain="ai.onnx.ml",
                                       norm="L1"), [("Y", TensorProto.FLOAT)]),
    "normalizer_l2": (helper.make_node("Normalizer", ["X"], ["Y"], domain="ai.onnx.ml",
                                       norm="L2"), [("Y", TensorProto.FLOAT)]),
    "scaler_one_value": (helper.make_node("Scaler", ["X"], ["Y"], domain="ai.onnx.ml",
                                          offset=[1.0], scale=[0.5]),
                         [("Y", TensorProto.FLOAT)]),
    "regressor_two_targets": (helper.make_node(
        "LinearRegressor", ["X"], ["Y"], domain="ai.onnx.ml", coefficients=COEFFICIENTS[:8],
        intercepts=[0.5, -0.5], targets=2), [("Y", TensorProto.FLOAT)]),
    **{f"classifier_{transform.lower()}": (helper.make_node(
        "LinearClassifier", ["X"], ["label", "scores"], domain="ai.onnx.ml",
        coefficients=COEFFICIENTS, intercepts=[0.1, -0.2, 0.3], classlabels_ints=[7, 3, 5],
        post_transform=transform), [("label", TensorProto.INT64), ("scores", TensorProto.FLOAT)])
        for transform in ("NONE", "SOFTMAX", "LOGISTIC")},
}


@pytest.mark.parametrize("name", sorted(ML_NODES))
def test_ai_onnx_ml_ops_compute_what_onnxruntime_does(name):
    model = ml_model(*ML_NODES[name])
    x = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    x[1] = 0  # a row of zeros: Normalizer leaves it zeros
    x[2] = -np.abs(x[2]) - 0.1  # MAX divides by the greatest value, here a negative one
    expected = onnxruntime_outputs(model, {"X": x})
    imported = chainrule.import_onnx(model)
    results = imported.run(X=x)
    for info, want in zip(model.graph.output, expected, strict=True):
        have = results[imported.onnx_names[info.name]]
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6, err_msg=info.name)
        assert have.dtype == want.dtype


def test_a_constant_nodes_external_data_is_refused_not_read_from_the_working_directory(
        tmp_path):
    value = numpy_helper.from_array(np.ones((2, 3), np.float32), "c")
    value.data_location = TensorProto.EXTERNAL
    value.external_data.add(key="location", value="c.bin")
    value.ClearField("raw_data")
    (tmp_path / "c.bin").write_bytes(np.full(6, 7, np.float32).tobytes())
    nodes = [helper.make_node("Constant", [], ["c"], value=value),
             helper.make_node("Add", ["x", "c"], ["y"])]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]),
        opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "m.onnx")
    result = chainrule_cli("check", "m.onnx", cwd=tmp_path)
    assert result.returncode == 1
    assert "Constant's value keeps its values in an external file" in result.stderr


def test_logical_ops_on_numbers_are_refused_rather_than_folded_into_a_shape():
    """Found by the long fuzz run: an And of int64 dims folded to False, which a Reshape then
    took for a dim."""
    nodes = [helper.make_node("Shape", ["x"], ["shape_x"]),
             helper.make_node("Gather", ["shape_x", "zero"], ["batch"], axis=0),
             helper.make_node("Gather", ["shape_x", "one"], ["six"], axis=0),
             helper.make_node("Unsqueeze", ["batch", "axes"], ["batch_1d"]),
             helper.make_node("And", ["six", "axes"], ["flag"]),
             helper.make_node("Concat", ["batch_1d", "flag"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    constants = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                 numpy_helper.from_array(np.array(1, np.int64), "one"),
                 numpy_helper.from_array(np.array([0], np.int64), "axes")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(chainrule.ChainruleError) as caught:
        chainrule.import_onnx(model)
    assert "And of numbers: its inputs must be bool" in caught.value.render()
    assert "please report it" not in caught.value.render()
