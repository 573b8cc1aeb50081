"""The one way tests run the command line.

`chainrule(...)` runs `chainrule.cli.main` in this process, as `python -m chainrule ...` would
run it in a new one, and returns a `subprocess.CompletedProcess` (returncode, stdout, stderr).
A new process costs about a second of imports; the suite runs a few hundred commands.

What a process would keep to itself is kept per call: the working directory, the umask, the
environment, SIGINT/SIGTERM handlers, the threads setting and Python's warnings filters, which
print to the command's stderr as they would to a process'. An exception `main` lets through is
printed as the interpreter prints it, with exit code 1, so "no Traceback in stderr" means what
it means for a process.

`chainrule_process(...)` is the real thing, for the few tests that need a process: the
`python -m chainrule` entry point itself, a signal, a kill, a second process holding a lock.
"""
from __future__ import annotations

import contextlib
import io
import os
import resource
import signal
import subprocess
import sys
import traceback
import warnings

from .paths import ROOT

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The categories a new interpreter ignores (outside __main__), as `python -W` documents.
QUIET_BY_DEFAULT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def chainrule(*args, cwd=None, umask=None) -> subprocess.CompletedProcess:
    """`chainrule ARGS...` run in process from `cwd` (default: the repository's root)."""
    from chainrule.cli import main
    argv = [str(arg) for arg in args]
    out, err = io.StringIO(), io.StringIO()
    with isolated(cwd or ROOT, umask), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err), warnings_to(err):
        code = exit_code(main, argv)
    return subprocess.CompletedProcess(["chainrule", *argv], code, out.getvalue(),
                                       err.getvalue())


def exit_code(main, argv: list[str]) -> int:
    """What the process would exit with: main's return value, SystemExit's code (argparse's
    usage errors and --version), or 1 after an uncaught exception's traceback."""
    try:
        return main(argv)
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001 - shown as the interpreter would show it
        traceback.print_exc()
        return 1


@contextlib.contextmanager
def isolated(cwd, umask):
    """Run in `cwd` with `umask`, and give back the process-wide state a command may change."""
    from chainrule.backends.threads import set_threads
    previous_cwd, environment = os.getcwd(), dict(os.environ)
    handlers = {number: signal.getsignal(number) for number in HANDLED_SIGNALS}
    previous_umask = os.umask(umask) if umask is not None else None
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(previous_cwd)
        if previous_umask is not None:
            os.umask(previous_umask)
        os.environ.clear()
        os.environ.update(environment)
        for number, handler in handlers.items():
            signal.signal(number, handler)
        set_threads(None)  # --threads lasts for a process; the tests never set it otherwise


@contextlib.contextmanager
def warnings_to(stream):
    """Warnings print to `stream` once per place, under the interpreter's default filters."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in QUIET_BY_DEFAULT:
            warnings.simplefilter("ignore", category)
        warnings.showwarning = lambda message, category, filename, lineno, file=None, \
            line=None: stream.write(warnings.formatwarning(message, category, filename, lineno,
                                                           line))
        yield


def chainrule_process(*args, cwd=None, timeout=300,
                      max_memory=None) -> subprocess.CompletedProcess:
    """`python -m chainrule ARGS...` in a new process; `max_memory` caps its address space
    (bytes), so a read without bound fails in it instead of exhausting the machine."""
    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))
    return subprocess.run([sys.executable, "-m", "chainrule", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT, timeout=timeout,
                          preexec_fn=limit_memory if max_memory else None)


def start_chainrule_process(*args, cwd=None) -> subprocess.Popen:
    """`python -m chainrule ARGS...` started in a new process, its output piped."""
    return subprocess.Popen([sys.executable, "-m", "chainrule", *map(str, args)],
                            cwd=cwd or ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """The command exited 0 without a traceback."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def fails(result: subprocess.CompletedProcess, code: int = 1) -> subprocess.CompletedProcess:
    """The command exited with `code` (1: a chainrule error, 2: a usage error), no traceback."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result
