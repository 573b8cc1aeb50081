"""The long run's watch over every fuzz example (`CHAINRULE_LONG_RUN=1`; docs/internals.md).

Each example of a test marked `fuzz` (tests/support/fuzzing.py) fails, and hypothesis names it
as it names any failing example, if it takes over 10 s or if the process's resident memory
passes 2 GB while it runs.

The 10 s are an example's own time, the wall-clock time less what it spent waiting for a CPU
that other processes held, so that a busy shared machine or a `nice` run never makes a quick
example look hung, while an example blocked on a read still counts every second.

The process's writable memory is capped at 2 GB besides (RLIMIT_DATA), so that a runaway
allocation ends in a MemoryError, a failure like any other, before it can take a shared
machine's memory; child processes inherit the cap. The address space (RLIMIT_AS) is not
capped: it counts what allocators and thread stacks reserve and never touch.

A hang inside C code, which a Python signal handler cannot interrupt, ends the process with
every thread's traceback after five minutes of wall-clock time.

At the end, one line per test (examples run, whether it failed, its slowest example, its peak
resident memory) and one per kind (examples run of the long run's count).
"""
from __future__ import annotations

import contextlib
import faulthandler
import functools
import re
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .fuzzing import KINDS, long_run_count

HANG_SECONDS = 10
LAST_RESORT_SECONDS = 300
MEMORY_BYTES = 2 << 30
PROCESS_STATUS = Path("/proc/self/status")
# Writing 5 here resets the process's peak resident memory (VmHWM) to its current size.
PEAK_RESET = Path("/proc/self/clear_refs")
# The calling thread's time on a CPU and time waiting for one, in nanoseconds.
SCHEDULER_STATS = Path("/proc/thread-self/schedstat")


def peak_resident_bytes() -> int:
    """The process's peak resident memory since it was last reset."""
    kilobytes = re.search(r"^VmHWM:\s+(\d+) kB", PROCESS_STATUS.read_text(), re.MULTILINE)
    return int(kilobytes.group(1)) * 1024


def reset_peak() -> None:
    PEAK_RESET.write_text("5")


def waited_for_a_cpu() -> float:
    """Seconds this thread has been ready to run while other processes held the CPUs."""
    return int(SCHEDULER_STATS.read_text().split()[1]) / 1e9


class Stopwatch:
    """The time since it started, less the time spent waiting for a CPU."""

    def __init__(self):
        self.started, self.waited = time.perf_counter(), waited_for_a_cpu()

    def seconds(self) -> float:
        return time.perf_counter() - self.started - (waited_for_a_cpu() - self.waited)


@contextlib.contextmanager
def alarm(stopwatch: Stopwatch, seconds: float):
    """Fail the block once `stopwatch` reaches `seconds`."""
    def ring(signum, frame):
        remaining = seconds - stopwatch.seconds()
        if remaining > 0:  # the block waited for a CPU meanwhile: its own time is not up
            signal.setitimer(signal.ITIMER_REAL, remaining)
        else:
            pytest.fail(f"an example ran over {seconds} s", pytrace=False)
    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Tally:
    """What one fuzz test's examples came to."""
    kind: str
    examples: int = 0
    slowest: float = 0.0
    peak_resident: int = 0
    failed: bool = False


def cap_memory() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_BYTES, hard))


def watched(test, tally: Tally):
    """`test`, one hypothesis example, under the alarm and the memory check, counted."""
    @functools.wraps(test)
    def run_example(*args, **kwargs):
        reset_peak()
        faulthandler.dump_traceback_later(LAST_RESORT_SECONDS, exit=True)
        stopwatch = Stopwatch()
        try:
            with alarm(stopwatch, HANG_SECONDS):
                return test(*args, **kwargs)
        finally:
            faulthandler.cancel_dump_traceback_later()
            tally.examples += 1
            tally.slowest = max(tally.slowest, stopwatch.seconds())
            peak = peak_resident_bytes()
            tally.peak_resident = max(tally.peak_resident, peak)
            if peak > MEMORY_BYTES:
                pytest.fail(f"the process's resident memory reached {peak / 2**30:.2f} GB, "
                            f"over {MEMORY_BYTES / 2**30:.0f} GB", pytrace=False)
    return run_example


class LongRun:
    """The pytest plugin that watches the long run's fuzz tests and sums them up."""

    def __init__(self):
        self.tallies: dict[str, Tally] = {}

    def pytest_configure(self, config):
        cap_memory()

    def pytest_collection_modifyitems(self, items):
        for item in items:
            mark = item.get_closest_marker("fuzz")
            if mark is None:
                continue
            tally = self.tallies[item.nodeid] = Tally(kind=mark.args[0])
            # `inner_test` is the body hypothesis runs once per example; replacing it to wrap
            # each run is what hypothesis documents it for.
            item.obj.hypothesis.inner_test = watched(item.obj.hypothesis.inner_test, tally)

    def pytest_runtest_logreport(self, report):
        if report.nodeid in self.tallies and report.failed:
            self.tallies[report.nodeid].failed = True

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.section("long run")
        for line in summary(self.tallies):
            terminalreporter.write_line(line)


def summary(tallies: dict[str, Tally]) -> list[str]:
    """A line per test, then a line per kind."""
    lines = [f"{nodeid}: {tally.examples:,} examples, {'FAILED' if tally.failed else 'passed'}, "
             f"slowest {tally.slowest:.2f} s, peak resident memory "
             f"{tally.peak_resident / 2**20:,.0f} MB" for nodeid, tally in tallies.items()]
    for kind in KINDS:
        of_kind = [tally for tally in tallies.values() if tally.kind == kind.name]
        lines.append(f"{kind.name}: {sum(tally.examples for tally in of_kind):,} examples of "
                     f"{long_run_count(kind.total):,} asked, "
                     f"{sum(tally.failed for tally in of_kind)} of {len(of_kind)} tests failed")
    return lines
