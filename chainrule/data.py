"""Data as users have it: reading .npz, .npy, CSV and IDX files, and binding their arrays to a
model's inputs (by name, by `--map`, or by role), with casts that lose nothing.

Every reader refuses pickles. Binding never guesses silently: each cast, flatten, role match and
ignored array is reported as a note, and a cast that would change a value's meaning is refused.
"""
from __future__ import annotations

import csv
import gzip
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends.feeds import check_arrays, dtype_name, quoted
from .fileio import (MAX_TEXT_BYTES, check_read_within, load_npy, load_npz, open_bounded,
                     open_for_reading, reading)
from .ir import ChainruleError, Value, file_error
from .ir.limits import MAX_ELEMENTS, MAX_RANK, check_allocation
from .ir.types import (DTYPE_OF_NUMPY_NAME, DTYPES, ML_DTYPES, NARROW_INT_DTYPES, UNKNOWN,
                       TensorType, int_range, is_int, numpy_dtype)

FEATURES, LABELS = "features", "labels"  # roles of arrays that carry no model names


@dataclass
class Dataset:
    """Named arrays read from one or more files.

    `origin` says which file each array came from (for messages); `roles` marks arrays whose
    names come from the format, not from the user (a CSV's feature columns, an IDX file's
    images), so they can bind to an input of another name when nothing else does.
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, array: np.ndarray, path, role: str | None = None) -> None:
        self.arrays[name] = array
        self.origin[name] = str(path)
        if role:
            self.roles[name] = role
        else:
            self.roles.pop(name, None)

    def update(self, other: Dataset) -> None:
        for name, array in other.arrays.items():
            self.add(name, array, other.origin[name], other.roles.get(name))

    @property
    def files(self) -> str:
        return ", ".join(dict.fromkeys(self.origin.values())) or "(no file)"


# ---- formats ----------------------------------------------------------------------------------

IDX_NAME = re.compile(r"idx\d-ubyte(\.gz)?$")
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FORMATS = ".npz, .npy, .csv and IDX (MNIST's *-idx3-ubyte, optionally .gz)"


def data_format(path) -> str:
    """'npz', 'npy', 'csv' or 'idx', from the name, else from the first bytes."""
    name = Path(path).name.lower()
    for suffix in ("npz", "npy", "csv"):
        if name.endswith("." + suffix):
            return suffix
    if IDX_NAME.search(name):
        return "idx"
    with open_for_reading(path) as file:
        head = file.read(4)
    if head.startswith(b"PK"):
        return "npz"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"\x1f\x8b") or (head[:2] == b"\0\0" and head[2:3] and
                                        head[2] in IDX_DTYPES):
        return "idx"
    raise file_error(path, f"unknown data format; chainrule reads {FORMATS}")


def read_dataset(path, label_column: str | None = None) -> Dataset:
    """Every array in a data file. A CSV file gives `features` (and, with `label_column`, that
    column under its own name); an IDX images file gives `images`, and `labels` when the
    matching labels file lies beside it."""
    kind = data_format(path)
    if label_column is not None and kind != "csv":
        raise file_error(path, f"--label-column applies to CSV files, not {kind}")
    data = Dataset()
    if kind == "npz":
        for name, array in load_npz(path).items():
            data.add(name, array, path)
    elif kind == "npy":
        data.add(Path(path).name.split(".")[0], load_npy(path), path, FEATURES)
    elif kind == "csv":
        data = read_csv(path, label_column)
    else:
        images = read_idx(path)
        role = LABELS if images.ndim == 1 else FEATURES
        data.add("labels" if role == LABELS else "images", images, path, role)
        labels_path = matching_labels_file(path)
        if role == FEATURES and labels_path is not None:
            data.add("labels", read_idx(labels_path), labels_path, LABELS)
    return data


def read_array(path) -> np.ndarray:
    """The one array in a .npy or IDX file (for `--input NAME=FILE`)."""
    kind = data_format(path)
    if kind == "npy":
        return load_npy(path)
    if kind == "idx":
        return read_idx(path)
    raise file_error(path, f"--input NAME=FILE takes one array, from a .npy or IDX "
                         f"file; give a {kind} file with --inputs/--data")


def read_csv(path, label_column: str | None = None) -> Dataset:
    """A CSV file with a header row: the label column (if named) and the other columns as one
    float64 matrix. Labels that are all whole numbers become int64. Errors name the file line
    (counting from 1, the header being line 1), as an editor shows it."""
    with reading(path, "CSV"):
        header, values = _csv_rows(path)
    data = Dataset()
    features = values
    if label_column is not None:
        if label_column not in header:
            raise file_error(path, f"no column named '{label_column}'; the columns are "
                                 f"{_listed(header)}")
        index = header.index(label_column)
        labels = values[:, index]
        if np.all(labels == np.round(labels)):
            labels = labels.astype(np.int64)
        data.add(label_column, labels, path, LABELS)
        features = np.delete(values, index, axis=1)
    data.add(FEATURES, features, path, FEATURES)
    return data


# Text parsed at a time: the memory a CSV file takes beyond its matrix.
CSV_BLOCK_BYTES = 1 << 18


def _csv_rows(path) -> tuple[list[str], np.ndarray]:
    """The header and the rows as a float64 matrix.

    The matrix is allocated once, for as many rows as the file has lines (checked against free
    memory first), and filled a block of lines at a time, so reading takes the matrix's memory
    and one block's, not the text's many times over as Python strings."""
    with open_bounded(path, MAX_TEXT_BYTES, "CSV") as (file, size):
        first = file.readline()
        header = next(csv.reader([first.decode("utf-8-sig").rstrip("\n")]), None)
        if not header:
            raise file_error(path, "empty; a CSV file starts with a header row")
        header = [name.strip() for name in header]
        check_read_within(path, file.tell(), size)
        capacity = _lines_left(file, size)
        check_allocation(f"{path} ({capacity:,} lines of {len(header)} columns)",
                         capacity * len(header) * 8)
        values = np.empty((capacity, len(header)))
        filled, number = 0, 2
        while block := file.read(CSV_BLOCK_BYTES):
            lines = (block + file.readline()).decode("utf-8").split("\n")
            rows = _csv_block(path, lines, number, header)
            number += len(lines) - 1  # the last piece ends at the next block's first line
            check_read_within(path, file.tell(), size)
            if filled + len(rows) > capacity:  # rewritten since its lines were counted
                raise file_error(path, "changed while being read")
            values[filled:filled + len(rows)] = rows
            filled += len(rows)
    values.resize((filled, len(header)), refcheck=False)  # shrinking keeps the memory in place
    return header, values


def _lines_left(file, size: int) -> int:
    """How many lines the rest of `file` holds (at most), counted a piece at a time; the file
    is left where it was."""
    start, count = file.tell(), 1
    while piece := file.read(CSV_BLOCK_BYTES):
        count += piece.count(b"\n")
        if file.tell() > size:
            break
    file.seek(start)
    return count


def _csv_block(path, lines: list[str], first_number: int, header: list[str]) -> np.ndarray:
    """The rows of a block of lines, the first being file line `first_number` (blank and
    comment lines hold none)."""
    numbered = [(number, line) for number, line in enumerate(lines, start=first_number)
                if line.lstrip() and not line.lstrip().startswith("#")]
    if not numbered:  # numpy warns of text with no rows
        return np.empty((0, len(header)))
    try:
        rows = np.loadtxt([line for _, line in numbered], delimiter=",", dtype=np.float64,
                          ndmin=2, quotechar='"')
    except ValueError as error:
        raise file_error(path, _first_bad_line(numbered, header) or
                         f"not numeric CSV after the header row ({error})") from None
    if rows.shape[1] != len(header):
        raise file_error(path, _first_bad_line(numbered, header) or
                         f"rows have {rows.shape[1]} fields, the header names {len(header)}")
    _refuse_non_finite_rows(path, rows, header, [number for number, _ in numbered])
    return rows


def _first_bad_line(numbered, header: list[str]) -> str | None:
    """What is wrong with the first row numpy could not read, and on which line."""
    for number, line in numbered:
        fields = next(csv.reader([line.split("#")[0].rstrip("\r")]))
        if len(fields) != len(header):
            return f"line {number} has {len(fields)} fields, the header names {len(header)}"
        for name, text in zip(header, fields, strict=True):
            try:
                float(text)
            except ValueError:
                return (f"not numeric CSV after the header row: line {number}, column "
                        f"'{name}' holds '{text.strip()}'")
    return None


def _refuse_non_finite_rows(path, values: np.ndarray, header: list[str], lines: list[int]):
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        row, column = bad[0]
        raise file_error(path, f"line {lines[row]}, column '{header[column]}': "
                               f"{values[row, column]}; {NON_FINITE_HINT}")


NON_FINITE_HINT = ("data must be finite (a NaN or inf would make every loss and gradient NaN); "
                   "drop or fill the missing values first")


def read_idx(path) -> np.ndarray:
    """An array in the IDX format (big-endian; gzipped or not), read with numpy alone. The
    size the header promises is checked (against the file's size, or for a gzipped file
    against the bytes it inflates to, read a piece at a time) before it is allocated, so a
    small file promising gigabytes is refused."""
    with reading(path, "IDX"), open_for_reading(path) as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        file = gzip.GzipFile(fileobj=raw) if gzipped else raw
        magic = file.read(4)
        if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in IDX_DTYPES:
            raise file_error(path, "not an IDX file (it does not start with the IDX magic "
                                   "number)")
        dtype, rank = np.dtype(IDX_DTYPES[magic[2]]), magic[3]
        if rank > MAX_RANK:
            raise file_error(path, f"the header gives {rank} dims; a tensor has at most "
                                   f"{MAX_RANK}")
        header = file.read(4 * rank)
        if len(header) < 4 * rank:
            raise file_error(path, "truncated IDX header")
        shape = tuple(int(d) for d in np.frombuffer(header, ">u4"))
        size = _idx_size(path, shape, dtype)
        if not gzipped:
            _check_idx_file_size(path, shape, size, os.fstat(raw.fileno()).st_size - raw.tell())
        body = _read_at_most(file, size)
        if len(body) < size:
            raise file_error(path, f"truncated: the header promises {list(shape)} "
                                 f"({size:,} bytes of data), the file holds {len(body):,}")
        if file.read(1):
            raise file_error(path, f"more data than the header's shape {list(shape)}")
        return np.frombuffer(body, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_size(path, shape: tuple, dtype: np.dtype) -> int:
    """The bytes of data the header promises, once it is known they could be held. A dim
    of size 0 promises none: the array is empty, as a .npy of that shape is."""
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise file_error(path, f"the header promises {list(shape)}, {count:,} values, more "
                               f"than the {MAX_ELEMENTS:,} a tensor may hold")
    check_allocation(f"{path} (the header promises {list(shape)})", count * dtype.itemsize)
    return count * dtype.itemsize


def _check_idx_file_size(path, shape: tuple, size: int, held: int) -> None:
    if held < size:
        raise file_error(path, f"truncated: the header promises {list(shape)} ({size:,} bytes "
                               f"of data), the file holds {held:,}")
    if held > size:
        raise file_error(path, f"more data than the header's shape {list(shape)}")


IDX_PIECE = 1 << 24


def _read_at_most(file, size: int) -> bytearray:
    """Up to `size` bytes, fewer at the end of `file`; memory grows with what is read, not with
    what was promised."""
    body = bytearray()
    while len(body) < size:
        piece = file.read(min(IDX_PIECE, size - len(body)))
        if not piece:
            break
        body += piece
    return body


def matching_labels_file(images_path) -> Path | None:
    """MNIST's naming: train-images-idx3-ubyte(.gz) lies beside train-labels-idx1-ubyte(.gz)."""
    path = Path(images_path)
    name = path.name.replace("images", "labels").replace("idx3", "idx1")
    candidate = path.with_name(name)
    return candidate if name != path.name and candidate.is_file() else None


