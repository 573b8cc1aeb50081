"""Reading files with clear errors and pickle disabled, and writing every file atomically."""
from __future__ import annotations

import io
import math
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .ir import ChainruleError, file_error
from .ir.limits import check_allocation


# ---- reading ----------------------------------------------------------------------------------

def open_for_reading(path):
    """`path` opened in binary; a missing, unreadable or non-regular file is a located error
    (the same message, and exit code 1, for a model, a data file or a checkpoint)."""
    try:
        if Path(path).is_dir():
            raise file_error(path, "a directory, not a file")
        return open(path, "rb")
    except FileNotFoundError:
        raise file_error(path, "no such file") from None
    except PermissionError:
        raise file_error(path, "cannot read: permission denied") from None
    except OSError as error:
        raise file_error(path, f"cannot read: {error.strerror or error}") from None
    except ValueError:  # the one ValueError open() raises for a path of any type
        shown = str(path).replace("\0", "\\0")
        raise file_error(shown, "not a usable path: it contains a NUL byte") from None


def read_text(path) -> str:
    """A UTF-8 text file (a model); other bytes are an error naming the first bad offset."""
    with open_for_reading(path) as file:
        data = file.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise file_error(path, f"not UTF-8 text: byte 0x{data[error.start]:02x} at offset "
                               f"{error.start} (line {line}: {error.reason}); model files are "
                               f"UTF-8") from None


def load_npz(path) -> dict[str, np.ndarray]:
    """The named arrays of a .npz archive. Each member's declared size must match its array
    header and fit in memory before a byte of it is inflated, so a zip bomb is refused."""
    with reading(path, ".npz"), open_for_reading(path) as file:
        if file.read(2) != b"PK":
            raise file_error(path, "not a .npz archive (a .npz is a zip file of .npy arrays)")
        file.seek(0)
        arrays = {}
        with zipfile.ZipFile(file) as archive:
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                with reading(path, ".npz", f"array '{name}' in "), archive.open(info) as member:
                    arrays[name] = read_npy(member, info.file_size, f"array '{name}' in {path}")
        return arrays


def load_npy(path) -> np.ndarray:
    with reading(path, ".npy"), open_for_reading(path) as file:
        if file.read(2) == b"PK":
            raise file_error(path, "a .npz archive of named arrays, not one .npy array")
        file.seek(0)
        return read_npy(file, os.fstat(file.fileno()).st_size, str(path))


def read_npy(stream, size: int, what: str) -> np.ndarray:
    """One array in the .npy format from `stream`, which holds `size` bytes in all. The header
    is checked against `size` and against free memory before the array is allocated."""
    version = np.lib.format.read_magic(stream)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ChainruleError(f"{what}: .npy format version {version[0]}.{version[1]} is not "
                             f"supported (1.0 and 2.0 are)")
    shape, fortran_order, dtype = read_header(stream)
    if dtype.hasobject:
        raise ChainruleError(f"{what} holds Python objects (dtype object), which load only by "
                             f"unpickling; chainrule reads data with pickle disabled, so save "
                             f"numeric arrays")
    nbytes = math.prod(shape) * dtype.itemsize
    if stream.tell() + nbytes != size:
        raise ChainruleError(f"{what}: the header promises {list(shape)} {dtype} "
                             f"({nbytes:,} bytes), but {size - stream.tell():,} bytes follow it")
    check_allocation(what, nbytes)
    array = np.empty(shape, dtype, order="F" if fortran_order else "C")
    buffer = memoryview(array.reshape(-1, order="A")).cast("B") if nbytes else b""
    filled = 0
    while filled < nbytes:
        count = stream.readinto(buffer[filled:])
        if not count:
            raise ChainruleError(f"{what}: truncated after {filled:,} of {nbytes:,} bytes")
        filled += count
    return array


@contextmanager
def reading(path, kind: str, what: str = ""):
    """Turns a failure to read (`what` in) `path` into a ChainruleError saying why.

    A damaged file can fail anywhere in the zip, zlib and .npy header parsers, with any of a
    dozen exception types (a flipped bit in a header reaches Python's tokenizer); they all mean
    the same to the user, so every non-chainrule error here is "not readable"."""
    try:
        yield
    except ChainruleError:
        raise
    except Exception as error:  # noqa: BLE001 - see the docstring
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise ChainruleError(f"{what}{path}: not a readable {kind} file ({reason})") from None


# ---- writing ----------------------------------------------------------------------------------

def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename it over `path`.

    The temporary file is created private (mode 0600); it is given the mode a plain `open`
    would have given it, under the user's umask, before it takes the final name."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
            os.fchmod(file.fileno(), 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_writable(path, *, directory: bool = False) -> None:
    """Fail now, before any work, if `path` (a file, or a directory with `directory`) cannot
    be written: it is a directory (or a file), it lies under a regular file, or its directory
    refuses new files."""
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise file_error(path, "cannot be used as a directory: it is a file")
    if not directory and path.is_dir():
        raise file_error(path, "cannot be written: it is a directory; give a file name")
    folder = path if directory else (path.parent if str(path.parent) else Path("."))
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise file_error(path, f"cannot be written: {existing} is a file, not a directory")
    if existing != folder:  # the missing folders will be made: the nearest must allow it
        if not os.access(existing, os.W_OK | os.X_OK):
            raise file_error(path, f"cannot be written: {existing} does not allow new folders")
        return
    try:  # the one sure test, which also sees read-only file systems
        handle, probe = tempfile.mkstemp(prefix=".chainrule-probe.", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise file_error(path, f"cannot be written: {error.strerror or error}") from None


def current_umask() -> int:
    # The umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_npz(path, arrays: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buffer.getvalue())
