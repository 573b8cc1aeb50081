"""The report command, and the page `train --report` writes: training curves from epoch
records, beside the model's graph."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..ir import ChainruleError
from ..page.html import write_page
from ..page.report import read_log, training_document
from .inputs import UsageError, load_model


def cmd_report(args) -> int:
    if args.params and not args.model:
        raise UsageError("--params gives the values of --model's params: give --model FILE "
                         "too")
    records = read_log(args.file)  # before the model: a bad log fails fast
    title = f"Training: {Path(args.file).name}"
    document = {"title": title, "training": training_document(records, title=title)}
    if args.model:
        document.update(model_graph(load_model(argparse.Namespace(**{**vars(args),
                                                                     "file": args.model}))))
    write_page(args.output, document)
    print(f"wrote {args.output}")
    return 0


def model_graph(model) -> dict:
    # Imported here: the graph's document is the compiler's work, done only for a model.
    from ..page.graph_document import graph_page_data
    return graph_page_data(model)


def write_report_after_training(path, records: list[dict], model) -> bool:
    """`train --report`: the page of the steps trained (True), or a note when none was (the
    first step was not finite); a graph that cannot be drawn costs the page its graph, not its
    curves."""
    if not records:
        print(f"chainrule: note: no step was completed, so there is no curve to show; "
              f"{path} was not written", file=sys.stderr)
        return False
    title = f"Training: {model.graph.name}"
    document = {"title": title, "training": training_document(records, title=title)}
    try:
        document.update(model_graph(model))
    except ChainruleError as error:
        print(f"chainrule: warning: the model's graph cannot be shown ({error}); the page "
              f"holds the curves alone", file=sys.stderr)
    write_page(path, document)
    return True
