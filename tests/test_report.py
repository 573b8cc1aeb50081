"""Training curves: the per-step series each epoch's record holds, reading a training log
(page/report.py), the charts' data, and the page that `chainrule report` and `train --report`
write."""
import json
import math
import re

import numpy as np
import pytest

import chainrule
from chainrule import ChainruleError, TrainConfig, Trainer
from chainrule.page.html import embedded_json
from chainrule.page.report import read_log, training_document
from support.cli import chainrule as run_cli, fails, ok
from support.paths import ROOT
from support.training import SMALL, small_data

MLP_DIGITS = ROOT / "examples" / "mlp_digits.nn"
DIGITS = ROOT / "examples" / "data" / "digits_train.npz"


def trained_records(epochs=2, rows=10, batch_size=3, **config):
    records = []
    trainer = Trainer(chainrule.compile(source=SMALL),
                      TrainConfig(epochs=epochs, batch_size=batch_size, **config), records.append)
    trainer.fit(small_data(rows))
    return records


def page_data(path) -> dict:
    """The document a written page holds, read back from its inline JSON."""
    text = path.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="chainrule-data">(.*?)</script>',
                      text, re.S)
    return json.loads(found.group(1))


def charts_by_key(training: dict) -> dict:
    return {(chart["metric"], chart["scale"]): chart for chart in training["charts"]}


def points(chart: dict) -> dict:
    return {series["name"]: len(series["x"]) for series in chart["series"]}


# ---- per-step records -------------------------------------------------------------------------

def test_each_epoch_record_holds_every_step_of_it():
    records = trained_records(epochs=2, rows=10, batch_size=3)  # 4 steps an epoch: 3+3+3+1
    assert [r["per_step"]["step"] for r in records] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    for record in records:
        per_step = record["per_step"]
        assert set(per_step["train"]) == {"J", "L"}
        assert all(len(series) == 4 for series in [per_step["lr"], *per_step["train"].values()])
        # The epoch's average is its steps' values weighted by their rows.
        weighted = np.dot(per_step["train"]["J"], [3, 3, 3, 1]) / 10
        assert math.isclose(record["train"]["J"], weighted, rel_tol=1e-12)
        assert record["lr"] == per_step["lr"][-1]


def test_the_per_step_lr_follows_warmup_and_the_cosine_schedule():
    records = trained_records(epochs=2, rows=10, batch_size=3, lr=0.1, schedule="cosine",
                              warmup_steps=3)
    lrs = [lr for record in records for lr in record["per_step"]["lr"]]
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * done / 8)) * min(1, (done + 1) / 3)
                for done in range(8)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_a_resumed_run_goes_on_numbering_the_steps(tmp_path):
    model = chainrule.compile(source=SMALL)
    Trainer(model, TrainConfig(epochs=1, batch_size=3)).fit(small_data(10),
                                                             checkpoint_dir=tmp_path)
    records = []
    resumed = Trainer(chainrule.compile(source=SMALL), TrainConfig(epochs=3, batch_size=3),
                      records.append)
    resumed.load_checkpoint(tmp_path, override=True)
    resumed.fit(small_data(10))
    assert [r["per_step"]["step"][0] for r in records] == [5, 9]
    assert [r["epoch"] for r in records] == [2, 3]


def test_a_step_that_loss_scaling_skipped_has_no_objective(tmp_path):
    log = tmp_path / "log.jsonl"
    ok(run_cli("train", MLP_DIGITS, "--data", DIGITS, "--epochs", "2", "--precision", "f16",
               "--loss-scale-interval", "20", "--log-jsonl", log, "-q"))
    records = read_log(log)
    skipped = [sum(value is None for value in r["per_step"]["train"]["J"]) for r in records]
    assert skipped == [r["skipped_steps"] for r in records] == [0, 2]
    chart = charts_by_key(training_document(records))[("J", "step")]
    assert points(chart) == {"train": records[-1]["steps"] - 2}
    assert any("2 train points are not drawn" in note
               for note in training_document(records)["notes"])


