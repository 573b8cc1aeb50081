"""Hostile files: special files where a regular one belongs, sizes a file promises but does not
hold, writes that fail half way, output paths that are not plain files, and data that is
numeric but wrong (NaN, one-hot labels, a missing channel axis).

Each case ends in a result or a one-line error with exit code 1, never a hang, a traceback or a
lost file. Cases that would hang if broken run under an alarm.
"""
import contextlib
import errno
import gzip
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tracemalloc

import numpy as np
import pytest

import chainrule
from chainrule import data as data_module
from chainrule import fileio
from chainrule.cli import inspecting
from chainrule.data import read_csv, read_idx
from chainrule.ir import ChainruleError, limits
from chainrule.onnx_import import importer
from chainrule.train import CHECKPOINT_FILE
from support.cli import chainrule as chainrule_cli
from support.cli import chainrule_process, fails, ok
from support.paths import ROOT

DIGITS = ROOT / "examples" / "digits_classifier.nn"
DIGITS_DATA = ROOT / "examples" / "data" / "digits_test.npz"
SUM_MODEL = "model m(x: f32[B, 4]) {\n    J = sum(x)\n    return J\n}\n"


class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds=10):
    """The block ends within `seconds`; past that it is a hang (a blocked open or read)."""
    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def one_line_error(result, *expected):
    fails(result)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for text in expected:
        assert text in result.stderr
    return result


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


@pytest.fixture
def zero_device(tmp_path):
    """A character device that reads as /dev/zero does, made where the test may make one (it
    needs root): a test of code that wrongly writes over it must not destroy a system file."""
    path = tmp_path / "zero"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    except OSError:
        pytest.skip("cannot make a device node here (not root)")
    return path


# ---- special files as input -------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ("check", "{special}"),
    ("run", DIGITS, "--inputs", "{special}"),
    ("run", DIGITS, "--input", "x={special}", "--random-inputs"),
    ("run", DIGITS, "--params", "{special}", "--random-inputs"),
    ("train", DIGITS, "--data", "{special}"),
])
def test_a_fifo_is_refused_without_waiting_for_a_writer(fifo, argv):
    with no_hang():
        result = chainrule_cli(*(str(a).format(special=fifo) for a in argv))
    one_line_error(result, f"{fifo}: error: not a regular file but a FIFO")


def test_a_fifo_as_the_checkpoint_is_refused(tmp_path, fifo):
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    os.mkfifo(checkpoint / CHECKPOINT_FILE)
    with no_hang():
        result = chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--resume", checkpoint)
        with pytest.raises(ChainruleError, match="not a regular file but a FIFO"):
            fileio.load_npz(checkpoint / CHECKPOINT_FILE)
    one_line_error(result, str(checkpoint / CHECKPOINT_FILE))


@pytest.mark.parametrize("name", ["zero.csv", "zero.nn", "zero.onnx", "zero.npz",
                                  "zero-idx3-ubyte"])
def test_dev_zero_under_any_name_is_refused_not_read(tmp_path, zero_device, name):
    link = tmp_path / name
    link.symlink_to(zero_device)
    command = ("check", link) if name.endswith((".nn", ".onnx")) else \
        ("run", DIGITS, "--inputs", link)
    # A process of its own: an unbounded read of /dev/zero would fill this one's memory.
    result = chainrule_process(*command, timeout=60, max_memory=4 * 2 ** 30)
    one_line_error(result, "not a regular file but a character device")


def test_a_socket_is_refused(tmp_path):
    path = tmp_path / "s.csv"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        with no_hang():
            result = chainrule_cli("run", DIGITS, "--inputs", path)
    one_line_error(result, "not a regular file but a socket")


# ---- bounded reads ----------------------------------------------------------------------------

@pytest.mark.parametrize("module, limit, name, command", [
    (fileio, "MAX_TEXT_BYTES", "big.nn", ("check", "{file}")),
    (data_module, "MAX_TEXT_BYTES", "big.csv", ("run", DIGITS, "--inputs", "{file}")),
    (importer, "MAX_ONNX_BYTES", "big.onnx", ("check", "{file}")),
])
def test_a_file_past_its_kind_limit_is_refused_with_its_size(tmp_path, monkeypatch, module,
                                                            limit, name, command):
    monkeypatch.setattr(module, limit, 1000)
    path = tmp_path / name
    path.write_bytes(b"#" * 1500)
    result = chainrule_cli(*(str(a).format(file=path) for a in command))
    one_line_error(result, f"{path}: error: 1,500 bytes, more than the 1,000")


