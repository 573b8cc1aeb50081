"""The second front end: ONNX models in, chainrule IR out.

`import_graph(path_or_proto, ...)` reads an ONNX model (opset 13 and newer, default domain),
folds its shape computations, maps each node through the op table, and optionally attaches a
loss so that an inference model can be differentiated and trained.
"""
from __future__ import annotations

# Each of these modules registers its converters in the op table.
from . import (attention, convolution, converters, layout, loss_ops,  # noqa: F401
               normalization, resize)
from .context import CONVERTERS, Unsupported
from .folding import FOLDERS
from .importer import Imported, Importer, UnsupportedModel, load_model
from .loss import LOSSES, attach_loss

__all__ = ["import_graph", "Imported", "UnsupportedModel", "Unsupported", "LOSSES",
           "SUPPORTED_OPS"]

# Every ONNX op type the importer reads, folded or converted.
SUPPORTED_OPS = frozenset(CONVERTERS) | frozenset(FOLDERS)


def import_graph(path_or_proto, *, loss: str | None = None, target_input: str = "y",
                 loss_output: str | None = None, trainable=None, freeze=(),
                 dims: dict | None = None) -> Imported:
    """The model's graph and param values. With `loss`, the objective (first output) is that
    loss of `loss_output` (default: the first output) against a new input `target_input`."""
    model, file = load_model(path_or_proto)
    imported = Importer(model, file, trainable=trainable, freeze=freeze, dims=dims).run()
    if loss is not None:
        attach_loss(imported, loss, target_input, loss_output, file)
    return imported