# ---- binding ----------------------------------------------------------------------------------

@dataclass
class Bound:
    """Arrays by model input name, what was said about them, and the inputs nothing fed."""

    arrays: dict[str, np.ndarray]
    notes: list[str]
    missing: list[Value]
    origin: dict[str, str]  # input name -> the file its array came from


def bind_inputs(inputs: list[Value], data: Dataset, mapping: dict[str, str] | None = None,
                *, strict: bool = False, label_inputs=(), reader: str = "the model") -> Bound:
    """Which array feeds each of `inputs`: the one `mapping` names, else the one of the input's
    name, else the only one whose role fits (`label_inputs` name inputs that take class
    labels). Arrays left over are ignored with a note, or refused when `strict`. `mapping`
    may name inputs that are not among `inputs` (a model's inputs that the outputs being
    computed do not need): see check_mapping."""
    mapping = dict(mapping or {})
    by_name = {v.name: v for v in inputs}
    chosen, notes = {}, []
    for value in inputs:
        source = mapping.get(value.name, value.name)
        if source in data.arrays:
            chosen[value.name] = source
        elif value.name in mapping:
            raise ChainruleError(f"--map {value.name}={source}: {data.files} holds no array "
                                 f"'{source}'; it holds {_listed(data.arrays)}")
    notes += _bind_by_role(inputs, data, chosen, set(label_inputs))
    unused = [name for name in data.arrays if name not in chosen.values()]
    if unused:
        what = (f"array{'s' if len(unused) > 1 else ''} {_listed(unused)} in {data.files}, "
                f"which {reader} does not read")
        if strict:
            raise ChainruleError(f"--strict-inputs: {what} (the model's inputs are "
                                 f"{_listed(by_name)}; --map binds an input to an array of "
                                 f"another name)")
        notes.append(f"ignoring {what} (--strict-inputs makes this an error)")
    arrays, origin = {}, {}
    for value in inputs:
        if value.name in chosen:
            source = chosen[value.name]
            origin[value.name] = data.origin[source]
            _refuse_non_finite(source, data.arrays[source], origin[value.name])
            arrays[value.name], said = conform(value, data.arrays[source], origin[value.name],
                                               data.roles.get(source))
            notes += said
    missing = [v for v in inputs if v.name not in arrays]
    return Bound(arrays, notes, missing, origin)