def test_a_file_that_grows_while_read_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "m.nn"
    path.write_text(SUM_MODEL)
    real_fstat = os.fstat

    def fstat_said_less(descriptor):  # as if the file grew between fstat and read
        result = real_fstat(descriptor)
        values = list(result)
        values[stat.ST_SIZE] -= 5
        return os.stat_result(values)
    monkeypatch.setattr(fileio.os, "fstat", fstat_said_less)
    with pytest.raises(ChainruleError, match="grew while being read"):
        fileio.read_text(path)


@pytest.mark.skipif(not os.path.isfile("/proc/self/status"), reason="no /proc file system")
def test_a_proc_file_that_reports_no_size_is_named_as_such():
    one_line_error(chainrule_cli("check", "/proc/self/status"),
                   "/proc/self/status: error: reports a size of 0 but holds data: a /proc or "
                   "/sys file? chainrule reads regular files of known size")


# ---- IDX: bombs and zero dims -----------------------------------------------------------------

def idx_bytes(shape, payload: bytes = b"") -> bytes:
    return b"\0\0\x08" + bytes([len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


def test_a_gzipped_idx_promising_more_values_than_a_tensor_holds_is_refused(tmp_path):
    path = tmp_path / "bomb-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes((3_200_000, 28, 28), bytes(1 << 20))))
    with pytest.raises(ChainruleError, match="2,508,800,000 values, more than the"):
        read_idx(path)


def test_a_gzipped_idx_promising_more_than_it_inflates_to_allocates_only_what_is_there(tmp_path):
    path = tmp_path / "short-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes((200_000, 28, 28), bytes(28 * 28 * 10))))
    tracemalloc.start()
    try:
        with pytest.raises(ChainruleError, match="truncated: the header promises"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2 ** 20  # the promise is 157 MB; the data 8 KB


def test_an_idx_promising_more_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "available_memory", lambda: 1_000_000)
    path = tmp_path / "big-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes((2_000, 28, 28), bytes(2_000 * 28 * 28))))
    with pytest.raises(ChainruleError, match="1,568,000 bytes, more than the 1,000,000"):
        read_idx(path)


def test_a_plain_idx_shorter_than_its_header_is_refused_from_its_size(tmp_path):
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(idx_bytes((100, 28, 28), bytes(28 * 28)))
    with pytest.raises(ChainruleError, match="78,400 bytes of data.*holds 784"):
        read_idx(path)


@pytest.mark.parametrize("shape", [(0, 28, 28), (5, 0, 28), (0,)])
def test_an_idx_with_a_zero_dim_is_an_empty_array(tmp_path, shape):
    path = tmp_path / "empty-idx3-ubyte"
    path.write_bytes(idx_bytes(shape))
    array = read_idx(path)
    assert array.shape == shape and array.dtype == np.uint8


def test_an_empty_idx_runs_and_training_on_it_is_refused_as_for_npy(tmp_path):
    model = tmp_path / "m.nn"
    model.write_text(SUM_MODEL.replace("f32[B, 4]", "f32[B, 3, 4]"))
    images = tmp_path / "none-idx3-ubyte"
    images.write_bytes(idx_bytes((0, 3, 4)))
    assert "J  float32[] = 0" in ok(chainrule_cli("run", model, "--input", f"x={images}")).stdout
    result = fails(chainrule_cli("train", model, "--data", images, "-o", tmp_path / "p.npz"))
    assert result.stderr.splitlines()[-1] == "chainrule: error: training data has 0 rows"


def test_an_idx_of_more_dims_than_a_tensor_has_is_refused(tmp_path):
    path = tmp_path / "deep-idx3-ubyte"
    path.write_bytes(idx_bytes((1,) * 255, b"\x07"))
    result = chainrule_cli("run", DIGITS, "--input", f"x={path}", "--random-inputs")
    one_line_error(result, f"{path}: error: the header gives 255 dims; a tensor has at most "
                           f"{limits.MAX_RANK}")


# ---- disk full --------------------------------------------------------------------------------

@contextlib.contextmanager
def full_disk_on_write():
    """Every os.write to a file other than stdin/out/err fails as on a full disk."""
    real_write = os.write

    def write(descriptor, data):
        if descriptor > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(descriptor, data)
    os.write = write
    try:
        yield
    finally:
        os.write = real_write


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs, where this test may mount one (it needs root)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mount = shutil.which("mount")
    if mount is None or subprocess.run([mount, "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                                        str(mount_point)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root, or no mount)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def assert_kept_and_clean(path, earlier: bytes):
    assert path.read_bytes() == earlier
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_full_tmpfs_keeps_the_earlier_file_and_no_temporary(small_tmpfs):
    path = small_tmpfs / "params.npz"
    path.write_bytes(b"earlier")
    with pytest.raises(ChainruleError) as caught:
        fileio.atomic_write_bytes(path, bytes(200_000))
    assert caught.value.render() == (f"{path}: error: cannot be written: No space left on "
                                     f"device; the earlier file is unchanged")
    assert_kept_and_clean(path, b"earlier")


def test_a_full_tmpfs_at_a_checkpoint_is_one_line(small_tmpfs):
    (small_tmpfs / "filler").write_bytes(bytes(60 * 1024))
    result = chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "1",
                           "--checkpoint", small_tmpfs / "ckpt", "-q")
    one_line_error(result, "checkpoint.npz: error: cannot be written: No space left on device")
    assert not [p for p in (small_tmpfs / "ckpt").iterdir() if p.name.endswith(".tmp")]


def test_a_failed_write_of_an_output_keeps_the_earlier_one(tmp_path):
    out = tmp_path / "out.npz"
    out.write_bytes(b"earlier")
    with full_disk_on_write():
        result = chainrule_cli("run", DIGITS, "--random-inputs", "-o", out)
    one_line_error(result, f"{out}: error: cannot be written: No space left on device; the "
                           f"earlier file is unchanged")
    assert_kept_and_clean(out, b"earlier")


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_checkpoint(tmp_path):
    checkpoint = tmp_path / "ckpt"
    ok(chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "1",
                     "--checkpoint", checkpoint, "-q"))
    kept = (checkpoint / CHECKPOINT_FILE).read_bytes()
    with full_disk_on_write():
        result = chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "2",
                               "--resume", checkpoint, "--override", "-q")
    assert "No space left on device" in fails(result).stderr
    assert (checkpoint / CHECKPOINT_FILE).read_bytes() == kept
    assert not [p for p in checkpoint.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc file system")
def test_a_checkpoint_under_proc_fails_before_training():
    result = chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--checkpoint",
                           "/proc/chainrule-ck")
    one_line_error(result, "/proc/chainrule-ck: error: cannot be written")
    assert result.stdout == ""


# ---- output paths -----------------------------------------------------------------------------

def test_output_to_a_fifo_is_refused_and_the_fifo_stays(fifo):
    with no_hang():
        result = chainrule_cli("run", DIGITS, "--random-inputs", "-o", fifo)
    one_line_error(result, "it is a FIFO (named pipe), not a regular file")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_output_to_a_device_is_refused_before_any_work(zero_device):
    device = zero_device
    result = chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "-o", device)
    one_line_error(result, "it is a character device, not a regular file")
    assert stat.S_ISCHR(os.stat(device).st_mode) and result.stdout == ""