# ---- reading a log ----------------------------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("", "the training log is empty"),
    ("\n\n", "the training log is empty"),
    ('{"epoch": 1, "train": {}}\n{"epoch": 2,\n', "line 2: not JSON"),
    ('[1, 2]\n', "line 1: a JSON list, not an object"),
    ('{"train": {"J": 1}}\n', "line 1: 'epoch' is missing"),
    ('{"epoch": 0, "train": {"J": 1}}\n', "line 1: 'epoch' is 0"),
    ('{"epoch": 1}\n', "line 1: 'train' is missing"),
    ('{"epoch": 1, "train": {"J": "low"}}\n', "'train' is not a mapping of names to numbers"),
    ('{"epoch": 1, "train": {}, "seconds": "1s"}\n', "'seconds' is '1s', not a number"),
    ('{"epoch": 1, "train": {}, "per_step": {"step": [1, 2], "train": {"J": [0.5]}}}\n',
     "'per_step.train.J' is not a list of 2 numbers, one per step"),
    ('{"epoch": 1, "train": {}, "per_step": {"lr": [1]}}\n', "'per_step' has no 'step' list"),
    ('{"epoch": 1, "train": {}, "partial": true}\n', "a partial epoch's record without"),
])
def test_a_log_that_is_not_one_is_refused_naming_the_line(tmp_path, text, message):
    log = tmp_path / "log.jsonl"
    log.write_text(text)
    with pytest.raises(ChainruleError, match=re.escape(message)) as error:
        read_log(log)
    assert str(error.value).startswith(f"{log}: ")


def test_a_log_that_is_not_utf8_is_refused(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b'{"epoch": 1, "train": {}}\n\xff\n')
    with pytest.raises(ChainruleError, match="line 2: not UTF-8 text"):
        read_log(log)


def test_the_report_command_says_what_is_wrong_with_a_log_in_one_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"epoch": 1, "train": {"J": 1.0}}\nnot json\n')
    result = fails(run_cli("report", log, "-o", tmp_path / "run.html"))
    assert result.stderr.startswith(f"{log}: error: line 2: not JSON")
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "run.html").exists()
    missing = fails(run_cli("report", tmp_path / "none.jsonl", "-o", tmp_path / "run.html"))
    assert "none.jsonl" in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_the_report_command_refuses_params_without_a_model(tmp_path):
    result = fails(run_cli("report", "log.jsonl", "-o", tmp_path / "run.html", "--params",
                           "p.npz"), code=2)
    assert result.stderr == ("chainrule: error: --params gives the values of --model's "
                             "params: give --model FILE too\n")


# ---- the charts' data -------------------------------------------------------------------------

def test_each_series_has_a_point_per_epoch_or_per_step():
    records = trained_records(epochs=3, rows=10, batch_size=3)
    for record in records:
        record["val"] = {"J": 0.5, "L": 0.4}
    charts = charts_by_key(training_document(records))
    assert set(charts) == {("J", "epoch"), ("J", "step"), ("L", "epoch"), ("L", "step"),
                           ("lr", "epoch"), ("lr", "step"), ("seconds", "epoch")}
    for name in ("J", "L"):
        assert points(charts[name, "epoch"]) == {"train": 3, "val": 3}
        assert points(charts[name, "step"]) == {"train": 12}
        assert charts[name, "step"]["series"][0]["x"] == list(range(1, 13))
    assert points(charts["lr", "step"]) == {"lr": 12}
    assert points(charts["lr", "epoch"]) == {"lr": 3}
    assert points(charts["seconds", "epoch"]) == {"train": 3}


def test_a_log_from_before_per_step_records_charts_per_epoch():
    records = [{"epoch": n, "steps": 4 * n, "seconds": 0.1, "train": {"J": 1 / n}}
               for n in (1, 2)]
    document = training_document(records)
    assert {(c["metric"], c["scale"]) for c in document["charts"]} == {("J", "epoch"),
                                                                      ("seconds", "epoch")}
    assert document["objective"] == "J" and document["epochs"] == 2


def test_epochs_a_resumed_run_repeats_keep_their_last_record():
    first = {"epoch": 1, "train": {"J": 1.0}}
    records = [first, {"epoch": 2, "train": {"J": 0.9}}, {"epoch": 2, "train": {"J": 0.8}},
               {"epoch": 3, "train": {"J": 0.7}}]
    document = training_document(records)
    chart = charts_by_key(document)["J", "epoch"]
    assert chart["series"][0]["x"] == [1, 2, 3] and chart["series"][0]["y"] == [1.0, 0.8, 0.7]
    assert document["notes"] == ["1 epoch record of the log repeat an earlier epoch (a "
                                 "resumed or repeated run): the last record of each epoch is "
                                 "shown"]


