"""The `chainrule` command line: check, ir, run, grad, predict, evaluate, train, export,
import, viz, gradcheck, report.

`parser` declares the commands and their options; `inputs` reads models and data and binds
arrays to inputs; `inspecting` (check, ir, viz, export, import), `running` (run, grad,
gradcheck, predict, evaluate), `training` (train) and `reporting` (report) hold the commands.
Here: `main`, its error handling and exit codes.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys

from ..backends.threads import set_threads
from ..fileio import check_writable, read_text
from ..ir import ChainruleError
from .inputs import UsageError, random_inputs
from .parser import build_parser

__all__ = ["main", "random_inputs"]  # random_inputs: the tests draw inputs as the CLI does


def _source_lines(file: str):
    try:  # read as the compiler read it: bounded, regular files only
        return read_text(file).split("\n")  # newlines only, as the parser counts
    except ChainruleError:
        return None


def check_output_paths(args) -> None:
    """Every path the command will write can be written: checked before any work, so a long
    training never ends in a failure to save its result."""
    for option, is_directory in (("output", False), ("checkpoint", True),
                                 ("log_jsonl", False)):
        path = getattr(args, option, None)
        if path:
            check_writable(path, directory=is_directory)


class _QuietWhenClosed:
    """stdout that goes quiet when it cannot be written: its reader went away (`chainrule
    run ... -o out.npz | head -1`), it was closed (`>&-`) or its device is full. The command
    still finishes its work and writes its files; only a failure the user did not cause by
    closing the pipe is said, once, on stderr."""

    def __init__(self, stream):
        self.stream = stream if stream is not None else open(os.devnull, "w")

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as error:
            self._go_quiet(error)
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as error:
            self._go_quiet(error)

    def _go_quiet(self, error: OSError) -> None:
        if not isinstance(error, BrokenPipeError):
            print(f"chainrule: warning: cannot write to stdout ({error.strerror or error}); "
                  f"the command goes on without printing", file=sys.stderr)
        # The failed stream's descriptor now leads nowhere, so what its buffer still holds
        # is dropped at exit instead of failing again there.
        with contextlib.suppress(OSError, ValueError):
            nowhere = os.open(os.devnull, os.O_WRONLY)
            os.dup2(nowhere, self.stream.fileno())
            os.close(nowhere)
        self.stream = open(os.devnull, "w")

    def __getattr__(self, name):
        return getattr(self.stream, name)


def run_command(args) -> int:
    """The chosen command's function, imported only now (parser.COMMANDS), run on `args`."""
    module, function = args.command_function.split(".")
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)(args)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # which options were given
    if args.debug:
        os.environ["CHAINRULE_VERIFY"] = "1"  # debug mode verifies the IR between passes
    if not isinstance(sys.stdout, _QuietWhenClosed):
        sys.stdout = _QuietWhenClosed(sys.stdout)
    try:
        check_output_paths(args)
        if hasattr(args, "threads"):
            # Also refuses a bad $CHAINRULE_NUM_THREADS, before any work rather than at the
            # first onnxruntime session.
            set_threads(args.threads)
        return run_command(args)
    except UsageError as error:
        if args.debug:
            raise
        print(f"chainrule: error: {error}", file=sys.stderr)
        return 2
    except ChainruleError as error:
        if args.debug:
            raise
        # An error at no place in a file is the program's, and says so as usage errors do.
        prefix = "" if error.loc else "chainrule: "
        print(prefix + error.render(_source_lines), file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours.
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print("chainrule: interrupted", file=sys.stderr)
        return 130
