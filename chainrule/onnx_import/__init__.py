"""The second front end: ONNX models in, chainrule IR out.

`import_graph(path_or_proto, ...)` reads an ONNX model (opset 13 and newer, default domain,
and the `ai.onnx.ml` ops of scikit-learn's linear models),
folds its shape computations, maps each node through the op table, and optionally attaches a
loss so that an inference model can be differentiated and trained.

The converters import onnx, which takes most of a second to load: this package loads them on
first use (`import_graph`, or any name below but LOSSES and check_target_name), so a command
that never reads or writes an ONNX file never pays for it.
"""
from __future__ import annotations

import importlib

from .loss import LOSSES, check_target_name

__all__ = ["import_graph", "Imported", "UnsupportedModel", "Unsupported", "LOSSES",
           "SUPPORTED_OPS", "check_target_name"]

# Each of these modules registers its converters in the op table when imported; functions
# registers one for each op ONNX defines as a function that the others leave out: it comes last.
CONVERTER_MODULES = ("attention", "control_flow", "convolution", "converters", "generators",
                     "layout", "loss_ops", "ml", "normalization", "quantization", "recurrent",
                     "resize", "sampling", "sequences", "signal", "training_ops", "functions")
# The names this package exports from its modules, loaded on first use.
LAZY_NAMES = {"Imported": "importer", "Importer": "importer", "UnsupportedModel": "importer",
              "load_model": "importer", "Unsupported": "context", "CONVERTERS": "context",
              "FOLDERS": "folding", "attach_loss": "loss"}


def _load_converters() -> None:
    for module in CONVERTER_MODULES:
        importlib.import_module(f"{__name__}.{module}")


def __getattr__(name: str):
    if name == "SUPPORTED_OPS":  # every ONNX op type the importer reads, folded or converted
        value = frozenset(__getattr__("CONVERTERS")) | frozenset(__getattr__("FOLDERS"))
    elif name in LAZY_NAMES:
        _load_converters()
        value = getattr(importlib.import_module(f"{__name__}.{LAZY_NAMES[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def import_graph(path_or_proto, *, loss: str | None = None, target_input: str = "y",
                 loss_output: str | None = None, trainable=None, freeze=(),
                 dims: dict | None = None, sequences: dict | None = None):
    """The model's graph and param values (an `Imported`). With `loss`, the objective (first
    output) is that loss of `loss_output` (default: the first output) against a new input
    `target_input`. `sequences` gives each sequence- or optional-typed input's element
    shapes."""
    _load_converters()
    import onnx

    from .importer import Importer, load_model, upgraded
    from .loss import attach_loss

    model, file = load_model(path_or_proto)
    model, notes = upgraded(model, file)
    imported = Importer(model, file, trainable=trainable, freeze=freeze, dims=dims,
                        sequences=sequences, from_path=not isinstance(path_or_proto, onnx.ModelProto)).run()
    imported.notes += notes
    if loss is not None:
        attach_loss(imported, loss, target_input, loss_output, file)
    return imported
