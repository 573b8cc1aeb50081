"""Data-parallel training on Ray beside single-process training, in one run, as medians.

    python bench/bench_distributed.py            # every workload (a few minutes)
    python bench/bench_distributed.py --quick    # fewer repeats

Three workloads: the lecture MLP, LeNet, and a tiny MLP whose step on workers is all fixed
cost. For each (a global batch of 1024 rows, SGD) the train step runs single-process (no
Ray), on 1 and 2 local Ray workers, and on 2 workers exchanging through plain actor calls
rather than a compiled graph, all timed in turn, step by step, so that load from other
processes falls on each alike. A row gives the median step, its throughput, its ratio to the
single process (above 1: faster), and for the workers the split the driver records each step:
the slowest worker's compute (its shard's gradients and the update), the communication (the
rest of the time until the step's results are in: sending the rows, exchanging the shards'
sums, returning the objective), and the driver's own rest, with the bytes of the sums.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import time

import numpy as np

import chainrule
from bench import TINY_MLP_SOURCE, interleaved_medians
from chainrule.distributed import CallExchange, ShardedRunner
from chainrule.passes.optimizers import OptimizerSpec
from chainrule.train import TrainConfig, Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 1024
LR_VALUE = 0.01
WORKER_COUNTS = (1, 2)


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


def trainers(model) -> dict:
    config = TrainConfig(optimizer=OptimizerSpec("sgd"), lr=LR_VALUE)
    systems = {"single process": Trainer(model, config)}
    for workers in WORKER_COUNTS:
        systems[f"{workers} Ray worker{'s' if workers > 1 else ''}"] = Trainer(
            model, config, workers=workers, notify=lambda text: None)
    calls = Trainer(model, config, workers=2, notify=lambda text: None)
    replicas = calls.runner.replicas
    replicas.exchange = CallExchange(replicas.ray, replicas.workers)
    systems["2 Ray workers, actor calls"] = calls
    return systems


def measure(model, data: dict, repeats: int) -> list[tuple]:
    """Per system: the median step, and for workers the medians of the split of each step."""
    systems = trainers(model)
    rows = np.arange(BATCH)
    step_seconds = {name: [] for name in systems}

    def timed_step(name, trainer):
        started = time.perf_counter()
        trainer.step_on(data, rows, LR_VALUE)
        step_seconds[name].append(time.perf_counter() - started)

    for trainer in systems.values():
        trainer.runner.prepare(data, trainer.evaluate)  # as fit does: the data sent once
    interleaved_medians({name: functools.partial(timed_step, name, trainer)
                         for name, trainer in systems.items()}, repeats)
    results = []
    for name, trainer in systems.items():
        seconds = np.array(step_seconds[name][-repeats:])
        split = None
        if workers_of(trainer) is not None:
            compute, communication, sums = np.array(
                workers_of(trainer).step_records[-repeats:]).T
            split = (np.median(compute), np.median(communication),
                     np.median(seconds - compute - communication), sums[-1])
        results.append((name, float(np.median(seconds)), split))
        trainer.close()
    return results


def workers_of(trainer):
    """The replicas of a trainer on Ray workers; None for one process."""
    return trainer.runner.replicas if isinstance(trainer.runner, ShardedRunner) else None


def print_rows(workload: str, results: list[tuple]) -> None:
    single = results[0][1]
    for name, seconds, split in results:
        cells = [f"{seconds * 1e3:.2f}", f"{BATCH / seconds:,.0f}", f"{single / seconds:.2f}x"]
        if split is None:
            cells += [""] * 4
        else:
            compute, communication, rest, sums = split
            cells += [f"{compute * 1e3:.2f}", f"{communication * 1e3:.2f}",
                      f"{rest * 1e3:.2f}", f"{sums / 1024:,.0f}"]
        print(f"| {workload} | {name} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 15 if args.quick else 60
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    print(f"chainrule distributed benchmark: {os.cpu_count()} cores, ray {ray.__version__}, "
          f"global batch {BATCH}, SGD, {repeats} steps per system; load average before: "
          f"{os.getloadavg()[0]:.2f}")
    print("\n| workload | system | step (ms) | examples/s | speed-up | worker compute (ms) "
          "| communication (ms) | driver's rest (ms) | sums (KB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for name, workload in WORKLOADS.items():
            print_rows(name, measure(*workload(), repeats))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