def _refuse_non_finite(name: str, array: np.ndarray, origin: str) -> None:
    """Data is checked as it is bound, so a NaN is named where it is, not found later as a
    diverging training step."""
    if not is_float_array(array):
        return
    bad = np.argwhere(~np.isfinite(array))  # ml_dtypes' floats have numpy's ufuncs
    if bad.size:
        index = tuple(int(i) for i in bad[0])
        raise file_error(origin, f"array '{name}' holds {array[index]} at index "
                                 f"{list(index)} (row {index[0]}, counting from 0); "
                                 f"{NON_FINITE_HINT}")


class InputNote(UserWarning):
    """What the Python API did to make an argument fit its input (a cast, a flatten): the
    warning that carries the note the CLI prints as `chainrule: note: ...`."""


def conform_arguments(inputs: list[Value], arguments: dict, stacklevel: int = 3) -> dict:
    """Arrays, lists or numbers passed to the Python API by input name, conformed to those
    `inputs` as the CLI conforms a file's arrays; each note the CLI would print is an
    InputNote warning at the API's caller (`stacklevel` frames up: the API method's caller
    by default). A name that is no input, or what is no array, is passed on as it is, for
    the backend to refuse."""
    by_name = {v.name: v for v in inputs}
    arrays = {}
    for name, argument in arguments.items():
        if name in by_name and _fits_as_given(by_name[name], argument):
            arrays[name] = argument  # the usual call: nothing to do, at no cost per call
            continue
        try:
            array = np.asarray(argument)
        except (ValueError, TypeError):  # a ragged list: the feeds' check names it
            array = None
        if name not in by_name or array is None:
            arrays[name] = argument
            continue
        arrays[name], notes = conform(by_name[name], array, "the argument")
        for note in notes:
            warnings.warn(note, InputNote, stacklevel=stacklevel)
    return arrays


