"""Layers: definitions that own their params, instances whose params are namespaced as
PyTorch's state_dict keys are, lists of instances called in a loop, and the located errors."""
import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError
from chainrule.ir.dsl_printer import dsl_names, print_dsl
from support.cli import chainrule as chainrule_cli
from support.numeric import assert_close

LAYERS = """layer Linear(in_features, out_features, bias=true) {
    param weight: f32[out_features, in_features] = glorot()
    if bias {
        param bias_: f32[out_features] = normal(0.0, 0.1)
    }
    forward(x) {
        y = x @ weight.T
        if bias { y = y + bias_ }
        return y
    }
}

layer Block(width) {
    layer fc1 = Linear(width, width)
    layer fc2 = Linear(width, width)
    forward(x) {
        return x + fc2(relu(fc1(x)))
    }
}
"""
LAYERED = LAYERS + """
model m(x: f32[B, 8], y: i64[B]) {
    layer stem = Linear(8, 16)
    layer blocks = [Block(16), Block(16), Block(16)]
    layer head = Linear(16, 3, bias=false)
    h = stem(x)
    for i in range(3) {
        h = blocks[i](h)
    }
    return cross_entropy(head(h), y)
}
"""
# The same model with its params declared by hand and passed to functions.
FLAT = """def linear(x, w, b) { return x @ w.T + b }
def block(x, w1, b1, w2, b2) { return x + linear(relu(linear(x, w1, b1)), w2, b2) }

model m(x: f32[B, 8], y: i64[B]) {
    param stem_w: f32[16, 8] = glorot()
    param stem_b: f32[16] = zeros()
""" + "".join(f"""    param b{i}_w1: f32[16, 16] = glorot()
    param b{i}_b1: f32[16] = zeros()
    param b{i}_w2: f32[16, 16] = glorot()
    param b{i}_b2: f32[16] = zeros()
""" for i in range(3)) + """    param head_w: f32[3, 16] = glorot()
    h = linear(x, stem_w, stem_b)
""" + "".join(f"    h = block(h, b{i}_w1, b{i}_b1, b{i}_w2, b{i}_b2)\n" for i in range(3)) + """
    return cross_entropy(h @ head_w.T, y)
}
"""
# Layered name -> flat name.
FLAT_NAMES = {"stem.weight": "stem_w", "stem.bias": "stem_b", "head.weight": "head_w"} | {
    f"blocks.{i}.fc{k}.{kind}": f"b{i}_{'w' if kind == 'weight' else 'b'}{k}"
    for i in range(3) for k in (1, 2) for kind in ("weight", "bias")}


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(5, 8)).astype(np.float32), "y": rng.integers(0, 3, size=5)}


def layered_and_flat():
    layered = chainrule.compile(source=LAYERED)
    flat = chainrule.compile(source=FLAT)
    flat.set_params({FLAT_NAMES[name]: value for name, value in layered.params.items()})
    return layered, flat


def test_params_are_named_by_their_instance_path_as_torch_names_state_dict_keys():
    model = chainrule.compile(source=LAYERED)
    assert list(model.params) == ["stem.weight", "stem.bias"] + [
        f"blocks.{i}.fc{k}.{kind}" for i in range(3) for k in (1, 2)
        for kind in ("weight", "bias")] + ["head.weight"]
    assert model.params["blocks.1.fc2.weight"].shape == (16, 16)
    assert model.params["head.weight"].shape == (3, 16)


def test_a_layered_model_computes_what_the_flat_model_with_functions_does():
    layered, flat = layered_and_flat()
    data = batch()
    assert_close(layered.run(**data)["cross_entropy"], flat.run(**data)["cross_entropy"],
                 rtol=1e-6)


def test_gradients_by_layered_name_equal_the_flat_models():
    layered, flat = layered_and_flat()
    data = batch()
    layered_grads, flat_grads = layered.grad(**data), flat.grad(**data)
    for name, flat_name in FLAT_NAMES.items():
        assert_close(layered_grads[name], flat_grads[flat_name], rtol=1e-5, atol=1e-7,
                     what=name)


