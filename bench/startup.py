"""How long a command line call takes from start to exit: the median wall time of N runs of
each command, interleaved so that a burst of load on the machine falls on all of them alike.

    python bench/startup.py            # 5 runs each
    python bench/startup.py --runs 11

Each run is a fresh process, as a user's call is: `chainrule --version` measures the cost of
starting at all, `chainrule check examples/mlp.nn` that of a command that parses a model, and
`python -c "import chainrule"` the package itself.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commands() -> dict[str, list[str]]:
    # The console script pip installed beside this interpreter (not a version manager's shim,
    # which adds a shell and a lookup of its own); `python -m chainrule` where there is none.
    script = os.path.join(sysconfig.get_path("scripts"), "chainrule")
    cli = [script] if os.path.exists(script) else [sys.executable, "-m", "chainrule"]
    return {
        "chainrule --version": cli + ["--version"],
        "chainrule check examples/mlp.nn": cli + ["check", "examples/mlp.nn"],
        "python -c 'import chainrule'": [sys.executable, "-c", "import chainrule"],
        "python -c 'pass' (the interpreter alone)": [sys.executable, "-c", "pass"],
    }


# As a user's machine runs Python: with bytecode caching, so that the warm-up run writes each
# module's .pyc and the timed runs read them (PYTHONDONTWRITEBYTECODE, set in some sandboxes,
# would make every run compile every module from source).
ENV = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}


def wall_time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    timings = {name: [] for name in commands()}
    for name, argv in commands().items():
        wall_time(argv)  # warm the file cache
    for _ in range(args.runs):
        for name, argv in commands().items():
            timings[name].append(wall_time(argv))
    print(f"| command | median of {args.runs} (s) | min (s) | max (s) |")
    print("|---|---:|---:|---:|")
    for name, seconds in timings.items():
        print(f"| `{name}` | {statistics.median(seconds):.3f} | {min(seconds):.3f} | "
              f"{max(seconds):.3f} |")
    print(f"\nload average (1 min) before the runs: {load:.2f}")


if __name__ == "__main__":
    main()
