"""An op chainrule has no converter for, but which ONNX defines as a function of other ops
(SwiGLU, LinearAttention, CausalConvWithState, ...), imports as that function: its body, for
the node's attributes and input types at the model's opset, inlined by onnx's inliner, whose
nodes are imported into the graph as any others are (control_flow.py, `InlineImporter`).
The converter is registered for each such op of the default and preview domains that no
other module converts or folds, so this module loads after them (CONVERTER_MODULES)."""
from __future__ import annotations

import onnx
import onnx.inliner
from onnx import helper

from ..ir.types import ONNX_DTYPES
from .context import CONVERTERS, PREVIEW_DOMAIN, Unsupported, converter
from .control_flow import InlineImporter
from .folding import FOLDERS


def function_versions(node, opset: int, domain: str) -> list[int]:
    """The opsets at which ONNX defines the node's op as a function of other ops, up to
    `opset`."""
    schema = onnx.defs.get_schema(node.op_type, opset, domain)
    return sorted(v for v in (*schema.function_opset_versions,
                              *schema.context_dependent_function_opset_versions) if v <= opset)


def import_function_body(ctx) -> list:
    opset, domain = ctx.importer.opset_of(ctx.node)
    if not function_versions(ctx.node, opset, domain):
        raise Unsupported(f"ONNX defines {ctx.node.op_type} as a function only at opsets "
                          f"newer than the model's {opset}")
    for attribute in ctx.node.attribute:
        ctx.read.add(attribute.name)  # the body reads them
    node = _with_defaults(ctx.node, onnx.defs.get_schema(ctx.node.op_type, opset, domain))
    body = _function(ctx, node, opset, domain)
    model = helper.make_model(helper.make_graph([node], "function", [], []),
                              opset_imports=list(ctx.importer.model.opset_import),
                              functions=[body])
    try:
        inlined = onnx.inliner.inline_selected_functions(model, [(body.domain, body.name)])
    except RuntimeError as error:  # a body written at another opset than the model's
        raise Unsupported(f"ONNX's function for {node.op_type} cannot be inlined at opset "
                          f"{opset} ({error})") from None
    outputs = [helper.make_value_info(name, onnx.TypeProto()) for name in node.output if name]
    graph = helper.make_graph(inlined.graph.node, f"{node.op_type}_function", [], outputs)
    try:
        results = iter(InlineImporter(ctx.importer, graph).import_body([]))
    except Unsupported as error:
        raise _asking_for_inputs(ctx, error, graph.node) from None
    return [next(results) if name else None for name in node.output]


def _asking_for_inputs(ctx, error: Unsupported, nodes) -> Unsupported:
    """A body that needs one of its values at import time (HannWindow's Range needs the
    window's size) needs the node's inputs that value is computed from: the refusal asks for
    the first that is not a constant, so that the question reaches the model's own inputs."""
    if error.needs_constant is None:
        return error
    feeding = _inputs_feeding(nodes, error.needs_constant, set(ctx.node.input))
    for index, name in enumerate(ctx.node.input):
        if name in feeding and ctx.known(index) is None:
            return Unsupported(f"{error}, computed from input '{name}'", needs_constant=name,
                               hint=error.hint)
    return error


def _inputs_feeding(nodes, name: str, inputs: set[str]) -> set[str]:
    """The names among `inputs` that the value `name` is computed from in `nodes`."""
    producers = {output: node for node in nodes for output in node.output}
    seen, frontier = set(), [name]
    while frontier:
        current = frontier.pop()
        if current in seen:
            continue
        seen.add(current)
        if current in producers:
            frontier.extend(i for i in producers[current].input if i)
    return seen & inputs


def _with_defaults(node, schema):
    """The node with each attribute it leaves out given its default: the body refers to the
    node's attributes, and one left out would leave the inner op at its own default."""
    complete = onnx.NodeProto()
    complete.CopyFrom(node)
    given = {attribute.name for attribute in node.attribute}
    complete.attribute.extend(spec.default_value for name, spec in schema.attributes.items()
                              if name not in given and spec.default_value.name)
    return complete


def _function(ctx, node, opset: int, domain: str) -> onnx.FunctionProto:
    """The op's body at the newest of its function versions up to `opset`; one that depends
    on the input types is built for these."""
    schema = onnx.defs.get_schema(node.op_type, opset, domain)
    version = function_versions(node, opset, domain)[-1]
    body = onnx.FunctionProto()
    if version in schema.function_opset_versions:
        body.ParseFromString(schema.get_function_with_opset_version(version))
    else:
        types = [_type_proto(ctx, index).SerializeToString() for index in range(len(node.input))]
        body.ParseFromString(schema.get_context_dependent_function_with_opset_version(
            version, node.SerializeToString(), types))
    if not body.node:
        raise Unsupported(f"ONNX defines {node.op_type} by a function it could not build for "
                          f"these inputs")
    body.name, body.domain = node.op_type, node.domain
    return body


def _type_proto(ctx, index: int) -> onnx.TypeProto:
    if not ctx.has_input(index):
        return onnx.TypeProto()
    value_type = ctx.type_of(index)
    shape = [d if isinstance(d, int) else str(d) for d in value_type.shape]
    return helper.make_tensor_type_proto(ONNX_DTYPES[value_type.dtype], shape)


for _schema in onnx.defs.get_all_schemas():
    if _schema.domain in ("", PREVIEW_DOMAIN) and _schema.name not in CONVERTERS and \
            _schema.name not in FOLDERS and (_schema.has_function or
                                             _schema.has_context_dependent_function):
        converter(_schema.name)(import_function_body)
