"""How many threads the backends compute with: onnxruntime's intra-op pool and numpy's BLAS.

One setting covers both: `set_threads(N)` (the CLI's `--threads N`), else the environment
variable CHAINRULE_NUM_THREADS, else DEFAULT_THREADS. onnxruntime sessions created afterwards
take it. numpy's BLAS takes it at run time through threadpoolctl, installed with the `speed`
extra (`pip install chainrule[speed]`); without threadpoolctl numpy's BLAS keeps the threads it
started with (OPENBLAS_NUM_THREADS, else every core), and only onnxruntime follows the setting.
"""
from __future__ import annotations

import os

from ..ir import ChainruleError

ENV_VAR = "CHAINRULE_NUM_THREADS"
# One thread, measured on the 2-core machine (README, Performance): with a second thread
# onnxruntime and OpenBLAS gain at most 1.3x on the largest workload (a batch of 1024) when the
# machine is quiet, gain nothing on the small steps, and lose several times over when another
# process keeps one core busy, because each step then waits for a thread that is descheduled.
DEFAULT_THREADS = 1
# More than any machine chainrule targets has cores: a larger count is a typo, and past 2**31
# onnxruntime's session options refuse it with a TypeError.
MAX_THREADS = 1024

_chosen: int | None = None     # set_threads' value; None: the environment's or the default
_blas_applied: int | None = None


def set_threads(count: int | None) -> None:
    """Use `count` threads from now on (None: back to the environment's or the default)."""
    global _chosen
    if count is not None:
        _check(count, "--threads")
    _chosen = count
    apply_blas_threads()


def configured_threads() -> int:
    """The threads to use: set_threads' value, else CHAINRULE_NUM_THREADS, else the default."""
    if _chosen is not None:
        return _chosen
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return DEFAULT_THREADS
    try:
        count = int(text)
    except ValueError:
        raise ChainruleError(f"{ENV_VAR}={text!r} is not a whole number of threads") from None
    return _check(count, ENV_VAR)


def _check(count: int, where: str) -> int:
    if not 1 <= count <= MAX_THREADS:
        raise ChainruleError(f"{where} must be 1 to {MAX_THREADS} threads, not {count}")
    return count


def apply_blas_threads() -> bool:
    """Limit numpy's BLAS to the configured threads; False when threadpoolctl is absent.

    Cheap after the first call: the limit is set again only when the setting changed."""
    global _blas_applied
    count = configured_threads()
    if count == _blas_applied:
        return True
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return False
    threadpool_limits(limits=count, user_api="blas")
    _blas_applied = count
    return True


def describe_threads() -> str:
    """The setting and where it comes from, for the benchmark's header and the CLI's notes."""
    source = ("set_threads" if _chosen is not None
              else ENV_VAR if os.environ.get(ENV_VAR, "").strip() else "default")
    blas = "BLAS too" if apply_blas_threads() else "BLAS unchanged (no threadpoolctl)"
    return f"{configured_threads()} thread(s) ({source}; onnxruntime, {blas})"