class ArgumentConformer:
    """conform_arguments for one list of inputs, for calls again and again: when every
    argument is an array of its input's dtype and rank (which conform leaves as it is), as in
    the usual call, it costs a few comparisons an argument and returns `arguments` itself."""

    def __init__(self, inputs: list[Value]):
        self.inputs = inputs
        self.fitting = {v.name: (numpy_dtype(v.type.dtype), v.type.rank) for v in inputs}

    def __call__(self, arguments: dict, stacklevel: int = 4) -> dict:
        fitting = self.fitting
        for name, argument in arguments.items():
            fit = fitting.get(name)
            if (fit is None or type(argument) is not np.ndarray or argument.dtype != fit[0]
                    or argument.ndim != fit[1]):
                return conform_arguments(self.inputs, arguments, stacklevel)
        return arguments


def _fits_as_given(value: Value, argument) -> bool:
    """Whether `conform` would leave `argument` as it is: an array of the input's dtype that
    needs no flattening and no channel axis."""
    return (type(argument) is np.ndarray and argument.dtype == numpy_dtype(value.type.dtype)
            and (value.type.rank != 2 or argument.ndim <= 2)
            and not _lacks_only_a_channel_axis(value.type, argument))


def check_mapping(inputs: list[Value], mapping: dict[str, str]) -> None:
    unknown = [name for name in mapping if name not in {v.name for v in inputs}]
    if unknown:
        raise ChainruleError(f"--map: the model has no input {_listed(unknown)}; its inputs "
                             f"are {_listed(v.name for v in inputs)}")


