"""The command line in a real process: the `python -m chainrule` entry point, and the in-process
runner the other CLI tests use (tests/support/cli.py) giving what a process gives.

Signals, kills, locks held by another process and fresh imports are tested where they belong,
also in real processes (marker `subprocess`): tests/test_train.py, test_hardening.py,
test_distributed.py, test_api.py and test_docs.py.
"""
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