def test_output_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    target, link = tmp_path / "real.npz", tmp_path / "link.npz"
    target.write_bytes(b"earlier")
    link.symlink_to("real.npz")
    ok(chainrule_cli("run", DIGITS, "--random-inputs", "-o", link))
    assert link.is_symlink() and os.readlink(link) == "real.npz"
    assert set(np.load(target)) == {"J", "acc", "logits"}


def symlink_loop(folder):
    (folder / "loop2").symlink_to("loop1")
    (folder / "loop1").symlink_to("loop2")
    return folder / "loop1"


def symlink_chain_too_long_to_follow(folder):
    for number in range(1, 51):
        (folder / f"link{number}").symlink_to(f"link{number + 1}")
    return folder / "link1"


@pytest.mark.parametrize("make_links", [symlink_loop, symlink_chain_too_long_to_follow])
def test_output_through_symlinks_that_cannot_be_followed_is_refused_before_any_work(
        tmp_path, make_links):
    out = make_links(tmp_path)
    links = {path: os.readlink(path) for path in tmp_path.iterdir()}
    result = chainrule_cli("train", DIGITS, "--data", DIGITS_DATA, "--epochs", "1", "-o", out)
    one_line_error(result, f"{out}: error: cannot be written: too many levels of symbolic links")
    assert result.stdout == ""
    assert {path: os.readlink(path) for path in tmp_path.iterdir()} == links


