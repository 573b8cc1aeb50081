"""Reading files with clear errors and pickle disabled, and writing every file atomically."""
from __future__ import annotations

import io
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .ir import ChainruleError, file_error


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
    # The file is opened here, not by np.load, so it is closed even when numpy gives up on it.
    with reading(path, ".npz"), open_for_reading(path) as file:
        data = np.load(file, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise file_error(path, "one .npy array, not a .npz archive of named arrays")
        with data:
            arrays = {}
            for name in data.files:
                with reading(path, ".npz", f"array '{name}' in "):
                    arrays[name] = data[name]
            return arrays


def load_npy(path) -> np.ndarray:
    with reading(path, ".npy"), open_for_reading(path) as file:
        data = np.load(file, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            data.close()
            raise file_error(path, "a .npz archive of named arrays, not one .npy array")
        return data


@contextmanager
def reading(path, kind: str, what: str = ""):
    """Turns a failure to read (`what` in) `path` into a ChainruleError saying why."""
    try:
        yield
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        # With pickle disabled numpy refuses object arrays, and files it does not recognise
        # (which it would take for pickles), with messages that suggest allow_pickle; chainrule
        # has no such option.
        if "Object arrays" in str(error):
            raise ChainruleError(f"{what}{path} holds Python objects (dtype object), which "
                                 f"load only by unpickling; chainrule reads data with pickle "
                                 f"disabled, so save numeric arrays") from None
        if "pickle" in str(error):
            raise ChainruleError(f"{what}{path}: not a readable {kind} file (it could be read "
                                 f"only by unpickling, and chainrule reads data with pickle "
                                 f"disabled)") from None
        raise ChainruleError(f"{what}{path}: not a readable {kind} file ({error})") from None


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


def current_umask() -> int:
    # The umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_npz(path, arrays: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buffer.getvalue())