def test_values_the_page_cannot_draw_are_left_out_and_said():
    records = [{"epoch": 1, "train": {"J": math.nan}, "per_step": {
        "step": [1, 2, 3], "lr": [0.1, 0.1, 0.1], "train": {"J": [1.0, None, math.inf]}}},
        {"epoch": 2, "train": {"J": 0.5}}]
    document = training_document(records)
    embedded_json(document)  # no NaN or Inf reaches the page's JSON
    charts = charts_by_key(document)
    assert points(charts["J", "step"]) == {"train": 1}
    assert points(charts["J", "epoch"]) == {"train": 1}
    assert len(document["notes"]) == 2


def test_a_curve_with_no_finite_point_is_said_not_silently_lost():
    document = training_document([{"epoch": 1, "train": {"J": math.inf}},
                                  {"epoch": 2, "train": {"J": math.nan}}])
    assert ("J", "epoch") not in charts_by_key(document)
    assert any(note.startswith("J per epoch: 2 train points are not drawn")
               for note in document["notes"])


def test_a_metric_only_validated_is_charted_and_nothing_is_said_dropped():
    document = training_document([{"epoch": 1, "train": {"J": 1.0}, "val": {"acc": 0.3}},
                                  {"epoch": 2, "train": {"J": 0.5}, "val": {"acc": 0.6}}])
    charts = charts_by_key(document)
    assert points(charts["acc", "epoch"]) == {"val": 2}
    assert document["notes"] == []


def test_no_records_is_an_error():
    with pytest.raises(ChainruleError, match="no epoch's record to chart"):
        training_document([])


# ---- the pages the command line writes --------------------------------------------------------

@pytest.fixture
def small_files(tmp_path):
    (tmp_path / "small.nn").write_text(SMALL)
    np.savez(tmp_path / "data.npz", **small_data(20))
    return tmp_path


def test_train_writes_a_report_with_every_step(small_files):
    page = small_files / "run.html"
    result = ok(run_cli("train", "small.nn", "--data", "data.npz", "--epochs", "3",
                        "--batch-size", "8", "--val-split", "0.25", "--report", page,
                        cwd=small_files))
    assert f"wrote {page}" in result.stdout
    document = page_data(page)
    assert document["title"] == "Training: small"
    assert document["graph"]["name"] == "small"
    charts = charts_by_key(document["training"])
    assert points(charts["J", "epoch"]) == {"train": 3, "val": 3}
    assert points(charts["J", "step"]) == {"train": 6}  # 15 rows: batches of 8 and 7


def test_train_checks_the_report_path_before_training(small_files):
    (small_files / "folder").mkdir()
    result = fails(run_cli("train", "small.nn", "--data", "data.npz", "--report", "folder",
                           cwd=small_files))
    assert "training small" not in result.stdout
    assert "folder" in result.stderr and len(result.stderr.splitlines()) == 1


def test_train_stopped_by_ctrl_c_reports_every_step_done(small_files, monkeypatch):
    def stop_in_epoch_3(trainer, *args):
        trainer.stop_requested = trainer.steps == 5  # 2 steps an epoch

    monkeypatch.setattr("chainrule.cli.training.print_progress", stop_in_epoch_3)
    page = small_files / "run.html"
    result = run_cli("train", "small.nn", "--data", "data.npz", "--epochs", "5",
                     "--batch-size", "10", "--report", page, cwd=small_files)
    assert result.returncode == 130 and "Traceback" not in result.stderr
    training = page_data(page)["training"]
    charts = charts_by_key(training)
    assert points(charts["J", "epoch"]) == {"train": 2}
    assert charts["J", "step"]["series"][0]["x"] == [1, 2, 3, 4, 5]
    assert training["epochs"] == 2 and training["steps"] == 5
    assert "epoch 3 was stopped after 1 of its steps" in training["notes"][0]


