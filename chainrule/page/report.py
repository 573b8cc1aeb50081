"""Training curves: the records of a training log (`train --log-jsonl`, or a `History`'s) as
the page's charts.

`read_log` reads and checks a JSONL log; `training_document` turns records into the page's
TRAINING data: one chart per quantity and scale (per epoch, per step), each a list of series
whose points are the finite values the records hold, in order, one point each:

    {"title", "objective": "J", "epochs": int, "steps": int or None, "notes": [str],
     "charts": [{"metric": "J", "title": "J per step", "scale": "epoch" | "step",
                 "x_label", "y_label",
                 "series": [{"name": "train" | "val" | "lr" | "compute" | "communication",
                             "x": [number], "y": [number]}]}]}
"""
from __future__ import annotations

import json
import math

from ..fileio import MAX_TEXT_BYTES, read_bytes
from ..ir import ChainruleError, file_error

# Series names the page knows (report.js colours and labels them).
TRAIN, VAL, LR, COMPUTE, COMMUNICATION = "train", "val", "lr", "compute", "communication"
# A Ray run's per-step timings: the per_step key and the series it is drawn as.
TIMINGS = (("compute_seconds", COMPUTE), ("communication_seconds", COMMUNICATION))


# ---- reading a log ----------------------------------------------------------------------------

def read_log(path) -> list[dict]:
    """The records of the JSONL training log at `path`, one per non-blank line, each checked
    to be an epoch's record; a bad line is an error naming it."""
    data = read_bytes(path, MAX_TEXT_BYTES, "training log")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise file_error(path, f"line {line}: not UTF-8 text ({error.reason}); a training "
                               f"log is JSON lines") from None
    records = []
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            records.append(parse_record(path, number, line))
    if not records:
        raise file_error(path, "the training log is empty: it holds no epoch's record (train "
                               "with --log-jsonl FILE writes one line per epoch)")
    return records


