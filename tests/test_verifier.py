"""The IR verifier: accepts what the compiler builds, rejects each broken invariant by name.

Broken graphs come from a freshly compiled mlp (so mutating its shared nodes and values harms no
other test) or from small graphs made with GraphBuilder.
"""
import pytest

import chainrule
from chainrule.ir import (ChainruleError, Graph, GraphBuilder, InitSpec, Node, Param, TensorType,
                          Value, VerifyError, verify)
from chainrule.ir.verify import verify_all
from support.paths import EXAMPLES, ROOT

MLP = ROOT / "examples" / "mlp.nn"


@pytest.fixture
def graph() -> Graph:
    return chainrule.compile(str(MLP)).graph


def node_defining(graph: Graph, name: str) -> Node:
    (node,) = [n for n in graph.nodes if n.output.name == name]
    return node


def rejection(graph: Graph, output_name: str) -> VerifyError:
    """The error verify raises, checked to be one line that names the node's output."""
    with pytest.raises(VerifyError) as info:
        verify(graph)
    message = str(info.value)
    assert "\n" not in message
    assert f"%{output_name}" in message
    return info.value


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_accepts_every_example_forward_and_grad_graph(path):
    model = chainrule.compile(str(path))
    for graph in (model.graph, model.grad_graph()[0]):
        verify(graph)
        assert verify_all(graph) == []


def test_use_before_definition(graph):
    z, h = node_defining(graph, "z"), node_defining(graph, "h")
    i, j = graph.nodes.index(z), graph.nodes.index(h)
    graph.nodes[i], graph.nodes[j] = h, z
    error = rejection(graph, "h")
    assert isinstance(error, ChainruleError) and error.loc == h.loc
    assert str(error) == (f"{h.loc}: %h = relu(%z) : f32[B, 256]: "
                          f"uses %z before it is defined")


def test_wrong_declared_shape(graph):
    h = node_defining(graph, "h")
    h.output.type = TensorType("f32", ("B", 255))
    error = rejection(graph, "h")
    assert error.loc == h.loc
    assert str(error).endswith("declared type f32[B, 255] differs from the inferred type "
                               "f32[B, 256]")


def test_unknown_op(graph):
    h = node_defining(graph, "h")
    h.op = "frobnicate"
    error = rejection(graph, "h")
    assert str(error) == f"{h.loc}: %h = frobnicate(%z) : f32[B, 256]: unknown op 'frobnicate'"


@pytest.mark.parametrize("attrs, rule", [
    ({"perm": (1, 0), "axis": 0}, "op 'transpose' has no attribute 'axis'"),
    ({"perm": 1.5}, "op 'transpose': attribute 'perm' must be ints, not 1.5"),
    ({}, "op 'transpose' needs attribute 'perm'"),
], ids=["unknown-name", "wrong-kind", "missing-required"])
def test_wrong_attribute(graph, attrs, rule):
    transpose = node_defining(graph, "W1.T")
    transpose.attrs = attrs
    error = rejection(graph, "W1.T")
    assert error.loc == transpose.loc
    assert str(error).endswith(rule)


def test_attrs_must_carry_their_defaults(graph):
    total = node_defining(graph, "sum")
    total.attrs = {}
    assert str(rejection(graph, "sum")).endswith("attrs lack their defaults for axes, keepdims")


def test_value_defined_twice(graph):
    h = node_defining(graph, "h")
    graph.nodes.append(Node("relu", h.inputs, {}, h.outputs, h.loc))
    assert str(rejection(graph, "h")).endswith("defines %h a second time")


def test_two_values_sharing_a_name(graph):
    h = node_defining(graph, "h")
    namesake = Value("h", h.output.type)
    graph.nodes.append(Node("relu", h.inputs, {}, (namesake,), h.loc))
    assert str(rejection(graph, "h")).endswith("defines %h, a name another value already has")


def test_repeated_input_is_a_second_definition(graph):
    graph.inputs.append(graph.inputs[0])
    error = rejection(graph, "x")
    assert str(error) == f"{graph.loc}: input %x: f32[B, 784]: defines %x a second time"


def test_undefined_graph_output(graph):
    graph.outputs.append(Value("ghost", TensorType("f32", ())))
    error = rejection(graph, "ghost")
    assert str(error) == (f"{graph.loc}: return %J, %o, %ghost: "
                          f"uses %ghost, which the graph does not define")


def test_the_objective_leads_the_outputs(graph):
    graph.outputs.reverse()
    error = rejection(graph, "J")
    assert str(error) == f"{graph.loc}: return %o, %J: the objective %J is not the first output"


def test_input_from_outside_the_graph(graph):
    h = node_defining(graph, "h")
    h.inputs = (Value("stranger", h.output.type),)
    assert str(rejection(graph, "h")).endswith("uses %stranger, which the graph does not define")


def test_wrong_input_count(graph):
    h = node_defining(graph, "h")
    h.inputs = h.inputs * 2
    error = rejection(graph, "h")
    assert str(error) == (f"{h.loc}: %h = relu(%z, %z) : f32[B, 256]: "
                          f"op 'relu' takes 1 inputs, got 2")


def test_node_with_two_outputs(graph):
    h = node_defining(graph, "h")
    h.outputs += (Value("h2", h.output.type),)
    assert str(rejection(graph, "h")).endswith("has 2 outputs; a node of 'relu' has one")


@pytest.mark.parametrize("param_type, rule", [
    (TensorType("i64", (3,)), "a param needs a float dtype, not i64"),
    (TensorType("f32", ("B", 3)), "a param's dims must be integers, not B"),
], ids=["int-dtype", "symbolic-dim"])
def test_param_rules(param_type, rule):
    graph = Graph("g", params=[Param(Value("W", param_type), InitSpec("zeros"))])
    assert str(rejection(graph, "W")) == f"param %W: {param_type}: {rule}"


def test_verify_all_lists_every_problem_in_graph_order():
    x = Value("x", TensorType("f32", (3,)))
    graph = Graph("g", inputs=[x])
    builder = GraphBuilder(graph)
    graph.outputs = [builder.emit("exp", [builder.emit("relu", [x])])]
    relu, exp = graph.nodes
    relu.op = "frobnicate"
    exp.output.type = TensorType("f64", (3,))
    assert verify_all(graph) == [
        "%relu = frobnicate(%x) : f32[3]: unknown op 'frobnicate'",
        "%exp = exp(%relu) : f64[3]: declared type f64[3] differs from the inferred type f32[3]",
    ]