def test_a_first_step_that_is_not_finite_writes_no_report(small_files):
    np.savez(small_files / "nan.npz", W=np.full((4, 3), np.nan), V=np.zeros((2, 4)))
    result = fails(run_cli("train", "small.nn", "--data", "data.npz", "--params", "nan.npz",
                           "--report", "run.html", cwd=small_files))
    assert "step 1 (epoch 1, batch 1)" in result.stderr
    assert "no step was completed" in result.stderr
    assert not (small_files / "run.html").exists()


def test_a_run_that_turns_non_finite_reports_the_steps_before(small_files, monkeypatch):
    def poison_step_3(trainer, *args):  # the params the third step starts from are NaN
        if trainer.steps == 2:
            trainer.params = {name: np.full_like(value, np.nan)
                              for name, value in trainer.params.items()}

    monkeypatch.setattr("chainrule.cli.training.print_progress", poison_step_3)
    fails(run_cli("train", "small.nn", "--data", "data.npz", "--batch-size", "4",
                  "--report", "run.html", cwd=small_files))
    steps = charts_by_key(page_data(small_files / "run.html")["training"])["J", "step"]
    assert steps["series"][0]["x"] == [1, 2]


def test_train_stopped_early_reports_the_epochs_it_ran(small_files):
    page = small_files / "run.html"
    ok(run_cli("train", "small.nn", "--data", "data.npz", "--epochs", "50", "--lr", "0.5",
               "--optimizer", "sgd", "--val-split", "0.25", "--early-stop", "1", "-q",
               "--report", page, cwd=small_files))
    training = page_data(page)["training"]
    assert 1 < training["epochs"] < 50
    assert points(charts_by_key(training)["J", "epoch"]) == {"train": training["epochs"],
                                                           "val": training["epochs"]}


def test_the_report_command_writes_a_log_and_a_model_as_one_page(small_files):
    log = small_files / "log.jsonl"
    ok(run_cli("train", "small.nn", "--data", "data.npz", "--epochs", "2", "-q",
               "--log-jsonl", log, cwd=small_files))
    page = small_files / "run.html"
    result = ok(run_cli("report", log, "-o", page, "--model", "small.nn", cwd=small_files))
    assert result.stdout == f"wrote {page}\n"
    document = page_data(page)
    assert document["title"] == "Training: log.jsonl"
    assert document["graph"]["name"] == "small"
    assert points(charts_by_key(document["training"])["J", "step"]) == {"train": 2}


def test_the_report_command_without_a_model_shows_the_curves_alone(small_files):
    log = small_files / "log.jsonl"
    log.write_text('{"epoch": 1, "train": {"J": 1.0}}\n{"epoch": 2, "train": {"J": 0.5}}\n')
    ok(run_cli("report", log, "-o", small_files / "run.html"))
    document = page_data(small_files / "run.html")
    assert "graph" not in document and document["training"]["epochs"] == 2
    text = (small_files / "run.html").read_text()
    assert "ChainruleReport" in text and "figure.chart" in text  # its script and styles


def test_a_model_that_fails_to_load_is_an_error(small_files):
    log = small_files / "log.jsonl"
    log.write_text('{"epoch": 1, "train": {"J": 1.0}}\n')
    (small_files / "bad.nn").write_text("model bad(x: f32[B]) {\n    return y\n}\n")
    result = fails(run_cli("report", log, "-o", small_files / "run.html", "--model",
                           small_files / "bad.nn"))
    assert "bad.nn:2:" in result.stderr
    assert not (small_files / "run.html").exists()


def test_a_resumed_run_writes_the_report_its_checkpoint_names(small_files):
    page = small_files / "run.html"
    ok(run_cli("train", "small.nn", "--data", "data.npz", "--epochs", "1", "--batch-size", "10",
               "--checkpoint", "ckpt", "--report", page, "-q", cwd=small_files))
    page.unlink()
    ok(run_cli("train", "--resume", "ckpt", "--epochs", "3", "--override", "-q",
               cwd=small_files))
    training = page_data(page)["training"]
    assert training["epochs"] == 2  # the epochs this run trained; the log has them all
    assert charts_by_key(training)["J", "step"]["series"][0]["x"] == [3, 4, 5, 6]
