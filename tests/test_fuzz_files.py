"""Fuzzing the file readers and the atomic writer: special files where a regular file belongs,
data files truncated, padded or promising more than they hold (gzip and zip bombs), and writes
that fail on a full disk.

Every case must end, within a bound on its time and memory, in a result or a ChainruleError
naming the file; a write that fails must leave the earlier file as it was and no temporary
file. Special files are read in a worker process whose address space is capped at 2 GiB and
each of whose cases has 10 s (an alarm: a case past it hangs); generated files are read here,
with their allocations traced.

The suite runs a few derandomized examples per test; the long run (CHAINRULE_LONG_RUN=1,
docs/internals.md) its share of the data files and failed writes.
"""
import contextlib
import errno
import gzip
import io
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainrule import ChainruleError, fileio
from chainrule.data import read_dataset
from chainrule.fileio import load_npz
from support.fuzzing import fuzz_data_files, fuzz_failed_writes, within_calls
from support.paths import ROOT

WORKER_MEMORY = 2 * 2 ** 30  # bytes of address space: the "no process over 2 GB"
SECONDS_PER_CASE = 10        # past this a case is a hang, not slow work
# Bounds on one generated file: function calls (over twenty times the most one took) and
# traced bytes (the largest real payload here is 8 MiB; a promise is never allocated).
CALLS_PER_FILE = 1_000_000
PEAK_BYTES = 64 * 2 ** 20

# ---- special files ----------------------------------------------------------------------------

READERS = {
    "compile": "import chainrule; chainrule.compile(path)",
    "import_onnx": "import chainrule; chainrule.import_onnx(path)",
    "read_dataset": "from chainrule.data import read_dataset; read_dataset(path)",
    "load_npz": "from chainrule.fileio import load_npz; load_npz(path)",
    "load_npy": "from chainrule.fileio import load_npy; load_npy(path)",
}
# The name a special file is given for each reader: the extension decides the format.
NAMES = {"compile": ["m.nn"], "import_onnx": ["m.onnx"], "load_npz": ["p.npz"],
         "load_npy": ["a.npy"], "read_dataset": ["d.csv", "d.npz", "t-images-idx3-ubyte.gz",
                                                 "no-extension"]}

WORKER = r"""
import json, signal, sys
from chainrule import ChainruleError

class Hang(Exception):
    pass

def alarm(signum, frame):
    raise Hang()

signal.signal(signal.SIGALRM, alarm)
for case in json.loads(sys.argv[1]):
    path, seconds = case["path"], int(sys.argv[2])
    signal.alarm(seconds)
    try:
        exec(case["code"], {"path": path})
        verdict = "read"
    except ChainruleError as error:
        verdict = "refused" if path in str(error) else f"refused without naming it: {error}"
    except Hang:
        verdict = f"hang: still reading after {seconds} s"
    except BaseException as error:
        verdict = f"{type(error).__name__}: {error}"
    signal.alarm(0)
    print(json.dumps([case["name"], verdict]), flush=True)
"""


def limit_memory():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))


def make_special(folder, kind: str, name: str):
    """`name` in `folder`, as a special file of `kind` (or a symlink to one)."""
    path = folder / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        return path, server
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling symlink":
        path.symlink_to(folder / "nothing-here")
    elif kind == "symlink loop":
        path.symlink_to(path)
    else:  # a symlink to a system device, which is only ever read here
        path.symlink_to(kind)
    return path, None


SPECIAL_KINDS = ["fifo", "socket", "directory", "dangling symlink", "symlink loop",
                 "/dev/zero", "/dev/urandom", "/dev/null"]


def test_special_files_are_refused_by_every_reader_without_hanging(tmp_path):
    cases, sockets = [], []
    for kind in SPECIAL_KINDS:
        if kind.startswith("/dev/") and not os.path.exists(kind):
            continue
        for reader, names in NAMES.items():
            for name in names:
                folder = tmp_path / f"{len(cases)}"
                folder.mkdir()
                path, server = make_special(folder, kind, name)
                sockets += [server] if server else []
                cases.append({"name": f"{reader} of {kind} named {name}", "path": str(path),
                              "code": READERS[reader]})
    try:
        verdicts = run_worker(cases)
    finally:
        for server in sockets:
            server.close()
    wrong = {name: verdict for name, verdict in verdicts.items()
             if verdict != "refused" and not (verdict == "read" and "/dev/null" in name)}
    assert not wrong, wrong
    assert len(verdicts) == len(cases)


def run_worker(cases: list[dict], seconds: int = SECONDS_PER_CASE) -> dict[str, str]:
    """Each case's verdict from a worker process: read, refused, hang or an exception."""
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cases), str(seconds)],
                            capture_output=True, text=True, timeout=seconds * len(cases) + 60,
                            env=environment,
                            preexec_fn=limit_memory)
    verdicts = dict(json.loads(line) for line in result.stdout.splitlines())
    assert result.returncode == 0, (result.stderr[-2000:], verdicts)
    return verdicts


# ---- truncated, padded and inflating data files -----------------------------------------------

ZEROS = bytes(8 * 2 ** 20)
ZEROS_GZIP = gzip.compress(ZEROS)  # one gzip member; a gzip file may be several back to back
DIMS = st.sampled_from([0, 1, 2, 3, 28, 1000, 60_000, 2 ** 16, 2 ** 31, 2 ** 32 - 1])