def test_import_checks_its_params_file_before_writing_the_model(tmp_path, fifo):
    model = tmp_path / "m.onnx"
    chainrule.compile(DIGITS).to_onnx(model)
    (tmp_path / "m.npz").symlink_to(fifo)
    result = chainrule_cli("import", model, "-o", tmp_path / "m.nn")
    one_line_error(result, "m.npz: error: cannot be written: it is a FIFO")
    assert not (tmp_path / "m.nn").exists()


def test_import_writes_the_params_before_the_model_that_names_them(tmp_path, monkeypatch):
    model = tmp_path / "m.onnx"
    chainrule.compile(DIGITS).to_onnx(model)
    written = []
    real_write = fileio.atomic_write_bytes
    monkeypatch.setattr(fileio, "atomic_write_bytes",
                        lambda path, data: (written.append(path.name), real_write(path, data)))
    monkeypatch.setattr(inspecting, "atomic_write_bytes", fileio.atomic_write_bytes)
    ok(chainrule_cli("import", model, "-o", tmp_path / "m.nn"))
    assert written == ["m.npz", "m.nn"]


def test_output_over_an_existing_file_keeps_its_mode(tmp_path):
    out = tmp_path / "out.npz"
    out.write_bytes(b"earlier")
    out.chmod(0o600)
    ok(chainrule_cli("run", DIGITS, "--random-inputs", "-o", out, umask=0o022))
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert set(np.load(out)) == {"J", "acc", "logits"}


def test_a_nul_byte_in_an_output_path_is_a_file_error(tmp_path):
    with pytest.raises(ChainruleError, match="not a usable path: it contains a NUL byte"):
        fileio.atomic_write_bytes(tmp_path / "a\0b.npz", b"data")


def test_viz_without_graphviz_says_it_writes_the_dot_and_never_replaces_one(tmp_path,
                                                                            monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    picture, dot = tmp_path / "h.svg", tmp_path / "h.dot"
    first = ok(chainrule_cli("viz", DIGITS, "-o", picture))
    assert f"note: Graphviz's dot program is not installed (apt-get install graphviz); " \
           f"writing {dot} instead" in first.stderr
    assert first.stdout == f"wrote {dot}\n" and "digraph" in dot.read_text()
    dot.write_text("mine")
    one_line_error(chainrule_cli("viz", DIGITS, "-o", picture), f"which exists; remove it, "
                                                                f"or give -o {dot}")
    assert dot.read_text() == "mine" and not picture.exists()


# ---- data checked at load ---------------------------------------------------------------------

def test_nan_in_an_array_is_named_with_its_index_before_training(tmp_path):
    arrays = dict(np.load(DIGITS_DATA))
    arrays["x"][17, 3] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, **arrays)
    result = chainrule_cli("train", DIGITS, "--data", path, "--epochs", "1")
    one_line_error(result, f"{path}: error: array 'x' holds nan at index [17, 3] (row 17, "
                           f"counting from 0)", "data must be finite")
    assert result.stdout == ""


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_csv_values_are_named_by_file_line(tmp_path, value):
    path = tmp_path / "d.csv"
    path.write_text(f"a,b\n1,2\n\n3,4\n5,{value}\n")
    with pytest.raises(ChainruleError, match=f"line 5, column 'b': {value}; data must be "
                                             f"finite"):
        read_csv(path)


