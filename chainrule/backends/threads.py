"""How many threads the backends compute with: numpy's BLAS per matrix product, and
onnxruntime's intra-op pool per session.

The setting: `set_threads(N)` (the CLI's `--threads N`), else the environment variable
CHAINRULE_NUM_THREADS, else "auto". A number is used for everything. Under "auto" (the default)
the choice is made per op, from its size and from how many cores other processes leave free:

- numpy: a matrix product (a matmul, a gemm, a convolution's columns times its weight) of at
  least PARALLEL_MIN_FLOPS runs on every free core; a smaller one on one thread, since
  waking a second thread costs more than it saves there. The limit is set on numpy's BLAS
  through threadpoolctl (the `speed` extra) only when it changes, a call of about 3 µs;
  without threadpoolctl numpy's BLAS keeps the threads it started with (OPENBLAS_NUM_THREADS,
  else every core) and only onnxruntime follows the setting.
- onnxruntime: a session gets a pool of the free cores when its largest product, at the first
  call's sizes, is of SESSION_POOL_MIN_FLOPS or more, and onnxruntime's own cost model then
  runs each op on one thread or several by the op's size; the pool's threads sleep between
  ops rather than spin (onnx_backend.session_options).

Free cores. A thread that another process keeps busy is descheduled for whole time slices, and
a parallel product waits for its slowest thread, so a second thread on a busy machine costs
several times what it saves (docs/performance.md, `bench.py --busy`). `free_cores` counts the
cores this process may use (its CPU affinity, within a cgroup's CPU quota) and leaves out those
the rest of the machine kept busy since the last sample, taken at most every SAMPLE_SECONDS
(from /proc/stat's lines of those CPUs, less this process' own CPU time), rounded; where
/proc/stat is missing it counts every core free.
"""
from __future__ import annotations

import contextlib
import math
import os
import time

from ..ir import ChainruleError

ENV_VAR = "CHAINRULE_NUM_THREADS"
AUTO = "auto"
DEFAULT_THREADS = AUTO
# More than any machine chainrule targets has cores: a larger count is a typo, and past 2**31
# onnxruntime's session options refuse it with a TypeError.
MAX_THREADS = 1024
# Measured on the 2-core machine, quiet (docs/performance.md, threads): a float32 product of
# 9 MFLOP (a LeNet convolution's) takes 155 µs on one thread and 85 on two, one of 1 MFLOP
# gains nothing, and OpenBLAS itself runs products below about 0.5 MFLOP on one thread.
PARALLEL_MIN_FLOPS = 4_000_000
# An onnxruntime session's pool serves every op of the graph, and each op it splits pays a
# wake-up: measured (docs/performance.md, threads), a pool made LeNet's step (largest product
# 9 MFLOP, a hundred ops) 1.1x slower and the lecture MLP's at batch 128 (51 MFLOP, twenty
# ops) 0.74x, so a session takes one only for a product of this size.
SESSION_POOL_MIN_FLOPS = 20_000_000
# How often the other processes' load is sampled: often enough to follow a job that starts or
# ends, rarely enough that reading /proc/stat (about 60 µs) costs nothing measurable.
SAMPLE_SECONDS = 0.5
# The CPU time the rest of the machine used, in cores, from which a core counts as taken:
# a background daemon's few percent leaves it free, a process spinning on it does not.
BUSY_CORE = 0.5

_chosen: int | str | None = None  # set_threads' value; None: the environment's or the default
_blas_threads: int | None = None  # the limit last set on numpy's BLAS
# The threads of a product below PARALLEL_MIN_FLOPS, kept so that the products of a small step
# (a few µs each) pay no lookup of the setting; noted by apply_blas_threads, which set_threads
# and every backend's creation (get_backend) call.
_small_op_threads = 1
_blas_controllers: list | None = None
_sample: tuple | None = None      # (wall, machine busy seconds, own CPU seconds, free cores)


def set_threads(count: int | str | None) -> None:
    """Use `count` threads from now on ("auto": chosen per op; None: back to the environment's
    or the default)."""
    global _chosen
    if count is not None and count != AUTO:
        _check(count, "--threads")
    _chosen = count
    apply_blas_threads()


def _note_small_op_threads() -> None:
    global _small_op_threads
    chosen = chosen_threads()
    _small_op_threads = 1 if chosen == AUTO else chosen


def chosen_threads() -> int | str:
    """The setting: a count, or AUTO."""
    if _chosen is not None:
        return _chosen
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return DEFAULT_THREADS
    if text == AUTO:
        return AUTO
    try:
        count = int(text)
    except ValueError:
        raise ChainruleError(f"{ENV_VAR}={text!r} is not a whole number of threads "
                             f"or {AUTO!r}") from None
    return _check(count, ENV_VAR)


def threads_for(flops: float, least: float = PARALLEL_MIN_FLOPS) -> int:
    """The threads for one op of `flops` floating-point operations, parallel under auto from
    `least` on."""
    chosen = chosen_threads()
    if chosen != AUTO:
        return chosen
    return 1 if flops < least else free_cores()