def test_onnxruntime_runs_the_layered_model_as_numpy_does():
    model = chainrule.compile(source=LAYERED)
    data = batch()
    assert_close(model.run(backend="onnxruntime", **data)["cross_entropy"],
                 model.run(**data)["cross_entropy"], rtol=1e-5)


def test_training_steps_lower_the_loss_and_update_every_instance():
    model = chainrule.compile(source=LAYERED)
    data = batch()
    before = {name: value.copy() for name, value in model.params.items()}
    losses = [model.train_step(lr=0.1, **data)["cross_entropy"] for _ in range(5)]
    assert losses[-1] < losses[0]
    assert all(not np.array_equal(before[name], model.params[name]) for name in before)


TORCH_MLP = LAYERS + """
model mlp(x: f32[B, 4]) {
    layer stem = Linear(4, 8)
    layer blocks = [Block(8), Block(8)]
    layer head = Linear(8, 3)
    h = stem(x)
    for i in range(2) {
        h = blocks[i](h)
    }
    return head(h)
}
"""


def torch_like_state_dict(seed=0):
    """The state_dict keys of torch's `stem = Linear(4, 8)`, `blocks = ModuleList([Block(8),
    Block(8)])` (each with Linear fc1 and fc2) and `head = Linear(8, 3)`, with values."""
    rng = np.random.default_rng(seed)
    shapes = {"stem.weight": (8, 4), "stem.bias": (8,)}
    for i in range(2):
        for fc in ("fc1", "fc2"):
            shapes |= {f"blocks.{i}.{fc}.weight": (8, 8), f"blocks.{i}.{fc}.bias": (8,)}
    shapes |= {"head.weight": (3, 8), "head.bias": (3,)}
    return {key: rng.normal(size=shape).astype(np.float32) for key, shape in shapes.items()}


def test_a_state_dict_saved_as_npz_loads_by_name_and_gives_numpys_outputs(tmp_path):
    state = torch_like_state_dict()
    np.savez(tmp_path / "state.npz", **state)
    model = chainrule.compile(source=TORCH_MLP)
    with np.load(tmp_path / "state.npz") as saved:
        model.set_params(dict(saved))
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)

    def linear(h, name):
        return h @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    h = linear(x, "stem")
    for i in range(2):
        h = h + linear(np.maximum(linear(h, f"blocks.{i}.fc1"), 0), f"blocks.{i}.fc2")
    (output,) = model.run(x=x).values()
    assert_close(output, linear(h, "head"), rtol=1e-5, atol=1e-6)


def test_an_instance_beside_an_argument_of_its_name_is_saved_less_its_trailing_underscore():
    """As torch's ResNet block takes `downsample` and keeps it as `self.downsample`."""
    source = LAYERS + """
layer Residual(width, downsample=false) {
    if downsample {
        layer downsample_ = Linear(width, width, bias=false)
    }
    layer fc = Linear(width, width)
    forward(x) {
        skip = x
        if downsample { skip = downsample_(x) }
        return skip + fc(x)
    }
}
model m(x: f32[B, 4]) {
    layer blocks = [Residual(4, downsample=true), Residual(4)]
    return blocks[1](blocks[0](x))
}
"""
    model = chainrule.compile(source=source)
    assert list(model.params) == ["blocks.0.downsample.weight", "blocks.0.fc.weight",
                                  "blocks.0.fc.bias", "blocks.1.fc.weight", "blocks.1.fc.bias"]


def test_the_decompiled_layered_model_computes_the_same():
    model = chainrule.compile(source=LAYERED)
    printed = chainrule.compile(source=print_dsl(model.graph))
    names = dsl_names(model.graph)
    assert names["blocks.1.fc2.weight"].isidentifier()
    printed.set_params({names[name]: value for name, value in model.params.items()})
    data = batch()
    (before,), (after,) = model.run(**data).values(), printed.run(**data).values()
    assert_close(after, before, rtol=1e-6)


