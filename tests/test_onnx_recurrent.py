"""ONNX's RNN, GRU and LSTM imported onto `scan`: every option against onnxruntime on the
original node, on both numpy backends and as chainrule exports it again; gradients against
central differences in float64; and the options chainrule refuses, by name."""
import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

import chainrule
from chainrule.backends import CHECKING_BACKEND
from chainrule.onnx_import import UnsupportedModel
from support.numeric import assert_close, central_difference

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
OUTPUTS = {"RNN": ("Y", "Y_h"), "GRU": ("Y", "Y_h"), "LSTM": ("Y", "Y_h", "Y_c")}
SEQUENCE, BATCH, INPUT, HIDDEN = 5, 3, 4, 3
LENGTHS = np.array([5, 2, 3], np.int32)  # one row as long as the sequence, two shorter


def node_inputs(op, directions, rng, dtype, *, bias=False, lengths=False, initial=False,
                peepholes=False):
    """The node's inputs by ONNX position: name -> array, "" for one left out."""
    gates = GATES[op]

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    arrays = {"X": normal(SEQUENCE, BATCH, INPUT), "W": normal(directions, gates * HIDDEN, INPUT),
              "R": normal(directions, gates * HIDDEN, HIDDEN) * dtype(0.5)}
    optional = [("B", bias, lambda: normal(directions, 2 * gates * HIDDEN)),
                ("sequence_lens", lengths, lambda: LENGTHS),
                ("initial_h", initial, lambda: normal(directions, BATCH, HIDDEN))]
    if op == "LSTM":
        optional += [("initial_c", initial, lambda: normal(directions, BATCH, HIDDEN)),
                     ("P", peepholes, lambda: normal(directions, 3 * HIDDEN))]
    positional = list(arrays.items())
    for name, wanted, make in optional:
        positional.append((name, make()) if wanted else ("", None))
    while positional[-1][0] == "":
        positional.pop()
    return positional


def recurrent_model(op, positional, outputs, *, constants=("sequence_lens",), **attrs):
    """A one-node model: `constants` are initializers, the other inputs graph inputs."""
    dtype = TensorProto.DOUBLE if positional[0][1].dtype == np.float64 else TensorProto.FLOAT
    node = helper.make_node(op, [name for name, _ in positional], list(outputs), name="cell",
                            **{"hidden_size": HIDDEN, **attrs})
    inputs = [helper.make_tensor_value_info(name, dtype, list(array.shape))
              for name, array in positional if name and name not in constants]
    initializers = [numpy_helper.from_array(array, name) for name, array in positional
                    if name in constants]
    graph = helper.make_graph([node], "recurrent", inputs,
                              [helper.make_tensor_value_info(o, dtype, None)
                               for o in outputs if o], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def onnxruntime_outputs(model, feeds) -> dict:
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds), strict=True))