def _bind_by_role(inputs, data: Dataset, chosen: dict, label_inputs: set) -> list[str]:
    """Bind arrays that carry a role, not a model name, to the inputs still unfed: labels to
    the one input that takes labels, features to the one input left after that."""
    open_inputs = [v for v in inputs if v.name not in chosen]
    free = {role: [n for n, r in data.roles.items() if r == role and n not in chosen.values()]
            for role in (LABELS, FEATURES)}
    notes = []
    for role in (LABELS, FEATURES):
        if len(free[role]) != 1 or not open_inputs:
            continue
        candidates = open_inputs if role == FEATURES else _label_candidates(open_inputs,
                                                                            label_inputs)
        if role == FEATURES and len(candidates) > 1:
            candidates = [v for v in candidates if v.name not in label_inputs and
                          not is_int(v.type.dtype)]
        if not candidates:
            continue  # left over: ignored, or refused with --strict-inputs
        if len(candidates) > 1:
            names = _listed(v.name for v in open_inputs)
            raise ChainruleError(f"cannot tell which of the inputs {names} the {role} of "
                                 f"{data.origin[free[role][0]]} feed; say it with --map "
                                 f"INPUT={free[role][0]}")
        value, array_name = candidates[0], free[role][0]
        chosen[value.name] = array_name
        open_inputs.remove(value)
        notes.append(f"input '{value.name}' reads the {role} of {data.origin[array_name]} "
                     f"('{array_name}')")
    return notes


def _label_candidates(open_inputs, label_inputs: set) -> list[Value]:
    for keep in (lambda v: v.name in label_inputs, lambda v: is_int(v.type.dtype),
                 lambda v: v.type.rank <= 1):
        picked = [v for v in open_inputs if keep(v)]
        if picked:
            return picked
    return []


def conform(value: Value, array: np.ndarray, origin: str,
            role: str | None = None) -> tuple[np.ndarray, list[str]]:
    """`array` in `value`'s dtype (a cast that loses nothing) and, for an input declared as a
    matrix, with its trailing axes flattened (images [N, 28, 28] for x: f32[B, 784])."""
    notes = []
    array = np.asarray(array)
    width = value.type.shape[-1] if value.type.rank else None
    if (role == FEATURES and origin.lower().endswith(".csv") and isinstance(width, int)
            and array.ndim == 2 and array.shape[1] == width + 1):
        raise file_error(origin, f"input '{value.name}' is {value.type}, one column fewer than "
                                 f"the file's {array.shape[1]}; if one column holds labels, "
                                 f"name it with --label-column")
    _refuse_one_hot(value, array, origin)
    array, note = safe_cast(value.name, array, value.type.dtype, origin)
    if note:
        notes.append(note)
    if _lacks_only_a_channel_axis(value.type, array):
        notes.append(f"input '{value.name}': {_shape(array)} from {origin} given a channel "
                     f"axis, {_shape(array[:, np.newaxis])}")
        array = array[:, np.newaxis]
    if value.type.rank == 2 and array.ndim > 2:
        flat = array.reshape(array.shape[0], math.prod(array.shape[1:]))
        width = value.type.shape[1]
        if not isinstance(width, int) or width == flat.shape[1]:
            notes.append(f"input '{value.name}': {_shape(array)} from {origin} flattened to "
                         f"{_shape(flat)}")
            array = flat
    return array, notes


