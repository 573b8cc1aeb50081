"""An initializer whose values sit in a file beside the model (ONNX's external data).

The file is found as onnx.load finds it, relative to the model's folder, never the working
directory: a stray file of the same name there must not replace the weights. A location that
leaves the model's folder (`../w.bin`, an absolute path, a symlink out) is refused, as is a
file that is not a regular one or holds fewer bytes than the tensor needs; exactly those bytes
are read, whatever its `length` claims.
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path, PurePath

import numpy as np
import onnx
from onnx import numpy_helper

from ..ir import ChainruleError, file_error
from ..ir.errors import printable
from ..ir.limits import MAX_ELEMENTS


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def external_array(tensor: onnx.TensorProto, model_file: str | None) -> np.ndarray:
    """The initializer's values, read from its external file; `model_file` is the model's
    path (None for a model given as a proto, which has no folder to look in)."""
    what = f"initializer '{printable(tensor.name)}'"
    entries = {entry.key: entry.value for entry in tensor.external_data}
    location = entries.get("location", "")
    if model_file is None:
        raise ChainruleError(f"{what} keeps its values in the external file "
                             f"'{printable(location)}', and a "
                             f"model given as a proto has no folder to find it in; load it "
                             f"with onnx.load(path), which reads external data, or pass the "
                             f"path")
    if not location:
        raise file_error(model_file, f"{what} keeps its values in an external file but names "
                                     f"none")
    folder = Path(model_file).resolve().parent
    path = folder / location
    if PurePath(location).is_absolute() or ".." in PurePath(location).parts or \
            not path.resolve().is_relative_to(folder):
        raise file_error(model_file, f"{what}: the external data '{printable(location)}' is "
                                     f"outside the "
                                     f"model's folder, where chainrule reads it only")
    count, itemsize = _size(tensor, what, model_file)
    offset = _number(entries, "offset", what, model_file)
    length = _number(entries, "length", what, model_file)
    if length is not None and length != count * itemsize:
        raise file_error(model_file, f"{what}: the external data's length {length} is not the "
                                     f"{count * itemsize} bytes its shape and dtype take")
    data = _read(path, offset or 0, count * itemsize, f"{what}: its external data "
                 f"'{printable(location)}'", model_file)
    inline = onnx.TensorProto()
    inline.CopyFrom(tensor)
    del inline.external_data[:]
    inline.data_location = onnx.TensorProto.DEFAULT
    inline.raw_data = data
    return numpy_helper.to_array(inline)


def _size(tensor, what: str, model_file: str) -> tuple[int, int]:
    """The tensor's value count and bytes per value, refused when it is too large."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 0
    if tensor.data_type == onnx.TensorProto.STRING or itemsize == 0:
        kind = onnx.TensorProto.DataType.Name(tensor.data_type) \
            if tensor.data_type in onnx.TensorProto.DataType.values() else tensor.data_type
        raise file_error(model_file, f"{what}: external data of dtype {kind} is not supported")
    count = math.prod(tensor.dims)
    if any(d < 0 for d in tensor.dims) or count > MAX_ELEMENTS:
        raise file_error(model_file, f"{what}: the shape {list(tensor.dims)} is not one a "
                                     f"tensor can have (at most {MAX_ELEMENTS:,} values)")
    return count, itemsize


def _number(entries: dict, key: str, what: str, model_file: str) -> int | None:
    if key not in entries:
        return None
    text = entries[key]
    if not text.isdecimal() or len(text) > 19:
        raise file_error(model_file, f"{what}: the external data's {key} {text!r} is not a "
                                     f"byte count")
    return int(text)


def _read(path: Path, offset: int, size: int, what: str, model_file: str) -> bytes:
    """`size` bytes from `offset`; `what` names the file in errors."""
    try:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):
            raise file_error(model_file, f"{what} is not a regular file")
        if offset + size > status.st_size:
            raise file_error(model_file, f"{what} holds {status.st_size} bytes, fewer than the "
                                         f"{offset + size} its offset and size need")
        with open(path, "rb") as file:
            file.seek(offset)
            data = file.read(size)
    except OSError as error:
        raise file_error(model_file, f"{what} cannot be read: {error.strerror}") from None
    if len(data) != size:  # the file shrank after the check
        raise file_error(model_file, f"{what} ended early")
    return data
