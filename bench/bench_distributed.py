"""Data-parallel training on Ray beside single-process training, in one run, as medians.

    python bench/bench_distributed.py            # every workload (a few minutes)
    python bench/bench_distributed.py --quick    # fewer repeats

Three workloads: the lecture MLP, LeNet, and a tiny MLP whose step on workers is all fixed
cost. For each (a global batch of 1024 rows, SGD) the train step runs on 1 and 2 local Ray
workers, and on 2 workers exchanging through plain actor calls rather than a compiled graph.
Each of these alternates with the single process (no Ray) in blocks of steps, five blocks
each, so that load from other processes falls on both alike; only one system runs on Ray at a
time, and its compiled graph is torn down while the single process runs (the graph's idle
workers poll their channels, which would slow it). A row gives the
median step, the single process's beside it and their ratio (above 1: the workers are
faster), the throughput, and the split the driver records each step: the slowest worker's
compute (its shard's gradients and the update), the communication (the rest of the time until
the step's results are in: sending the rows, exchanging the shards' sums, returning the
objective), and the driver's own rest, with the bytes of all the shards' sums.
"""
from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np

import chainrule
from bench import TINY_MLP_SOURCE
from chainrule.distributed import EXCHANGES, CompiledExchange, keep_freed_memory
from chainrule.passes.optimizers import OptimizerSpec
from chainrule.train import TrainConfig, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 1024
LR_VALUE = 0.01
WORKER_COUNTS = (1, 2)
ROUNDS = 5   # blocks of steps of each system, alternating
WARMUP = 2   # untimed steps at the start of a block (the first compiles the graph again)


def mlp_workload() -> tuple:
    rng = np.random.default_rng(0)
    return (chainrule.compile(os.path.join(ROOT, "examples", "mlp.nn")),
            {"x": rng.normal(size=(BATCH, 784)).astype(np.float32),
             "y": rng.integers(0, 10, BATCH)})


def lenet_workload() -> tuple:
    with np.load(os.path.join(ROOT, "examples", "data", "digits_train.npz")) as data:
        return (chainrule.compile(os.path.join(ROOT, "examples", "lenet_digits.nn")),
                {"x": data["x"][:BATCH], "y": data["y"][:BATCH]})


def tiny_workload() -> tuple:
    """Next to no compute and 0.6 KB of params: its step on workers is the fixed cost."""
    rng = np.random.default_rng(0)
    return (chainrule.compile(source=TINY_MLP_SOURCE),
            {"x": rng.normal(size=(BATCH, 8)).astype(np.float32),
             "y": rng.integers(0, 4, BATCH)})


WORKLOADS = {"lecture MLP": mlp_workload, "LeNet": lenet_workload, "tiny MLP": tiny_workload}


def ray_systems() -> dict:
    """Each way of running the step on Ray workers, by name: the workers, and the exchange
    (None: the one its trial keeps, as in training)."""
    systems = {f"{workers} Ray worker{'s' if workers > 1 else ''}": (workers, None)
               for workers in WORKER_COUNTS}
    systems.update({f"2 Ray workers, {exchange}": (2, exchange) for exchange in EXCHANGES})
    return systems


def measure(model, data: dict, repeats: int) -> list[tuple]:
    """Per system on Ray workers: the medians of its step, of the single process's step timed
    in alternating blocks with it, and of the split of its steps. Before each block of the
    single process the workers' compiled graph is torn down (and compiled again after it):
    its idle workers poll their channels, which would slow the single process's steps."""
    config = TrainConfig(optimizer=OptimizerSpec("sgd"), lr=LR_VALUE)
    single = Trainer(model, config)
    rows = np.arange(BATCH)
    results = []
    for name, (workers, exchange) in ray_systems().items():
        trainer = Trainer(model, config, workers=workers, notify=lambda text: None)
        trainer.runner.prepare(data, trainer.evaluate)  # as fit does: the data sent once
        replicas = trainer.runner.replicas
        replicas.kept = exchange
        while replicas.kept is None:  # the trial of the exchanges, untimed
            trainer.step_on(data, rows, LR_VALUE)
        if exchange is None:
            name += f" (kept {replicas.kept})"
        single_seconds, worker_seconds, records = [], [], []
        for _ in range(ROUNDS):
            if isinstance(replicas.exchange, CompiledExchange):
                replicas.stop_exchange()
            single_seconds += timed_steps(single, data, rows, repeats // ROUNDS)
            first = len(replicas.step_records) + WARMUP
            worker_seconds += timed_steps(trainer, data, rows, repeats // ROUNDS)
            records += replicas.step_records[first:]
        compute, communication, sums = np.array(records).T
        seconds = np.array(worker_seconds)
        results.append((name, float(np.median(seconds)), float(np.median(single_seconds)),
                        (np.median(compute), np.median(communication),
                         np.median(seconds - compute - communication), sums[-1])))
        trainer.close()
    return results


def timed_steps(trainer, data: dict, rows: np.ndarray, count: int) -> list[float]:
    """The seconds of each of `count` steps, after WARMUP untimed ones."""
    seconds = []
    for index in range(WARMUP + count):
        started = time.perf_counter()
        trainer.step_on(data, rows, LR_VALUE)
        if index >= WARMUP:
            seconds.append(time.perf_counter() - started)
    return seconds


def print_rows(workload: str, results: list[tuple]) -> None:
    for name, seconds, single, (compute, communication, rest, sums) in results:
        cells = [f"{seconds * 1e3:.2f}", f"{single * 1e3:.2f}", f"{single / seconds:.2f}x",
                 f"{BATCH / seconds:,.0f}", f"{compute * 1e3:.2f}",
                 f"{communication * 1e3:.2f}", f"{rest * 1e3:.2f}", f"{sums / 1024:,.1f}"]
        print(f"| {workload} | {name} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 15 if args.quick else 60
    # The single process keeps freed memory as the workers do: else, in some processes (this
    # one, once Ray has started), glibc hands each step's freed arrays back to the system and
    # the next step faults them in again (1,856 page faults a lecture MLP step), which would
    # flatter the workers' ratios.
    keep_freed_memory()
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    print(f"chainrule distributed benchmark: {os.cpu_count()} cores, ray {ray.__version__}, "
          f"global batch {BATCH}, SGD, {repeats} steps per system; load average before: "
          f"{os.getloadavg()[0]:.2f}")
    print("\n| workload | system | step (ms) | single process (ms) | speed-up | examples/s "
          "| worker compute (ms) | communication (ms) | driver's rest (ms) | sums (KB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for name, workload in WORKLOADS.items():
            print_rows(name, measure(*workload(), repeats))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