# Each case: (op, attributes, which optional inputs it has, which outputs it asks for).
CASES = {
    "rnn": ("RNN", {}, {}, None),
    "rnn_reverse_bias": ("RNN", {"direction": "reverse"}, {"bias": True}, None),
    "rnn_bidirectional_lengths": ("RNN", {"direction": "bidirectional"},
                                  {"bias": True, "lengths": True, "initial": True}, None),
    "rnn_relu_clip": ("RNN", {"activations": ["Relu"], "clip": 0.7}, {}, None),
    "rnn_leaky_relu": ("RNN", {"activations": ["LeakyRelu"], "activation_alpha": [0.2]}, {},
                       None),
    "rnn_only_final_state": ("RNN", {}, {"bias": True}, ("", "Y_h")),
    "gru": ("GRU", {}, {}, None),
    "gru_linear_before_reset": ("GRU", {"linear_before_reset": 1}, {"bias": True}, None),
    "gru_bidirectional_lengths": ("GRU", {"direction": "bidirectional"},
                                  {"bias": True, "lengths": True, "initial": True}, None),
    "gru_reverse_lengths_lbr": ("GRU", {"direction": "reverse", "linear_before_reset": 1},
                                {"bias": True, "lengths": True}, None),
    "gru_activations": ("GRU", {"activations": ["HardSigmoid", "ScaledTanh"],
                                "activation_alpha": [0.3, 0.8], "activation_beta": [0.4, 1.5]},
                        {"bias": True}, None),
    "gru_softsign_clip": ("GRU", {"activations": ["Sigmoid", "Softsign"], "clip": 0.9}, {},
                          None),
    "lstm": ("LSTM", {}, {}, None),
    "lstm_peepholes": ("LSTM", {}, {"bias": True, "peepholes": True, "initial": True}, None),
    "lstm_input_forget": ("LSTM", {"input_forget": 1}, {"bias": True, "peepholes": True},
                          None),
    "lstm_bidirectional_lengths": ("LSTM", {"direction": "bidirectional"},
                                   {"bias": True, "lengths": True, "initial": True,
                                    "peepholes": True}, None),
    "lstm_reverse_lengths": ("LSTM", {"direction": "reverse"},
                             {"lengths": True, "initial": True}, None),
    "lstm_activations_clip": ("LSTM", {"activations": ["HardSigmoid", "Elu", "Affine"],
                                       "activation_alpha": [0.25, 0.6, 0.5],
                                       "activation_beta": [0.45, 0.1], "clip": 1.2},
                              {"bias": True}, None),
    "lstm_softplus_thresholded": ("LSTM", {"activations": ["Sigmoid", "Softplus",
                                                           "ThresholdedRelu"],
                                           "activation_alpha": [0.1]}, {}, None),
    "lstm_only_cell_state": ("LSTM", {}, {"bias": True}, ("", "", "Y_c")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_forward_matches_onnxruntime_on_every_backend(case):
    op, attrs, present, outputs = CASES[case]
    outputs = outputs or OUTPUTS[op]
    directions = 2 if attrs.get("direction") == "bidirectional" else 1
    positional = node_inputs(op, directions, np.random.default_rng(0), np.float32, **present)
    proto = recurrent_model(op, positional, outputs, **attrs)
    feeds = {name: array for name, array in positional if name and name != "sequence_lens"}
    expected = onnxruntime_outputs(proto, feeds)
    model = chainrule.import_onnx(proto)
    for backend in ("numpy", CHECKING_BACKEND, "onnxruntime"):
        results = model.run(backend=backend, **{model.onnx_names[n]: a for n, a in feeds.items()})
        for name in filter(None, outputs):
            assert_close(results[model.onnx_names[name]], expected[name], 1e-5, atol=1e-6,
                         what=f"{name} on {backend}")


@pytest.mark.parametrize("op", sorted(GATES))
def test_layout_1_is_layout_0_with_batch_first(op):
    # onnxruntime runs layout 0 only: layout 1 is checked against it on transposed data.
    directions = 2
    positional = node_inputs(op, directions, np.random.default_rng(1), np.float32, bias=True,
                             lengths=True, initial=True)
    outputs = OUTPUTS[op]
    feeds = {name: array for name, array in positional if name and name != "sequence_lens"}
    expected = onnxruntime_outputs(recurrent_model(op, positional, outputs,
                                                   direction="bidirectional"), feeds)
    batch_first = {"X": (1, 0, 2), "initial_h": (1, 0, 2), "initial_c": (1, 0, 2)}
    transposed = [(name, array.transpose(batch_first[name]) if name in batch_first else array)
                  for name, array in positional]
    model = chainrule.import_onnx(recurrent_model(op, transposed, outputs, layout=1,
                                                  direction="bidirectional"))
    results = model.run(**{model.onnx_names[name]: array for name, array in transposed
                           if name and name != "sequence_lens"})
    assert_close(results[model.onnx_names["Y"]], expected["Y"].transpose(2, 0, 1, 3), 1e-5,
                 what="Y")
    for name in outputs[1:]:
        assert_close(results[model.onnx_names[name]], expected[name].transpose(1, 0, 2), 1e-5,
                     what=name)


@pytest.mark.parametrize("op, attrs, present", [
    ("RNN", {"direction": "bidirectional"}, {"bias": True, "lengths": True, "initial": True}),
    ("GRU", {"linear_before_reset": 1, "direction": "reverse", "clip": 10.0},
     {"bias": True, "lengths": True, "initial": True}),
    ("GRU", {"direction": "bidirectional"}, {"bias": True, "lengths": True}),
    ("LSTM", {"direction": "bidirectional"},
     {"bias": True, "lengths": True, "initial": True, "peepholes": True}),
])
def test_gradients_match_central_differences_in_float64(op, attrs, present):
    positional = node_inputs(op, 2 if attrs.get("direction") == "bidirectional" else 1,
                             np.random.default_rng(2), np.float64, **present)
    # Every input but X is an initializer, so each is a param with a gradient.
    weights = [name for name, _ in positional if name not in ("", "X", "sequence_lens")]
    proto = recurrent_model(op, positional, OUTPUTS[op],
                            constants=("sequence_lens", *weights), **attrs)
    model = chainrule.import_onnx(proto, loss="mse")
    x = positional[0][1]
    target = np.random.default_rng(3).standard_normal(
        model.run(**{model.onnx_names["X"]: x}, outputs=[model.onnx_names["Y"]])[
            model.onnx_names["Y"]].shape)
    feeds = {model.onnx_names["X"]: x, "y": target}
    grads = model.grad(**feeds)
    objective = model.objective.name
    for name in weights:
        # a copy the differences may write to (an array read from the file may be read-only)
        param = model.params[model.onnx_names[name]] = model.params[model.onnx_names[name]].copy()
        numeric = central_difference(lambda: float(model.run(**feeds)[objective]), param)
        assert_close(grads[model.onnx_names[name]], numeric, 1e-6, atol=1e-9, what=name)


def refusal(op, **attrs) -> str:
    positional = node_inputs(op, 1, np.random.default_rng(0), np.float32)
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(recurrent_model(op, positional, OUTPUTS[op], **attrs))
    (problem,) = caught.value.problems
    assert (problem.op_type, problem.node) == (op, "cell")
    return problem.reason


def test_an_activation_chainrule_lacks_is_refused_by_name():
    assert refusal("GRU", activations=["Sigmoid", "Swish"]).startswith(
        "attribute activations: Swish (supported: affine, elu")


def test_too_few_activations_are_refused():
    assert refusal("LSTM", activations=["Sigmoid", "Tanh"]) == (
        "attribute activations holds 2 names, where LSTM of 1 direction(s) takes 3")


def test_a_layout_or_direction_onnx_lacks_is_refused_by_name():
    assert refusal("RNN", layout=2) == "attribute layout=2 (supported: 0, 1)"
    assert refusal("RNN", direction="sideways") == (
        "attribute direction='sideways' (supported: 'forward', 'reverse', 'bidirectional')")


def test_a_clip_that_is_not_positive_is_refused():
    assert refusal("LSTM", clip=0.0) == "attribute clip=0.0 (it must be positive)"


def test_a_hidden_size_that_disagrees_with_r_is_refused():
    assert refusal("RNN", hidden_size=4) == (
        "R is f32[1, 3, 3], where hidden_size=4 and direction=forward make it [1, 4, 4]")


def test_sequence_lens_read_at_run_time_as_int32_gives_onnxruntimes_outputs():
    positional = with_lengths(node_inputs("GRU", 1, np.random.default_rng(0), np.float32,
                                          lengths=True), [5, 2, 3])
    proto = recurrent_model("GRU", positional, OUTPUTS["GRU"], constants=())
    proto.graph.input[-1].type.tensor_type.elem_type = TensorProto.INT32  # as ONNX types it
    feeds = {name: array for name, array in positional if name}
    expected = onnxruntime_outputs(proto, feeds)
    model = chainrule.import_onnx(proto)
    assert str(model.graph.inputs[-1].type) == "i32[3]"
    results = model.run(**{model.onnx_names[n]: a for n, a in feeds.items()})
    for name in OUTPUTS["GRU"]:
        if name:
            assert_close(results[model.onnx_names[name]], expected[name], 1e-5, atol=1e-6,
                         what=name)


def with_lengths(positional, lengths):
    return [(name, np.array(lengths, np.int32) if name == "sequence_lens" else array)
            for name, array in positional]


@pytest.mark.parametrize("op", sorted(GATES))
def test_a_row_of_length_zero_ends_in_zero_states_as_onnxruntime_gives(op):
    positional = with_lengths(node_inputs(op, 2, np.random.default_rng(2), np.float32,
                                          bias=True, lengths=True, initial=True), [5, 0, 3])
    outputs = OUTPUTS[op]
    proto = recurrent_model(op, positional, outputs, direction="bidirectional")
    feeds = {name: array for name, array in positional if name and name != "sequence_lens"}
    expected = onnxruntime_outputs(proto, feeds)
    model = chainrule.import_onnx(proto)
    results = model.run(**{model.onnx_names[n]: a for n, a in feeds.items()})
    for name in outputs:
        assert_close(results[model.onnx_names[name]], expected[name], 1e-5, atol=1e-6,
                     what=name)


@pytest.mark.parametrize("lengths", [[7, 2, 3], [5, -1, 3]])
def test_sequence_lens_outside_the_sequence_are_refused(lengths):
    positional = with_lengths(node_inputs("GRU", 1, np.random.default_rng(3), np.float32,
                                          lengths=True), lengths)
    with pytest.raises(UnsupportedModel) as caught:
        chainrule.import_onnx(recurrent_model("GRU", positional, OUTPUTS["GRU"]))
    (problem,) = caught.value.problems
    assert problem.reason == (f"sequence_lens {lengths} for a sequence of 5 steps: each lies "
                              f"in [0, 5]")
