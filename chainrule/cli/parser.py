"""The command line's argument parser: each command, its options and their defaults."""
from __future__ import annotations

import argparse

from .. import __version__
from ..backends import BACKENDS, DEFAULT_OPSET
from ..bounds import (COUNT, FRACTION, MOMENTUM, NON_NEGATIVE, POSITIVE, SEED, STEPS,
                      Number)
from ..backends.threads import AUTO, DEFAULT_THREADS, ENV_VAR, MAX_THREADS
from ..ir import ChainruleError
from ..onnx_import import LOSSES, check_target_name
from ..passes.manager import PASSES, PRESETS
from ..passes.mixed_precision import PRECISIONS
from ..passes.optimizers import OPTIMIZERS
from ..train import SCHEDULES, TrainConfig
from ..dsl.scan_loops import LOOP_MODES, UNROLL_LIMIT
from .inputs import DEFAULT_DIM

# Each command's function, as MODULE.FUNCTION in chainrule.cli: imported only when the command
# runs (`run_command`), so parsing, --help and --version load none of the commands' libraries.
COMMANDS = {
    "check": "inspecting.cmd_check",
    "ir": "inspecting.cmd_ir",
    "run": "running.cmd_run",
    "predict": "running.cmd_predict",
    "evaluate": "running.cmd_evaluate",
    "grad": "running.cmd_grad",
    "train": "training.cmd_train",
    "gradcheck": "running.cmd_gradcheck",
    "viz": "inspecting.cmd_viz",
    "export": "inspecting.cmd_export",
    "import": "inspecting.cmd_import",
    "report": "reporting.cmd_report",
}
DEFAULTS = TrainConfig()


THREAD_COUNT = Number(int, 1, most=MAX_THREADS)


def thread_setting(text: str):
    """--threads: a count, or auto (chosen per op: backends/threads.py)."""
    return AUTO if text.strip() == AUTO else THREAD_COUNT(text)


DIM_SIZE = Number(int, 0, most=2 ** 63 - 1)  # 0: empty; numpy's shapes are signed 64-bit


def dim_size(text: str) -> str:
    """--dim NAME=N: a symbolic dim's name and a size numpy can hold, as given (a checkpoint
    records the text, and --resume takes it back)."""
    name, equals, size = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=N (such as B=32), got {text!r}")
    try:
        DIM_SIZE(size)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{name}: {error}") from None
    return text


def path(text: str) -> str:
    """A file's path: an empty one (`-o "$UNSET"`) would otherwise read as no option at all,
    and the command would go on without reading or writing that file."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty one")
    return text


def target_name(text: str) -> str:
    """--target-input NAME: a name the IR, the .nn text and ONNX all carry as it is."""
    try:
        return check_target_name(text)
    except ChainruleError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class CommandParser(argparse.ArgumentParser):
    """A command's parser: an option it does not know is its error, printed with its own usage
    line (`usage: chainrule train ...`); argparse would hand it back to the top-level parser,
    whose usage line names no command's options."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


