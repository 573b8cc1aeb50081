"""The command line in a real process: the `python -m chainrule` entry point, and the in-process
runner the other CLI tests use (tests/support/cli.py) giving what a process gives.

Signals, kills, locks held by another process and fresh imports are tested where they belong,
also in real processes (marker `subprocess`): tests/test_train.py, test_hardening.py,
test_distributed.py, test_api.py and test_docs.py.
"""
import os
import subprocess
import sys

import pytest

import chainrule
from support.cli import chainrule as chainrule_cli
from support.cli import chainrule_process, ok
from support.paths import ROOT

pytestmark = pytest.mark.subprocess

MLP = ROOT / "examples" / "mlp.nn"


def test_version():
    result = ok(chainrule_process("--version"))
    assert result.stdout == f"chainrule {chainrule.__version__}\n"


@pytest.mark.parametrize("argv, code", [
    (["run", MLP, "--random-inputs", "--dim", "B=3"], 0),
    (["frobnicate", MLP], 2),  # a usage error: argparse exits
    (["run", MLP], 1),  # a chainrule error: the inputs are missing
], ids=["run", "usage-error", "error"])
def test_the_in_process_runner_gives_what_a_process_gives(argv, code):
    process = chainrule_process(*argv)
    assert process.returncode == code and "Traceback" not in process.stderr
    in_process = chainrule_cli(*argv)
    assert (in_process.returncode, in_process.stdout, in_process.stderr) == \
        (process.returncode, process.stdout, process.stderr)


def test_a_reader_that_goes_away_loses_no_output_file(tmp_path):
    """`chainrule run ... -o out.npz | head -1`: the pipe closes before the command prints its
    summary; the command still writes its file and exits 0."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written
    with os.fdopen(write, "w") as closed:
        result = subprocess.run([sys.executable, "-m", "chainrule", "run", "examples/mlp.nn",
                                 "--random-inputs", "--dim", "B=4", "-o", tmp_path / "out.npz"],
                                cwd=ROOT, stdout=closed, stderr=subprocess.PIPE, text=True,
                                timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out.npz").exists()
