"""Reading files with clear errors and pickle disabled, and writing every file atomically."""
from __future__ import annotations

import errno
import io
import math
import os
import stat
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .ir import ChainruleError, file_error
from .ir.limits import check_allocation
from .ir.types import DTYPE_OF_NUMPY_NAME, ML_DTYPES, numpy_dtype


# ---- reading ----------------------------------------------------------------------------------

# What a model or CSV file may hold: far past any real one (the largest example model is 3 KB,
# MNIST as CSV 110 MB), small enough that its text and parsed values fit in a few GiB.
MAX_TEXT_BYTES = 1 << 30
# An ONNX model is one protobuf message, which protobuf caps at 2 GiB.
MAX_ONNX_BYTES = (1 << 31) - 1

FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
              (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_for_reading(path):
    """`path` opened in binary; a missing, unreadable or non-regular file is a located error
    (the same message, and exit code 1, for a model, a data file or a checkpoint).

    The path is checked before it is opened (opening a device can act on it), opened without
    blocking (a FIFO with no writer would wait forever), and checked again through the open
    descriptor, so what is checked is what is read."""
    if not os.fspath(path):  # its errors would print as ": no such file", naming nothing
        raise ChainruleError("an empty path names no file")
    try:
        refuse_special(path, os.stat(path).st_mode)
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise file_error(path, "no such file") from None
    except PermissionError:
        raise file_error(path, "cannot read: permission denied") from None
    except OSError as error:
        raise file_error(path, f"cannot read: {error.strerror or error}") from None
    except ValueError:  # the one ValueError os.stat raises: a NUL byte in the path
        raise nul_in_path(path) from None
    try:
        refuse_special(path, os.fstat(descriptor).st_mode)  # replaced since the stat
        os.set_blocking(descriptor, True)
    except BaseException:
        os.close(descriptor)
        raise
    return os.fdopen(descriptor, "rb")


def nul_in_path(path) -> ChainruleError:
    shown = str(path).replace("\0", "\\0")
    return file_error(shown, "not a usable path: it contains a NUL byte")


def refuse_special(path, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise file_error(path, "a directory, not a file")
    if not stat.S_ISREG(mode):
        raise file_error(path, f"not a regular file but {special_kind(mode)}; chainrule reads "
                               f"regular files only")


def special_kind(mode: int) -> str:
    return next((kind for test, kind in FILE_KINDS if test(mode)), "a special file")


@contextmanager
def open_bounded(path, limit: int, kind: str):
    """`path` opened for reading with its size, once that size is known to be at most `limit`
    (a `kind` file's limit). The size is taken once, when the file is opened: a reader checks
    what it read against it with check_read_within."""
    with open_for_reading(path) as file:
        size = os.fstat(file.fileno()).st_size
        if size > limit:
            raise file_error(path, f"{size:,} bytes, more than the {limit:,} a {kind} file "
                                   f"may hold")
        yield file, size


def check_read_within(path, read: int, size: int) -> None:
    """Refuses a file that gave more than the `size` it had when opened."""
    if read > size == 0:  # /proc and /sys files make their text as they are read
        raise file_error(path, "reports a size of 0 but holds data: a /proc or /sys file? "
                               "chainrule reads regular files of known size")
    if read > size:
        raise file_error(path, f"more than the {size:,} bytes its size said (it grew while "
                               f"being read)")


def read_bytes(path, limit: int, kind: str) -> bytes:
    """The whole of a regular file of at most `limit` bytes, which must fit in memory. A file
    that grows while it is read is refused: its size is taken once, before reading."""
    with open_bounded(path, limit, kind) as (file, size):
        check_allocation(f"reading {path}", size)
        data = file.read(size + 1)
    check_read_within(path, len(data), size)
    return data


def read_text(path) -> str:
    """A UTF-8 text file (a model); other bytes are an error naming the first bad offset."""
    data = read_bytes(path, MAX_TEXT_BYTES, "model")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise file_error(path, f"not UTF-8 text: byte 0x{data[error.start]:02x} at offset "
                               f"{error.start} (line {line}: {error.reason}); model files are "
                               f"UTF-8") from None


def load_npz(path) -> dict[str, np.ndarray]:
    """The named arrays of a .npz archive. Each member's declared size must match its array
    header and fit in memory before a byte of it is inflated, so a zip bomb is refused. Arrays
    that DTYPES_MEMBER says hold bit patterns come back in their dtype (bf16, f8e4m3fn, ...)."""
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
    return _typed_from_bits(path, arrays)


# numpy stores an ml_dtypes array (bf16, the float8s, int4...) as untyped bytes ('<V2'), which
# read back as no dtype at all. chainrule stores such an array as its bit pattern in the
# unsigned integer of its width, and names its dtype in this member: a 1-D array of
# "NAME:DTYPE" strings, which numpy reads without pickle as any other array.
DTYPES_MEMBER = "__dtypes__"


def _bits_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(f"u{dtype.itemsize}")


def _typed_from_bits(path, arrays: dict) -> dict:
    notes = arrays.pop(DTYPES_MEMBER, None)
    if notes is None:
        return arrays
    if notes.dtype.kind != "U" or notes.ndim != 1:
        raise file_error(path, f"member '{DTYPES_MEMBER}' must be a 1-D array of "
                               f"'NAME:DTYPE' strings, not {notes.dtype}{list(notes.shape)}")
    for entry in notes.tolist():
        name, _, dtype = entry.rpartition(":")
        if dtype not in ML_DTYPES:
            raise file_error(path, f"{DTYPES_MEMBER} entry '{entry}': '{dtype}' is not one of "
                                   f"the dtypes stored as bits ({', '.join(ML_DTYPES)})")
        target = numpy_dtype(dtype)
        bits = arrays.get(name)
        if bits is None:
            raise file_error(path, f"{DTYPES_MEMBER} entry '{entry}' names no array in the file")
        if bits.dtype != _bits_dtype(target):
            raise file_error(path, f"array '{name}' holds {bits.dtype}, but {dtype} is stored "
                                   f"as the bits of {_bits_dtype(target)}")
        arrays[name] = bits.view(target)
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
    if dtype.kind == "V" and dtype.names is None:
        raise ChainruleError(f"{what} holds untyped {dtype.itemsize}-byte values ({dtype.str}), "
                             f"as numpy writes bf16 and the float8 dtypes, forgetting which; save "
                             f"them with chainrule, or in a .npz as bits with a "
                             f"'{DTYPES_MEMBER}' member (docs/cli.md, 'Inputs and data files')")
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
    """Write to a temporary file beside the target, then rename it over the target.

    A symlink is written through: the file it points to is replaced and the link kept. A file
    that exists keeps its mode; a new one gets the mode a plain `open` would give it under the
    user's umask (the temporary file is private until then). A failure to write, such as a full
    disk, is a ChainruleError naming the file and the reason; it leaves the earlier file as it
    was and no temporary file behind."""
    target = write_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        mode = target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~current_umask()
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                             dir=target.parent)
    except OSError as error:
        raise write_error(path, error) from None
    try:
        try:
            write_all(handle, data)
            os.fsync(handle)
            os.fchmod(handle, mode)
        finally:
            os.close(handle)
        os.replace(temporary, target)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_error(path, error, earlier=target.exists()) from None
        raise


def write_all(handle: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(handle, view):]


def write_error(path, error: OSError, earlier: bool = False) -> ChainruleError:
    kept = "; the earlier file is unchanged" if earlier else ""
    return file_error(path, f"cannot be written: {error.strerror or error}{kept}")


def write_target(path) -> Path:
    """The file that writing `path` replaces: the file a symlink points to (so the link
    stays), or `path` itself. A device, FIFO or socket is refused, as renaming a regular file
    over it would destroy it (`-o /dev/null`)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        # realpath follows a loop nowhere and renaming over the link would replace it, so a
        # path the system itself cannot follow is refused, not written.
        if error.errno == errno.ELOOP:
            raise file_error(path, "cannot be written: too many levels of symbolic links (a "
                                   "symlink loop, or a chain too long to follow)") from None
        mode = None  # nothing there yet (or nothing reachable): writing will tell
    except ValueError:  # the one ValueError stat raises: a NUL byte in the path
        raise nul_in_path(path) from None
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if mode is None:
        return target
    if stat.S_ISDIR(mode):
        raise file_error(path, "cannot be written: it is a directory; give a file name")
    if not stat.S_ISREG(mode):
        raise file_error(path, f"cannot be written: it is {special_kind(mode)}, not a regular "
                               f"file; chainrule writes only regular files")
    return target


def check_writable(path, *, directory: bool = False) -> None:
    """Fail now, before any work, if `path` (a file, or a directory with `directory`) cannot
    be written: it is a directory (or a file), a device, FIFO or socket, it lies under a
    regular file, or its directory refuses new files."""
    path = Path(path)
    if directory and path.exists() and not path.is_dir():
        raise file_error(path, "cannot be used as a directory: it is a file")
    if not directory:
        write_target(path)
    folder = path if directory else (path.parent if str(path.parent) else Path("."))
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise file_error(path, f"cannot be written: {existing} is a file, not a directory")
    try:  # the one sure test, which also sees read-only and virtual file systems (/proc)
        if existing != folder:  # the missing folders will be made: the nearest must allow it
            os.rmdir(tempfile.mkdtemp(prefix=".chainrule-probe.", dir=existing))
        else:
            handle, probe = tempfile.mkstemp(prefix=".chainrule-probe.", dir=folder)
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        reason = error.strerror or error
        if existing != folder:
            raise file_error(path, f"cannot be written: {existing} does not allow new folders "
                                   f"({reason})") from None
        raise file_error(path, f"cannot be written: {reason}") from None


def current_umask() -> int:
    # The umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_npz(path, arrays: dict) -> None:
    """Named arrays as a .npz archive that numpy reads without pickle, every dtype included:
    an ml_dtypes array is stored as its bits, its dtype named in DTYPES_MEMBER."""
    stored, typed = {}, []
    for name, value in arrays.items():
        array = np.asarray(value)
        dtype = DTYPE_OF_NUMPY_NAME.get(array.dtype.name)
        if dtype in ML_DTYPES:
            typed.append(f"{name}:{dtype}")
            array = array.view(_bits_dtype(array.dtype))
        stored[name] = array
    if typed:
        stored[DTYPES_MEMBER] = np.array(typed)
    buffer = io.BytesIO()
    np.savez(buffer, **stored)
    atomic_write_bytes(path, buffer.getvalue())