def parse_record(path, number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except ValueError as error:
        raise file_error(path, f"line {number}: not JSON ({error}); a training log holds "
                               f"one JSON object per line") from None
    problem = record_problem(record)
    if problem:
        raise file_error(path, f"line {number}: {problem}; not an epoch's record of "
                               f"chainrule train --log-jsonl")
    return record


def is_number(value) -> bool:
    return type(value) in (int, float)


def record_problem(record) -> str | None:
    """What keeps `record` from being an epoch's record, or None."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    epoch = record.get("epoch")
    if type(epoch) is not int or epoch < 1:
        return f"'epoch' is {'missing' if 'epoch' not in record else repr(epoch)}"
    for name in ("train", "val"):
        if name in record and not is_scores(record[name]):
            return f"'{name}' is not a mapping of names to numbers"
    if not isinstance(record.get("train"), dict):
        return "'train' is missing"
    for name in ("seconds", "lr"):
        if record.get(name) is not None and not is_number(record[name]):
            return f"'{name}' is {record[name]!r}, not a number"
    if "per_step" in record:
        return per_step_problem(record["per_step"])
    if record.get("partial"):
        return "a partial epoch's record without 'per_step'"
    return None


def is_scores(scores) -> bool:
    return isinstance(scores, dict) and all(value is None or is_number(value)
                                            for value in scores.values())


def is_series(series, length: int) -> bool:
    return (isinstance(series, list) and len(series) == length
            and all(value is None or is_number(value) for value in series))


def per_step_problem(per_step) -> str | None:
    if not isinstance(per_step, dict) or not isinstance(per_step.get("step"), list):
        return "'per_step' has no 'step' list"
    steps = len(per_step["step"])
    if not is_series(per_step["step"], steps):
        return "'per_step.step' is not a list of numbers"
    train = per_step.get("train", {})
    if not isinstance(train, dict):
        return "'per_step.train' is not a mapping"
    named = {f"per_step.train.{name}": series for name, series in train.items()}
    named.update({f"per_step.{key}": per_step[key]
                  for key in ("lr", *(key for key, _ in TIMINGS)) if key in per_step})
    for name, series in named.items():
        if not is_series(series, steps):
            return f"'{name}' is not a list of {steps} numbers, one per step"
    return None


# ---- the page's data --------------------------------------------------------------------------

def training_document(records: list[dict], *, title: str | None = None) -> dict:
    """The page's TRAINING data for epoch records (a log's, or History.epochs): charts per
    epoch (the objective and each metric on train and val, lr, seconds) and per step (the
    objective and metrics, lr, and a Ray run's compute and communication seconds)."""
    if not records:
        raise ChainruleError("no epoch's record to chart: training ran no whole epoch")
    kept, notes = last_of_each_epoch(records)
    # A run stopped mid-epoch: that epoch's steps, but no averages.
    whole = [record for record in kept if not record.get("partial")]
    notes += [f"epoch {record['epoch']} was stopped after {len(record['per_step']['step'])} "
              f"of its steps: they are shown per step, and the epoch has no averages"
              for record in kept if record.get("partial")]
    names = reported_names(kept)
    charts = [chart for name in names for chart in (epoch_chart(whole, name),
                                                    step_chart(kept, name))]
    charts += [single_series_chart(whole, "lr", "learning rate per epoch (its last step's)",
                                   "epoch", LR),
               step_lr_chart(kept),
               single_series_chart(whole, "seconds", "seconds per epoch", "epoch", TRAIN),
               timings_chart(kept)]
    # Said before charts without a point are left out: a diverged run's all-Inf curve.
    notes += dropped_notes(charts)
    charts = [chart for chart in charts if any(s["x"] for s in chart["series"])]
    return {"title": title or "Training", "objective": names[0] if names else None,
            "epochs": len(whole), "steps": kept[-1].get("steps"), "notes": notes,
            "charts": [without_counts(chart) for chart in charts]}


def last_of_each_epoch(records: list[dict]) -> tuple[list[dict], list[str]]:
    """One record per epoch number, the last the log holds (a resumed run appends epochs its
    checkpoint went back over), in epoch order; and a note when any were replaced."""
    by_epoch = {}
    for record in records:
        by_epoch[record["epoch"]] = record
    repeated = len(records) - len(by_epoch)
    notes = []
    if repeated:
        notes.append(f"{repeated} epoch record{'s' if repeated > 1 else ''} of the log "
                     f"repeat an earlier epoch (a resumed or repeated run): the last record "
                     f"of each epoch is shown")
    return [by_epoch[epoch] for epoch in sorted(by_epoch)], notes


def reported_names(records: list[dict]) -> list[str]:
    """The objective and metrics in the order training reports them (the objective first)."""
    names = {}
    for record in records:
        names.update(dict.fromkeys(record["train"]))
        names.update(dict.fromkeys(record.get("per_step", {}).get("train", {})))
        names.update(dict.fromkeys(record.get("val", {})))
    return list(names)


def chart(metric: str, title: str, scale: str, series: list[dict], y_label=None) -> dict:
    return {"metric": metric, "title": title, "scale": scale,
            "x_label": scale, "y_label": y_label or metric, "series": series}


def series(name: str, pairs) -> dict:
    """A series of the finite (x, y) pairs among `pairs`; `dropped` counts the others (a
    skipped step's None, a NaN or Inf), which the page cannot draw."""
    pairs = list(pairs)
    finite = [(x, y) for x, y in pairs if is_number(y) and math.isfinite(y) and is_number(x)]
    return {"name": name, "x": [x for x, _ in finite], "y": [y for _, y in finite],
            "dropped": len(pairs) - len(finite)}


def epoch_chart(records: list[dict], name: str) -> dict:
    # A record without the name is no point, not a dropped one (a metric only validated).
    lines = [series(TRAIN, ((r["epoch"], r["train"][name]) for r in records
                            if name in r["train"]))]
    if any("val" in r for r in records):
        lines.append(series(VAL, ((r["epoch"], r["val"][name])
                                  for r in records if name in r.get("val", {}))))
    return chart(name, f"{name} per epoch", "epoch", lines)


def step_pairs(records: list[dict], values) -> list:
    """(step, value) for each step of each record with per-step series; `values(per_step)`
    gives a record's values (None when it has none)."""
    pairs = []
    for record in records:
        per_step = record.get("per_step")
        found = values(per_step) if per_step else None
        if found is not None:
            pairs += zip(per_step["step"], found, strict=True)
    return pairs


def step_chart(records: list[dict], name: str) -> dict:
    pairs = step_pairs(records, lambda per_step: per_step.get("train", {}).get(name))
    return chart(name, f"{name} per step", "step", [series(TRAIN, pairs)])


def single_series_chart(records, key: str, title: str, scale: str, name: str) -> dict:
    return chart(key, title, scale,
                 [series(name, ((r["epoch"], r.get(key)) for r in records if key in r))])


def step_lr_chart(records: list[dict]) -> dict:
    return chart("lr", "learning rate per step", "step",
                 [series(LR, step_pairs(records, lambda per_step: per_step.get("lr")))])


def timings_chart(records: list[dict]) -> dict:
    """A Ray run's seconds per step: the slowest worker's compute, and the rest of the step
    (sending rows, exchanging gradients)."""
    return chart("seconds", "seconds per step (Ray workers)", "step",
                 [series(name, step_pairs(records, lambda per_step, key=key: per_step.get(key)))
                  for key, name in TIMINGS])


def dropped_notes(charts: list[dict]) -> list[str]:
    return [f"{chart['title']}: {line['dropped']} {line['name']} point"
            f"{'s are' if line['dropped'] > 1 else ' is'} not drawn (a step that loss scaling "
            f"skipped, or a NaN or Inf)"
            for chart in charts for line in chart["series"] if line["dropped"]]


def without_counts(chart: dict) -> dict:
    """The chart as the page gets it: series with points only (the notes say what was
    dropped), and no series without any."""
    lines = [{key: value for key, value in line.items() if key != "dropped"}
             for line in chart["series"] if line["x"]]
    return {**chart, "series": lines}