MODEL_WITH = "model m(x: f32[B, 4]) {{\n{body}\n}}\n"
ERRORS = [
    (LAYERS + MODEL_WITH.format(body="    layer a = Lineer(4, 4)\n    return a(x)"),
     21, 15, "unknown layer 'Lineer'; did you mean 'Linear'?"),
    (LAYERS + MODEL_WITH.format(body="    layer a = Linear(4)\n    return a(x)"),
     21, 15, "Linear() is missing argument 'out_features'"),
    (LAYERS + MODEL_WITH.format(body="    layer a = Linear(4, 4)\n    return a(x, x)"),
     22, 17, "takes at most 1 argument"),
    (LAYERS + MODEL_WITH.format(body="    layer a = Linear(4, 4)\n    return a + x"),
     22, 12, "'a' is a layer, not a value; call it: a(x)"),
    (LAYERS + MODEL_WITH.format(body="    layer a = [Linear(4, 4)]\n    return a(x)"),
     22, 12, "'a' is a list of layers; call one of them: a[i](x)"),
    (LAYERS + MODEL_WITH.format(body="    h = x\n    return h(x)"),
     22, 12, "'h' is a tensor (f32[B, 4]), not a layer or a function"),
    (LAYERS + MODEL_WITH.format(body="    h = x\n    return h[0](x)"),
     22, 12, "'h' is not a list of layers"),
    (LAYERS + MODEL_WITH.format(body="    layer a = [Linear(4, 4)]\n    return a[1](x)"),
     22, 14, "index 1 is out of range for the 1 layers of 'a'"),
    ("def f(x) {\n    param w: f32[4] = zeros()\n    return x\n}\n"
     + MODEL_WITH.format(body="    return f(x)"),
     2, 11, "params are declared in a model or a layer, not in a function"),
    ("layer L(n) {\n    param w: f32[n] = zeros()\n    forward(x) { return x * w }\n}\n"
     + MODEL_WITH.format(body="    layer a = L(x)\n    return a(x)"),
     6, 17, "a layer's arguments are known when compiling"),
    ("layer L(n) {\n    y = n\n    forward(x) { return x }\n}\n"
     + MODEL_WITH.format(body="    layer a = L(1)\n    return a(x)"),
     2, 5, "computing goes in forward"),
    ("layer L(n) {\n    param w: f32[n] = zeros()\n}\n" + MODEL_WITH.format(body="    return x"),
     1, 7, "layer 'L' defines one forward(...) { ... } in its body, found 0"),
    ("layer L() {\n    layer inner = L()\n    forward(x) { return x }\n}\n"
     + MODEL_WITH.format(body="    layer a = L()\n    return a(x)"),
     2, 19, "layer 'L' contains itself (L -> L)"),
    (LAYERS + MODEL_WITH.format(body="    layer a = Linear(4, 4)\n    layer a = Linear(4, 4)\n"
                                     "    return a(x)"),
     22, 11, "'a' is already defined (at line 21); a layer is named once"),
    (LAYERS + MODEL_WITH.format(body="    for i in range(2) {\n        layer a = Linear(4, 4)\n"
                                     "    }\n    return x"),
     22, 15, "layers are instantiated in a model or a layer's body, not in a loop"),
    ("layer L(n) {\n    param b: f32[n] = zeros()\n    param b_: f32[n] = zeros()\n"
     "    forward(x) { return x * b * b_ }\n}\n"
     + MODEL_WITH.format(body="    layer a = L(4)\n    return a(x)"),
     3, 11, "a param saved as 'a.b' is already defined (at line 2)"),
    (LAYERS + MODEL_WITH.format(body="    layer a = Linear(4, 4)\n    layer a_ = Linear(4, 4)\n"
                                     "    return a(a_(x))"),
     22, 11, "a layer saved as 'a' is already defined (at line 21)"),
    ("layer L(b) {\n    param b: f32[4] = zeros()\n    forward(x) { return x * b }\n}\n"
     + MODEL_WITH.format(body="    layer a = L(4)\n    return a(x)"),
     2, 11, "'b' is already defined (at line 1)"),
    (MODEL_WITH.format(body="    forward(y) { return y }\n    return x"),
     2, 5, "forward(...) is defined in a layer's body, not in a model"),
]