@st.composite
def idx_files(draw) -> tuple[str, bytes]:
    """An IDX header promising any shape, then a payload that may fall short of the promise,
    match it, pass it, or inflate to megabytes from a few kilobytes."""
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]))
    shape = draw(st.lists(DIMS, min_size=1, max_size=4))
    header = b"\0\0" + bytes([code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    header = header[:draw(st.integers(len(header) - 3, len(header)))]
    payload = draw(st.sampled_from(["none", "small", "bomb"]))
    if not draw(st.booleans()):
        body = header + (bytes(draw(st.integers(0, 5000))) if payload == "small" else b"")
        return "t-images-idx3-ubyte", body
    body = gzip.compress(header + bytes(draw(st.integers(0, 5000))))
    if payload == "bomb":
        body += ZEROS_GZIP
    return "t-images-idx3-ubyte.gz", body[:len(body) - draw(st.integers(0, 1)) * 7]


def npy_bytes(shape, dtype, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(dtype).str,
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue() + payload


@st.composite
def npz_files(draw) -> tuple[str, bytes]:
    """A .npz whose member's header promises any shape, deflated from a short or huge
    payload, or whose zip directory lies about a member's size."""
    shape = tuple(draw(st.lists(DIMS, min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(["<f4", "<i8", "|u1", "<f8"]))
    payload = ZEROS if draw(st.booleans()) else bytes(draw(st.integers(0, 4000)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.npy", npy_bytes(shape, dtype, payload))
    data = bytearray(buffer.getvalue())
    if draw(st.booleans()):  # the central directory's uncompressed size of the member
        at = data.rfind(b"PK\x01\x02") + 24
        data[at:at + 4] = struct.pack("<I", draw(st.integers(0, 2 ** 32 - 1)))
    return "d.npz", bytes(data[:len(data) - draw(st.integers(0, 3)) * 11])


@st.composite
def csv_files(draw) -> tuple[str, bytes]:
    """A CSV with a long line, odd rows, non-finite values, blank lines or no newline."""
    width = draw(st.integers(1, 4))
    rows = [",".join(f"c{i}" for i in range(width))]
    for _ in range(draw(st.integers(0, 20))):
        row = draw(st.lists(st.sampled_from(["1", "-2.5", "nan", "inf", "", "x", "1e999",
                                             "  3 ", '"4"']), min_size=width - 1,
                            max_size=width + 1))
        rows.append(",".join(row))
    if draw(st.booleans()):
        rows.insert(draw(st.integers(1, len(rows))), "7" * draw(st.integers(1, 2 ** 20)))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(rows)
    return "d.csv", text.encode() + draw(st.sampled_from([b"", b"\n", b"\n\n# end\n"]))


@fuzz_data_files
@given(st.one_of(idx_files(), npz_files(), csv_files()))
def test_data_files_are_read_or_refused_within_bounds(tmp_path_factory, file):
    name, data = file
    path = tmp_path_factory.mktemp("data") / name
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with within_calls(CALLS_PER_FILE):
            for read in (read_dataset, load_npz):
                try:
                    read(path)
                except ChainruleError as error:
                    assert str(path) in str(error), error
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES + 4 * len(data), f"{peak:,} bytes traced"


# ---- disk full --------------------------------------------------------------------------------

FAILURES = st.sampled_from([errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG])
STEPS = st.sampled_from(["write", "fsync", "replace", "mkstemp"])


@contextlib.contextmanager
def failing(step: str, code: int, after: int):
    """The atomic writer's `step` fails with `code`, after `after` calls of it succeed."""
    target = {"write": (os, "write"), "fsync": (os, "fsync"), "replace": (os, "replace"),
              "mkstemp": (fileio.tempfile, "mkstemp")}[step]
    real = getattr(*target)
    calls = [0]

    def fake(*args, **kwargs):
        if step == "write" and args[0] <= 2:  # the test runner's own output
            return real(*args, **kwargs)
        calls[0] += 1
        if calls[0] > after:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)
    setattr(*target, fake)
    try:
        yield
    finally:
        setattr(*target, real)


@fuzz_failed_writes
@given(STEPS, FAILURES, st.integers(0, 3), st.integers(0, 300_000), st.booleans())
def test_a_failed_write_keeps_the_earlier_file_and_leaves_no_temporary(
        tmp_path_factory, step, code, after, size, existed):
    folder = tmp_path_factory.mktemp("out")
    path = folder / "out.npz"
    if existed:
        path.write_bytes(b"earlier")
    with failing(step, code, after):
        try:
            fileio.atomic_write_bytes(path, bytes(size))
            written = True
        except ChainruleError as error:
            assert error.file == str(path) and os.strerror(code) in error.message
            written = False
    if written:
        assert path.read_bytes() == bytes(size)
    elif existed:
        assert path.read_bytes() == b"earlier"
    else:
        assert not path.exists()
    assert [p.name for p in folder.iterdir()] == (["out.npz"] if written or existed else [])


def test_the_worker_sees_a_hang_as_a_hang(tmp_path):
    """The fuzzer's own check: a read that blocks is reported, not waited for."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    verdicts = run_worker([{"name": "plain open", "path": str(fifo),
                            "code": "open(path, 'rb').read()"}], seconds=1)
    assert verdicts == {"plain open": "hang: still reading after 1 s"}


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_the_worker_stops_an_unbounded_read_at_its_memory_cap():
    """The fuzzer's own check: reading /dev/zero whole fails in the worker, not the machine."""
    verdicts = run_worker([{"name": "plain read", "path": "/dev/zero",
                            "code": "open(path, 'rb').read()"}])
    assert verdicts["plain read"].startswith(("MemoryError", "OverflowError", "hang"))
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)