class DefaultsShown(argparse.HelpFormatter):
    """Help that shows each option's default, where it has a meaningful one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or "default" in text
                or not action.option_strings or isinstance(action, argparse._StoreConstAction)):
            return text
        return f"{text} (default: {action.default})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chainrule", description="Compile, run, differentiate and export .nn models.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    parser.add_argument("--version", action="version", version=f"chainrule {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=CommandParser)

    def command(name, help_text, file_help="a .nn model file, or an .onnx model to import"):
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  formatter_class=DefaultsShown)
        # With --resume DIR, train takes FILE from the checkpoint when it is not given.
        sub.add_argument("file", type=path, nargs="?" if name == "train" else None,
                         help=file_help)
        sub.add_argument("--seed", type=SEED, default=0,
                         help="seed for param initialisation and random inputs")
        sub.add_argument("--dim", action="append", type=dim_size, metavar="NAME=N",
                         help="fix a symbolic dim's size when compiling (a loop over range(T) "
                              f"needs T); random inputs take it too, else {DEFAULT_DIM}")
        sub.add_argument("--loops", choices=LOOP_MODES, default="auto",
                         help=f"how a .nn for loop lowers: unrolled, one scan node, or auto "
                              f"(unrolled up to {UNROLL_LIMIT} steps, a scan past that or "
                              f"over a symbolic bound)")
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show Python tracebacks")
        with_onnx_options(sub)
        sub.set_defaults(command_function=COMMANDS[name])
        return sub

    def with_onnx_options(sub):
        onnx = sub.add_argument_group("ONNX models (FILE.onnx)")
        onnx.add_argument("--loss", choices=LOSSES,
                          help="attach this loss to an inference model; it becomes the "
                               "objective")
        onnx.add_argument("--target-input", type=target_name, default="y", metavar="NAME",
                          help="with --loss: the new input holding the targets")
        onnx.add_argument("--loss-output", metavar="NAME",
                          help="with --loss: the output the loss reads (default: the first)")
        onnx.add_argument("--freeze", metavar="NAMES",
                          help="float initializers that stay fixed (comma-separated); for "
                               "train and export --train-step, also params of a .nn model, as "
                               "glob patterns ('b*')")
        onnx.add_argument("--trainable", metavar="NAMES",
                          help="the only float initializers that train (comma-separated; "
                               "by default weights do, and constants folded in do not)")

    def with_optimization(sub, default="O0"):
        levels = sub.add_mutually_exclusive_group()
        for level in PRESETS:
            levels.add_argument(f"-{level}", dest="opt_level", action="store_const", const=level,
                                help=f"optimisation preset: {', '.join(PRESETS[level])}"
                                     + (" (the default)" if level == default else ""))
        sub.set_defaults(opt_level=default)
        return sub

    def with_threads(sub):
        sub.add_argument("--threads", type=thread_setting, metavar="N",
                         help=f"threads for onnxruntime and numpy's BLAS, 1 to {MAX_THREADS}, "
                              f"or {AUTO}: per op, large products on the cores other processes "
                              f"leave free (default: ${ENV_VAR}, else {DEFAULT_THREADS})")
        return sub

    def with_optimizer(sub):
        sub.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS.optimizer.kind,
                         help="the update rule")
        sub.add_argument("--momentum", type=MOMENTUM, default=0.0,
                         help="sgd momentum, at least 0 and less than 1")
        sub.add_argument("--nesterov", action="store_true", help="sgd: Nesterov momentum")
        sub.add_argument("--weight-decay", type=NON_NEGATIVE, default=0.0,
                         help="decoupled for sgd and adamw, added to the gradient for adam and "
                              "rmsprop")
        sub.add_argument("--clip-grad-norm", type=NON_NEGATIVE,
                         default=DEFAULTS.clip_grad_norm, metavar="MAX",
                         help="scale the gradients, before the update, so that their joint L2 "
                              "norm is at most MAX")
        sub.add_argument("--param-group", action="append", metavar="PATTERN:KEY=VALUE,...",
                         help="settings of the params matching a glob pattern: weight_decay "
                              "(theirs instead of --weight-decay) and lr_scale (a factor on "
                              "the lr); the first matching group applies (repeatable)")
        sub.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS.precision,
                         help="the step's compute dtype: bf16 or f16 compute forward and "
                              "backward in it, with f32 params and optimizer state (f16 "
                              "scales the loss)")
        sub.add_argument("--loss-scale-interval", type=COUNT,
                         default=DEFAULTS.loss_scale_interval, metavar="N",
                         help="--precision f16: double the loss scale after N steps in a row "
                              "with finite gradients")
        return sub

    def with_data(sub, flag="--inputs", help_text="the inputs' arrays: .npz, .npy, .csv or IDX"):
        sub.add_argument(flag, type=path, metavar="FILE", help=help_text)
        sub.add_argument("--input", action="append", metavar="NAME=FILE",
                         help="one input's array from a .npy or IDX file (repeatable)")
        sub.add_argument("--map", action="append", metavar="INPUT=ARRAY,...",
                         help="bind model inputs to arrays of other names (repeatable)")
        sub.add_argument("--strict-inputs", action="store_true",
                         help="refuse data files holding arrays the model does not read")
        sub.add_argument("--label-column", metavar="NAME",
                         help="CSV: the label column (the other columns are the features)")

    def with_inputs(sub, backends=sorted(BACKENDS), default_backend="numpy", output=True,
                    numerics=True):
        with_data(sub)
        sub.add_argument("--random-inputs", action="store_true",
                         help="draw missing inputs at random (labels within their class count)")
        sub.add_argument("--params", type=path, metavar="P.npz",
                         help="param values replacing the initial ones")
        sub.add_argument("--backend", choices=backends, default=default_backend)
        if numerics:
            sub.add_argument("--check-numerics", action="store_true",
                             help="run the numpy interpreter and stop at the first node that "
                                  "produces NaN or Inf")
        if output:
            sub.add_argument("-o", "--output", type=path, metavar="OUT.npz",
                             help="save the results")

    command("check", "parse, lower and type-check a model; print a summary") \
        .add_argument("--params", type=path, metavar="P.npz",
                      help="param values to check against the model")
    ir = with_optimization(command("ir", "print the graph IR (of a .nn or .cir file)"))
    ir.add_argument("--grad", action="store_true", help="include the backward graph")
    ir.add_argument("--passes", metavar="P1,P2", help="run exactly these passes "
                    f"({', '.join(PASSES)}) instead of a preset; an order that breaks a "
                    "pass's contract is refused before any pass runs")
    ir.add_argument("--print-after-all", action="store_true", help="print the IR after each pass")
    ir.add_argument("--print-after", action="append", metavar="PASS",
                    help="print the IR after this pass (repeatable)")
    ir.add_argument("--time-passes", action="store_true", help="print a table of pass times")
    ir.add_argument("--verify-each", action="store_true",
                    help="run the IR verifier before and after every pass")
    ir.add_argument("--emit", choices=("ir", "python"), default="ir",
                    help="print the IR, or the Python the numpy backend generates for it")
    ir.add_argument("--print-memory-plan", action="store_true",
                    help="print which results the numpy backend computes in place and when "
                         "each intermediate is freed")
    ir.add_argument("--params", help=argparse.SUPPRESS)
    run = with_threads(with_optimization(command("run", "run the forward pass"),
                                         "O2"))
    with_inputs(run)
    run.add_argument("--outputs", metavar="NAMES", help="compute only these outputs (and only "
                     "the inputs they need)")
    predict = with_threads(with_optimization(command(
        "predict", "run the model over a whole data file in batches, without "
        "labels"), "O2"))
    with_data(predict, "--data", "the data: .npz, .npy, .csv or IDX")
    predict.add_argument("--params", type=path, metavar="TRAINED.npz", help="trained param values")
    predict.add_argument("--initial-params", action="store_true",
                         help="predict with a .nn model's initial params, drawn from --seed "
                              "(without --params or this, a model with params is refused)")
    predict.add_argument("--outputs", metavar="NAMES", help="outputs to predict (default: "
                         "every output with a row per example that the data can feed)")
    predict.add_argument("--batch-size", type=COUNT, default=256, help="rows per batch")
    predict.add_argument("--argmax", action="store_true",
                         help="also write NAME.argmax, the class index per row, for each 2-D "
                              "float output")
    predict.add_argument("--backend", choices=sorted(BACKENDS), default="numpy",
                         help="where to run")
    predict.add_argument("-o", "--output", type=path, metavar="OUT.npz|OUT.csv",
                         help="save the predictions")
    evaluate = with_threads(with_optimization(command(
        "evaluate", "report the objective and metrics over a whole data file, in batches"),
        "O2"))
    with_data(evaluate, "--data", "the data, labels included: .npz, .npy, .csv or IDX")
    evaluate.add_argument("--params", type=path, metavar="TRAINED.npz", help="trained param values")
    evaluate.add_argument("--initial-params", action="store_true",
                          help="evaluate a .nn model's initial params, drawn from --seed "
                               "(without --params or this, a model with params is refused)")
    evaluate.add_argument("--outputs", metavar="NAMES", help="scalar outputs to report "
                          "(default: the objective and the metrics training reports)")
    evaluate.add_argument("--batch-size", type=COUNT, default=256, help="rows per batch")
    evaluate.add_argument("--backend", choices=sorted(BACKENDS), default="numpy",
                          help="where to run")
    grad = command("grad", "compute the objective and its gradients")
    with_inputs(with_threads(with_optimization(grad, "O2")))
    grad.add_argument("--wrt", metavar="NAMES", help="comma-separated params/inputs "
                      "(default: every param)")
    train = with_threads(with_optimization(command(
        "train", "train the model's params", "a .nn model file, or an .onnx model to import "
        "(with --resume, the checkpoint's by default)"), DEFAULTS.opt_level))
    with_data(train, "--data", "training data: .npz, .npy, .csv or IDX")
    train.add_argument("--val", type=path, metavar="FILE",
                       help="validation data, read as --data is")
    train.add_argument("--val-split", type=FRACTION, metavar="F",
                       help="hold out this fraction (between 0 and 1) of the training data "
                            "for validation")
    train.add_argument("--epochs", type=COUNT, default=DEFAULTS.epochs, help="passes over the data")
    train.add_argument("--batch-size", type=COUNT, default=DEFAULTS.batch_size,
                       help="rows per step")
    with_optimizer(train)
    train.add_argument("--lr", type=POSITIVE, default=DEFAULTS.lr, help="learning rate")
    train.add_argument("--lr-schedule", choices=SCHEDULES, default=DEFAULTS.schedule,
                       help="constant; cosine decay to 0 over all steps; or step: times "
                            "--step-gamma every --step-every epochs")
    train.add_argument("--step-every", type=STEPS, default=DEFAULTS.step_every, metavar="N",
                       help="step schedule: epochs between decays (0: a third of --epochs)")
    train.add_argument("--step-gamma", type=NON_NEGATIVE, default=DEFAULTS.step_gamma, metavar="F",
                       help="step schedule: factor applied at each decay")
    train.add_argument("--warmup-steps", type=STEPS, default=DEFAULTS.warmup_steps, metavar="N",
                       help="raise the lr linearly from 0 over the first N steps, then follow "
                            "the schedule")
    train.add_argument("--early-stop", type=STEPS, default=DEFAULTS.early_stop,
                       metavar="PATIENCE",
                       help="stop when the validation loss has not improved for PATIENCE "
                            "epochs, and keep the best epoch's params (needs --val or "
                            "--val-split)")
    train.add_argument("--backend", choices=sorted(BACKENDS), default="numpy",
                       help="where to run the train step")
    train.add_argument("--check-numerics", action="store_true",
                       help="run the numpy interpreter and stop at the first NaN or Inf")
    train.add_argument("--params", type=path, metavar="INIT.npz", help="initial param values")
    train.add_argument("-o", "--output", type=path, metavar="TRAINED.npz",
                       help="save the trained params")
    train.add_argument("--checkpoint", type=path, metavar="DIR",
                       help="write a checkpoint after each epoch")
    train.add_argument("--resume", type=path, metavar="DIR",
                       help="continue from the checkpoint in DIR, with the options it was "
                            "trained with; options given here override them")
    train.add_argument("--override", action="store_true",
                       help="resume even though options differ from the checkpoint's (batch "
                            "size, learning rate, schedule, warmup, clipping, early stop, "
                            "frozen params, optimizer, precision, epochs)")
    train.add_argument("--allow-nonfinite", action="store_true",
                       help="train on through steps whose objective or params are NaN or Inf "
                            "(by default training stops at the first)")
    train.add_argument("-q", "--quiet", action="store_true", help="print nothing while training")
    train.add_argument("--log-jsonl", type=path, metavar="FILE",
                       help="append one JSON line per epoch")
    train.add_argument("--report", type=path, metavar="RUN.html",
                       help="when training ends (or stops), write a page of its curves per "
                            "epoch and per step beside the model's graph")
    train.add_argument("--workers", type=int, metavar="N",
                       help="data-parallel training: N Ray workers compute each batch's "
                            "gradients on shards of it (pip install 'chainrule[distributed]')")
    train.add_argument("--address", metavar="ADDR",
                       help="with --workers: join the Ray cluster at ADDR (auto, or "
                            "ray://HOST:PORT) instead of starting Ray here")

    check = with_threads(command("gradcheck",
                                 "check gradients against finite differences in float64"))
    with_inputs(check, backends=sorted(BACKENDS) + ["all"], default_backend="all", output=False,
                numerics=False)
    check.add_argument("--samples", type=COUNT, default=20,
                       help="entries checked per param (all of a smaller param)")
    viz = with_optimization(command("viz", "draw the computational graph"))
    viz.add_argument("--grad", action="store_true", help="draw the backward graph too "
                     "(the --html page always has it when the model has an objective)")
    viz.add_argument("-o", "--output", type=path, metavar="GRAPH.svg",
                     help=".svg, .png (rendered with Graphviz) or .dot; default: DOT on stdout")
    viz.add_argument("--html", type=path, metavar="PAGE.html",
                     help="write the interactive page: forward and backward graph, source, "
                          "chain rule; with -O1/-O2 also the graph as written, to compare")
    with_data(viz)
    viz.add_argument("--random-inputs", action="store_true",
                     help="--html: draw missing inputs at random, and show each node's value")
    viz.add_argument("--params", type=path, metavar="P.npz",
                     help="param values replacing the initial ones")

    export = with_optimization(command("export", "export to ONNX"))
    export.add_argument("-o", "--output", required=True, type=path, metavar="MODEL.onnx")
    export.add_argument("--grad", action="store_true", help="add the gradients as outputs")
    export.add_argument("--train-step", action="store_true",
                        help="export forward, backward and optimizer update as one step")
    with_optimizer(export)
    export.add_argument("--wrt", metavar="NAMES", help="with --grad: what to differentiate")
    export.add_argument("--outputs", metavar="NAMES", help="keep only these outputs")
    export.add_argument("--params", type=path, metavar="P.npz",
                        help="param values for the initializers")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET})")
    imported = command("import", "write an .onnx model as a readable .nn model "
                       "(and its param values beside it)")
    imported.add_argument("-o", "--output", required=True, type=path, metavar="MODEL.nn",
                          help="the .nn file; the params go to MODEL.npz")
    report = command("report", "write a page of a training log's curves (train --log-jsonl)",
                     "the training log, JSON lines")
    report.add_argument("-o", "--output", required=True, type=path, metavar="RUN.html",
                        help="the page: one HTML file that opens offline")
    report.add_argument("--model", type=path, metavar="FILE",
                        help="also show this model's graph (a .nn file or an .onnx model, "
                             "with --seed, --dim, --loops and the ONNX options)")
    report.add_argument("--params", type=path, metavar="TRAINED.npz",
                        help="with --model: param values")
    return parser