@pytest.mark.parametrize("text, expected", [
    ("a,b\n1,2\n3,x\n", "line 3, column 'b' holds 'x'"),
    ("a,b\n1,2\n\n# a comment\n3,4,5\n", "line 5 has 3 fields, the header names 2"),
    ("a,b\r\n1,2\r\n3,oops\r\n", "line 3, column 'b' holds 'oops'"),
])
def test_csv_errors_count_file_lines_from_the_header(tmp_path, text, expected):
    path = tmp_path / "d.csv"
    path.write_bytes(text.encode())
    with pytest.raises(ChainruleError, match=expected):
        read_csv(path)


def test_a_csv_with_blank_and_comment_lines_reads_its_rows(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n\n# skipped\n3,4\n")
    assert read_csv(path).arrays["features"].tolist() == [[1, 2], [3, 4]]


def test_reading_a_csv_takes_memory_in_proportion_to_its_matrix(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "CSV_BLOCK_BYTES", 1 << 16)
    path = tmp_path / "tall.csv"
    path.write_bytes(b"x0\n" + b"1\n" * 1_000_000)
    tracemalloc.start()
    try:
        features = read_csv(path).arrays["features"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert features.shape == (1_000_000, 1) and features.sum() == 1_000_000
    assert peak < 2 * features.nbytes  # the text as Python strings takes 100 MB and more


@pytest.mark.parametrize("block_bytes", [1, 7, 1 << 16])
def test_csv_lines_are_counted_across_blocks(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(data_module, "CSV_BLOCK_BYTES", block_bytes)
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n\n# skipped\n3,4\n5,6\n7,nan\n")
    with pytest.raises(ChainruleError, match="line 7, column 'b': nan"):
        read_csv(path)
    path.write_text("a,b\n1,2\n\n# skipped\n3,4\n5,6\n7,8")
    assert read_csv(path).arrays["features"].tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]]
    path.write_text("a,b\n1,2\n3,4\n5,6\n7,x\n")
    with pytest.raises(ChainruleError, match="line 5, column 'b' holds 'x'"):
        read_csv(path)


def test_one_hot_labels_for_class_indices_get_a_hint(tmp_path):
    arrays = dict(np.load(DIGITS_DATA))
    arrays["y"] = np.eye(10, dtype=np.float32)[arrays["y"]]
    path = tmp_path / "one_hot.npz"
    np.savez(path, **arrays)
    result = chainrule_cli("train", DIGITS, "--data", path, "--epochs", "1")
    one_line_error(result, "input 'y' takes class indices (i64[B])", "look one-hot",
                   "labels.argmax(axis=1)")


def test_idx_images_gain_the_channel_axis_of_a_one_channel_input(tmp_path):
    model = tmp_path / "m.nn"
    model.write_text("model m(x: f32[B, 1, 3, 4]) {\n    J = sum(x)\n    return J\n}\n")
    images = tmp_path / "im-idx3-ubyte"
    images.write_bytes(idx_bytes((2, 3, 4), bytes(range(24))))
    result = ok(chainrule_cli("run", model, "--input", f"x={images}"))
    assert f"input 'x': [2, 3, 4] from {images} given a channel axis, [2, 1, 3, 4]" \
        in result.stderr
    assert "J  float32[] = 276" in result.stdout


def test_the_channel_axis_is_not_added_when_other_dims_differ(tmp_path):
    model = chainrule.compile(source="model m(x: f32[B, 1, 3, 5]) {\n    J = sum(x)\n"
                                     "    return J\n}\n")
    array, notes = data_module.conform(model.graph.inputs[0], np.zeros((2, 3, 4), np.float32),
                                       "a.npy")
    assert array.shape == (2, 3, 4) and not notes


def test_the_python_api_adds_the_channel_axis_with_an_input_note():
    model = chainrule.compile(source="model m(x: f32[B, 1, 3, 4]) {\n    J = sum(x)\n"
                                     "    return J\n}\n")
    with pytest.warns(chainrule.InputNote, match=r"\[2, 3, 4\] from the argument given a "
                                                 r"channel axis, \[2, 1, 3, 4\]"):
        result = model.run(x=np.ones((2, 3, 4), np.float32))
    assert result["J"] == 24