def _check(count: int, where: str) -> int:
    if not 1 <= count <= MAX_THREADS:
        raise ChainruleError(f"{where} must be 1 to {MAX_THREADS} threads, not {count}")
    return count


# ---- free cores -------------------------------------------------------------------------------

def free_cores() -> int:
    """The cores this process may use that other processes left free since the last sample
    (taken at most every SAMPLE_SECONDS; at least 1)."""
    global _sample
    now = time.monotonic()
    if _sample is not None and now - _sample[0] < SAMPLE_SECONDS:
        return _sample[3]
    cpus = usable_cpus()
    busy, own = _busy_seconds(cpus), time.process_time()
    cores = min(len(cpus), _quota_cores() or len(cpus))
    if busy is None:
        free = cores
    elif _sample is None:
        free = cores - _others_running_now(cores)
    else:
        others = (busy - _sample[1] - (own - _sample[2])) / (now - _sample[0])
        free = cores - min(cores - 1, int(max(0.0, others) + 1 - BUSY_CORE))
    _sample = (now, busy, own, max(1, free))
    return _sample[3]


def usable_cpus() -> frozenset:
    """The CPUs this process may run on (its affinity; every CPU where that is unknown)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return frozenset(range(os.cpu_count() or 1))


def _quota_cores() -> int | None:
    """The cores a cgroup's CPU quota allows (cgroup v2's cpu.max), or None without one: in a
    container limited to 2 CPUs of a 64-core host, threads past 2 only wait their turn."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as limit:
            quota, period = limit.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def _busy_seconds(cpus: frozenset) -> float | None:
    """The non-idle time since boot of the CPUs `cpus`, in seconds, from /proc/stat's lines of
    single CPUs; None where it is missing."""
    try:
        with open("/proc/stat", "rb") as stat:
            lines = [line.split() for line in stat if line[:3] == b"cpu" and line[3:4].isdigit()]
    except OSError:
        return None
    ticks = 0
    for fields in lines:
        if int(fields[0][3:]) in cpus:
            # user nice system idle iowait irq softirq steal (guest and guest_nice, which
            # user and nice already count, left out): all but idle and iowait are busy.
            counts = [int(field) for field in fields[1:9]]
            ticks += sum(counts) - counts[3] - (counts[4] if len(counts) > 4 else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _others_running_now(cores: int) -> int:
    """At the first sample, which has no interval yet: the threads of other processes running
    right now (/proc/loadavg's count of runnable threads, less this process' own), where the
    last minute's load average agrees, as whole cores taken (a transient process counts in
    the one and not the other)."""
    try:
        with open("/proc/loadavg") as loadavg:
            fields = loadavg.read().split()
        running, recent = int(fields[3].split("/")[0]), float(fields[0])
    except (OSError, IndexError, ValueError):
        return 0
    others = min(running - _own_running_threads(), round(recent))
    return min(cores - 1, max(0, others))


def _own_running_threads() -> int:
    """This process' threads that are running or runnable (state R in /proc/self/task)."""
    count = 0
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/stat", "rb") as stat:
                # The state follows the command in parentheses, which may hold spaces.
                count += stat.read().rsplit(b")", 1)[1].split()[0] == b"R"
    return max(count, 1)


# ---- numpy's BLAS -----------------------------------------------------------------------------

def _controllers() -> list:
    """threadpoolctl's handles on numpy's BLAS libraries; empty without threadpoolctl."""
    global _blas_controllers
    if _blas_controllers is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _blas_controllers = []
        else:
            _blas_controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas_controllers


def use_blas_threads(flops: float) -> None:
    """Set numpy's BLAS to the threads an op of `flops` gets (only when that changes)."""
    global _blas_threads
    count = _small_op_threads if flops < PARALLEL_MIN_FLOPS else threads_for(flops)
    if count != _blas_threads:
        for controller in _controllers():
            controller.set_num_threads(count)
        _blas_threads = count


def apply_blas_threads() -> bool:
    """Limit numpy's BLAS to the setting (under auto, one thread until a large product asks for
    more); False when threadpoolctl is absent."""
    _note_small_op_threads()
    if not _controllers():
        return False
    use_blas_threads(0)
    return True


def describe_threads() -> str:
    """The setting and where it comes from, for the benchmark's header and the CLI's notes."""
    source = ("set_threads" if _chosen is not None
              else ENV_VAR if os.environ.get(ENV_VAR, "").strip() else "default")
    blas = "BLAS too" if apply_blas_threads() else "BLAS unchanged (no threadpoolctl)"
    chosen = chosen_threads()
    if chosen == AUTO:
        return (f"auto threads ({source}: per op, products of {PARALLEL_MIN_FLOPS / 1e6:g} "
                f"MFLOP or more on the {free_cores()} free core(s); onnxruntime, {blas})")
    return f"{chosen} thread(s) ({source}; onnxruntime, {blas})"