def _lacks_only_a_channel_axis(declared: TensorType, array: np.ndarray) -> bool:
    """Images [N, H, W] for an input [B, 1, H, W]: one channel, the axis left out."""
    if declared.rank != 4 or array.ndim != 3 or declared.shape[1] != 1:
        return False
    return all(not isinstance(dim, int) or dim == size
               for dim, size in zip(declared.shape[2:], array.shape[1:], strict=True))


def _refuse_one_hot(value: Value, array: np.ndarray, origin: str) -> None:
    """One-hot rows given where class indices are declared: converting would guess whether
    the rows are one-hot or soft labels, so the error says how to convert."""
    if (not is_int(value.type.dtype) or value.type.rank != 1 or array.ndim != 2
            or array.shape[1] < 2 or array.dtype.kind not in "biuf" or not array.size):
        return
    if np.isin(array, (0, 1)).all() and (array.sum(axis=1) == 1).all():
        raise ChainruleError(f"input '{value.name}' takes class indices ({value.type}), but "
                             f"{origin} holds {_shape(array)} rows that look one-hot (a single "
                             f"1 in each); give class indices, e.g. labels.argmax(axis=1)")


def safe_cast(name: str, array: np.ndarray, dtype: str, origin: str):
    """`array` as `dtype` and a note saying so, when the cast changes no value's meaning;
    otherwise a ChainruleError naming the input and both dtypes.

    Any dtype casts to any other under three rules. A value that becomes another number is
    refused: a fraction, NaN or out-of-range number cast to an integer, anything but 0 and 1
    cast to bool, a number past a float's largest cast to it. A float cast to a float that
    holds fewer digits is rounded, as every framework does. An integer cast to a float is
    exact up to 2**(mantissa bits), and past that rounded; the note says which."""
    target = np.dtype(numpy_dtype(dtype))
    if array.dtype == target:
        return array, None
    given = dtype_name(array.dtype)
    what = f"input '{name}' is {dtype} but {origin} holds {given}"
    if given not in DTYPES:
        raise ChainruleError(f"{what}, which is not numeric")
    problem = _cast_problem(array, given, dtype)
    if problem:
        raise ChainruleError(f"{what}: {problem}; convert the data, or declare the input "
                             f"{given}")
    kinds = (dtype_kind(given), dtype_kind(dtype))
    if kinds == ("float", "float") and not _holds_every(dtype, given):
        how = f"rounded to {dtype} (precision only, as every framework does)"
    elif kinds[0] != "float" and kinds[1] == "float" and not _exact_in_float(array, dtype):
        how = f"cast to {dtype} (integers past {2 ** _mantissa_bits(dtype):,} are rounded)"
    else:
        how = f"cast to {dtype} (exact)"
    return array.astype(target), f"input '{name}': {given} from {origin} {how}"


def dtype_kind(dtype: str) -> str:
    """'bool', 'int' or 'float': what a dtype's values are, whatever their width."""
    if dtype == "bool":
        return "bool"
    return "int" if is_int(dtype) or dtype in NARROW_INT_DTYPES else "float"


def is_float_array(array) -> bool:
    """Whether `array` holds floats of any width, bf16 and the float8s included."""
    dtype = np.asarray(array).dtype
    return dtype.kind in "fc" or (dtype.name in DTYPE_OF_NUMPY_NAME and
                                  dtype_kind(DTYPE_OF_NUMPY_NAME[dtype.name]) == "float")


def _finfo(dtype: str):
    if dtype not in ML_DTYPES:
        return np.finfo(numpy_dtype(dtype))
    import ml_dtypes  # only for its own dtypes: importing it costs as much as numpy
    return ml_dtypes.finfo(numpy_dtype(dtype))


def _mantissa_bits(dtype: str) -> int:
    """The bits of a float's significand, the implicit one included."""
    return _finfo(dtype).nmant + 1


def _holds_every(wide: str, narrow: str) -> bool:
    """Whether float dtype `wide` holds every value of float dtype `narrow` exactly."""
    wide_info, narrow_info = _finfo(wide), _finfo(narrow)
    return (wide_info.nmant >= narrow_info.nmant and wide_info.max >= narrow_info.max
            and wide_info.smallest_subnormal <= narrow_info.smallest_subnormal
            and (float(wide_info.min) < 0 or float(narrow_info.min) >= 0))