@pytest.mark.parametrize("source, line, column, message", ERRORS)
def test_layer_mistakes_are_located_errors(source, line, column, message):
    with pytest.raises(ChainruleError) as caught:
        chainrule.compile(source=source, filename="layers.nn")
    assert message in caught.value.message
    assert (caught.value.file, caught.value.line, caught.value.col) == \
        ("layers.nn", line, column)


def test_a_layer_list_indexed_by_a_scan_loops_variable_is_an_error_the_loop_unrolls_past():
    source = TORCH_MLP.replace("x: f32[B, 4]", "x: f32[B, 4], steps: f32[T]").replace(
        "range(2)", "range(T)")
    with pytest.raises(ChainruleError, match="known when compiling"):
        chainrule.compile(source=source, loops="scan")


def test_the_command_line_loads_and_saves_params_by_their_layered_names(tmp_path):
    (tmp_path / "mlp.nn").write_text(
        TORCH_MLP.replace("x: f32[B, 4]", "x: f32[B, 4], y: i64[B]").replace(
            "return head(h)", "return cross_entropy(head(h), y)"))
    state = torch_like_state_dict()
    np.savez(tmp_path / "state.npz", **state)
    x = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(6) % 3)
    result = chainrule_cli("train", tmp_path / "mlp.nn", "--params", tmp_path / "state.npz",
                           "--data", tmp_path / "data.npz", "--epochs", "1",
                           "--freeze", "blocks.1.fc2.weight", "-o", tmp_path / "trained.npz")
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "trained.npz") as trained:
        assert sorted(trained.files) == sorted(state)
        assert np.array_equal(trained["blocks.1.fc2.weight"], state["blocks.1.fc2.weight"])


CELL = """layer Cell(n) {
    param W: f32[n, n] = glorot()
    param U: f32[n, 2] = glorot()
    forward(x, h) { return tanh(x @ U.T + h @ W.T) }
}
model rnn(x: f32[B, T, 2]) {
    layer cell = Cell(4)
    h = zeros((B, 4))
    for t in range(T) {
        h = cell(x[:, t], h)
    }
    return sum(h * h)
}
"""


def test_an_instance_called_in_a_scans_body_reads_its_params_from_outside():
    model = chainrule.compile(source=CELL, loops="scan")
    unrolled = chainrule.compile(source=CELL, dims={"T": 5}, loops="unroll")
    assert "scan" in [node.op for node in model.graph.nodes] and list(model.params) == [
        "cell.W", "cell.U"]
    unrolled.set_params(model.params)
    x = np.random.default_rng(3).normal(size=(3, 5, 2)).astype(np.float32)
    grads, expected = model.grad(x=x), unrolled.grad(x=x)
    for name in ("sum", "cell.W", "cell.U"):
        assert_close(grads[name], expected[name], rtol=1e-5, atol=1e-7, what=name)


def test_a_long_loop_over_a_layer_list_unrolls_in_auto_since_a_scan_cannot_index_it():
    source = LAYERS + ("model m(x: f32[B, 4]) {\n    layer fcs = ["
                       + ", ".join(["Linear(4, 4)"] * 20) + "]\n    h = x\n"
                       "    for i in range(20) {\n        h = tanh(fcs[i](h))\n    }\n"
                       "    return sum(h)\n}\n")
    model = chainrule.compile(source=source, loops="auto")
    assert "scan" not in [node.op for node in model.graph.nodes]
    x = np.random.default_rng(4).normal(size=(2, 4)).astype(np.float32)
    h = x
    for i in range(20):
        h = np.tanh(h @ model.params[f"fcs.{i}.weight"].T + model.params[f"fcs.{i}.bias"])
    (output,) = model.run(x=x).values()
    assert_close(output, np.sum(h), rtol=1e-5)
