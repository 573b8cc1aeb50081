"""Reading arrays with pickle disabled, and writing every file atomically."""
from __future__ import annotations

import io
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .ir import ChainruleError


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename it over `path`."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_npz(path, arrays: dict) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buffer.getvalue())


def load_npz(path) -> dict[str, np.ndarray]:
    # The file is opened here, not by np.load, so it is closed even when numpy gives up on it.
    with _reading(path, ".npz"), open(path, "rb") as file:
        data = np.load(file, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ChainruleError(f"{path}: one .npy array, not a .npz archive of named arrays")
        with data:
            arrays = {}
            for name in data.files:
                with _reading(path, ".npz", f"array '{name}' in "):
                    arrays[name] = data[name]
            return arrays


def load_npy(path) -> np.ndarray:
    with _reading(path, ".npy"), open(path, "rb") as file:
        data = np.load(file, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            data.close()
            raise ChainruleError(f"{path}: a .npz archive of named arrays, not one .npy array")
        return data


@contextmanager
def _reading(path, kind: str, what: str = ""):
    """Turns a failure to read (`what` in) `path` into a ChainruleError saying why."""
    try:
        yield
    except FileNotFoundError:
        raise ChainruleError(f"{path}: no such file") from None
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