def _cast_problem(array: np.ndarray, given: str, dtype: str) -> str | None:
    """Why casting `array` (of chainrule dtype `given`) to `dtype` would change what a value
    means, if it would."""
    if array.size == 0:
        return None
    if dtype_kind(dtype) == "bool":
        if not np.isin(array.astype(np.float64), (0, 1)).all():  # a CSV's 0.0 and 1.0 too
            return "only 0 and 1 (or booleans) convert to bool"
        return None
    if dtype_kind(dtype) == "int":
        return _integer_problem(array, given, dtype)
    if dtype == "f64" or (dtype == "f32" and given != "f64"):
        return None  # every other dtype's values are finite in these, rounded or not
    values = np.asarray(array, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # what the cast overflows is the problem
        cast = array.astype(numpy_dtype(dtype)).astype(np.float64)
    if (np.isinf(cast) & np.isfinite(values)).any():
        return f"it holds numbers too large for {dtype} (they would become inf)"
    # f4e2m1 has neither inf nor NaN: a cast clamps to its largest number. Past the largest
    # by half its last place and more, a value is not rounded but changed.
    info = _finfo(dtype)
    last_place = 2.0 ** np.floor(np.log2(float(info.max))) * float(info.eps)
    bound = float(info.max) + last_place / 2
    if (np.isfinite(values) & (np.abs(values) >= bound) & np.isfinite(cast)).any():
        return f"it holds numbers too large for {dtype}, whose largest is {float(info.max):g}"
    lost = np.isnan(cast) & ~np.isnan(values)
    if lost.any():  # past the largest of a float8 that has no inf; a negative in f8e8m0
        return f"it holds {array[lost].flat[0]}, which {dtype} cannot hold (it would be NaN)"
    return None


def _integer_problem(array: np.ndarray, given: str, dtype: str) -> str | None:
    if dtype_kind(given) == "float":
        values = np.asarray(array, np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            return f"it holds {array[~finite].flat[0]}, which is no integer"
        fractional = values != np.round(values)
        if fractional.any():
            return f"it holds numbers with a fractional part, such as {array[fractional].flat[0]}"
        low, high = float(values.min()), float(values.max())
    else:
        low, high = int(array.min()), int(array.max())
    least, greatest = int_range(dtype)
    if low < least or high > greatest:
        return f"it holds numbers past the range of {dtype}"
    return None


def _exact_in_float(array: np.ndarray, dtype: str) -> bool:
    return array.size == 0 or int(np.abs(array.astype(np.int64) if array.dtype.kind == "V"
                                         else array).max()) <= 2 ** _mantissa_bits(dtype)


def check_rows(values: list[Value], arrays: dict, origin: dict) -> int:
    """Rows of a data set fed batch by batch: each array has the declared dtype and axes after
    the first, and all have the same number of rows. Checked once, on the whole file, so a
    mistake is reported with the file's shapes before training starts."""
    rows = {}
    missing = [v for v in values if v.name not in arrays]
    if missing:
        raise ChainruleError(f"the data has no array for input(s) "
                             f"{', '.join(f'{v.name}: {v.type}' for v in missing)}")
    for value in values:
        array = arrays[value.name]
        if value.type.rank == 0 or np.ndim(array) == 0:
            raise ChainruleError(f"input '{value.name}' is declared {value.type}; data fed in "
                                 f"batches needs a leading batch axis")
        rows[value.name] = np.shape(array)[0]
        # The first axis is the batch's, whatever the declaration fixes it to.
        per_row = TensorType(value.type.dtype, (UNKNOWN,) + tuple(value.type.shape[1:]))
        try:
            check_arrays([Value(value.name, per_row)], {value.name: array}, "input")
        except ChainruleError as error:
            message = error.message.replace(str(per_row), str(value.type))
            raise file_error(origin[value.name], message) from None
    if len(set(rows.values())) > 1:
        listed = ", ".join(f"{name}: {count}" for name, count in rows.items())
        raise ChainruleError(f"the inputs must have the same number of rows ({listed})")
    return next(iter(rows.values()), 0)


def _shape(array) -> str:
    return f"[{', '.join(map(str, np.shape(array)))}]"


def _listed(names) -> str:
    return quoted(names) or "(none)"
