"""The Python API: `chainrule.compile(path)` or `chainrule.compile(source=text)`, and the Model it
returns."""
from __future__ import annotations

import functools
import os

import numpy as np

from .backends import DEFAULT_OPSET, get_backend
from .backends.feeds import check_arrays
from .backends.numpy_kernels import KERNELS
from .bounds import SEED
from .dsl import lower_source
from .fileio import atomic_write_bytes, read_text
from .ir import ChainruleError, Graph, parse_graph, print_graph
from .ir.types import is_float, numpy_dtype
from .ir.gcpause import gc_paused
from .ir.init import initial_params
from .ir.limits import check_graph_sizes
from .onnx_import import LOSSES  # the names alone: the importer loads onnx on first use
from .data import ArgumentConformer, check_rows, conform_arguments
from .passes import select_outputs
from .passes.manager import PassContext, pipeline, run_passes
from .passes.mixed_precision import DEFAULT_GROWTH_INTERVAL, check_precision, scales_loss
from .passes.optimizers import OptimizerSpec, build_train_step, initial_state, trained_params
from .passes.promote import promote_to_f64


def evaluate_scalars(node, scalars):
    """Constant folding's evaluator: the numpy kernel of `node` applied to scalar constants."""
    arrays = [np.asarray(value, numpy_dtype(v.type.dtype))
              for value, v in zip(scalars, node.inputs, strict=True)]
    return KERNELS[node.op](*arrays, **node.attrs)


IR_SUFFIX = ".cir"
# Run on every graph as it comes in: types, then grad(...) expressions expanded.
FRONT_END_PASSES = ["infer", "expand_grad"]


@gc_paused
def compile(path=None, *, source: str | bytes | None = None, filename: str | None = None,
            seed: int = 0, dims: dict | None = None, loops: str = "auto") -> Model:
    """Compile a model: `compile(path)` reads a `.nn` file (a str, bytes or Path),
    `compile(source=text)` compiles DSL text, a str or UTF-8 bytes (`filename`, default
    "<string>", names it in error messages).

    IR text (a `.cir` file, or text starting with `graph`) is parsed instead of lowered.

    Params start from their init specs, drawn with numpy's Generator(seed). `dims` binds
    symbolic dims to sizes at compile time, e.g. {"T": 28}. `loops` says how a `for` loop
    lowers: "auto" (unrolled up to 16 steps, a scan past that or over a symbolic bound),
    "unroll" or "scan".
    """
    if (path is None) == (source is None):
        raise TypeError("compile takes a path or source=..., exactly one of them")
    SEED.check(seed, "seed")
    if source is None:
        if filename is not None:
            raise TypeError("compile(path) names its model by the path; filename= goes with "
                            "source=")
        path = os.fsdecode(path)  # a path given as bytes is read as the OS reads it
        filename, source = path, _read_model(path)
    filename = filename or "<string>"
    if isinstance(source, bytes):
        source = _decoded(source, filename)
    if filename.endswith(IR_SUFFIX) or source.lstrip().startswith("graph "):
        graph = parse_graph(source, filename)
    else:
        graph = lower_source(source, filename, dims, loops)
    check_graph_sizes(graph)
    graph = run_passes(graph, FRONT_END_PASSES)
    return Model(graph, source, filename, seed=seed)


def _decoded(source: bytes, filename: str) -> str:
    """Model text given as bytes: UTF-8, as model files are."""
    try:
        return source.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ChainruleError(f"{filename}: the model text is not UTF-8: byte "
                             f"0x{source[error.start]:02x} at offset {error.start} "
                             f"({error.reason})") from None


def _read_model(path) -> str:
    try:
        return read_text(path)
    except ChainruleError as error:
        if isinstance(path, str) and ("{" in path or "\n" in path):
            error.notes += ((None, "to compile model text rather than a file, pass it as "
                                   "compile(source=...)"),)
        raise


@gc_paused
def import_onnx(path_or_proto, *, loss: str | None = None, targets: str = "y",
                loss_output: str | None = None, trainable=None, freeze=(),
                dims: dict | None = None, sequences: dict | None = None) -> Model:
    """Import an ONNX model (a path or a ModelProto) as a Model, like `compile`.

    Float initializers become params holding the file's values. Weights train; constants
    the exporter folded in (0-d tensors, or exponents) stay frozen; `trainable` (names: the
    only ones that train) or `freeze` (names) choose otherwise. With `loss`
    ("cross_entropy", "mse", "bce"), the objective is that loss of `loss_output` (default:
    the first output) against a new input named `targets`, and the model's outputs stay
    outputs. A sequence-typed input needs its tensors' shapes at import time, in `sequences`
    (name -> list of shapes; an optional-typed input: None when it holds nothing); its tensors
    become the inputs `name.0`, `name.1`, ... and a sequence output's the outputs so named, as
    `onnx_sequences` lists them.
    """
    from .onnx_import import import_graph  # loads onnx: only when a model is imported

    imported = import_graph(path_or_proto, loss=loss, target_input=targets,
                            loss_output=loss_output, trainable=trainable, freeze=freeze,
                            dims=dims, sequences=sequences)
    graph = run_passes(imported.graph, FRONT_END_PASSES)
    filename = imported.graph.loc.file if imported.graph.loc else "<onnx>"
    model = Model(graph, "", filename)
    model.params.update(imported.params)
    model.onnx_names = dict(imported.names)
    model.onnx_sequences = dict(imported.sequences)
    model.notes = list(imported.notes)
    return model


class Model:
    def __init__(self, graph: Graph, source: str, filename: str, *, seed: int = 0):
        self.graph = graph
        self.source = source
        self.filename = filename
        self._params = initial_params(graph, seed)
        # The trainer whose steps hold the current params (train_step), or None: then
        # _params does. Reading `params` takes them back; the next step hands them over again.
        self._holder = None
        self._trainers = {}  # (optimizer, backend, opt_level) -> Trainer, for train_step
        # train_step's last (optimizer, backend, opt_level) as given, and its trainer
        self._last_step_call, self._last_step_trainer = None, None
        self._compiled = {}  # pipeline -> (graph, gradient names)
        self._backends = {}  # backend name -> backend, which caches what it compiles per graph
        # (backend, opt_level, outputs) -> (graph, backend, param names, its inputs' conformer)
        self._runs = {}
        self.onnx_names = {}  # an imported model's ONNX value names -> IR names
        self.onnx_sequences = {}  # its sequence inputs and outputs -> their tensors' IR names
        self.notes = []  # what importing it did that its user should know

    # ---- interface ----------------------------------------------------------------------------

    @property
    def objective(self):
        return self.graph.objective

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The current param values by name, the caller's to read, keep and change: a train
        step that held them (see train_step) gives them back, copied out of a backend that
        keeps them, and the next step takes a copy again."""
        holder, self._holder = self._holder, None
        if holder is not None:
            self._params = {name: np.array(array) for name, array in holder.params.items()}
        return self._params

    @params.setter
    def params(self, values: dict) -> None:
        self._holder = None
        self._params = dict(values)

    def _current_params(self) -> dict[str, np.ndarray]:
        """The current params for this model's own calls, taken from a train step that holds
        them without copying or handing them back: read them before its next step."""
        if self._holder is not None:
            return self._holder.params
        return self._params

    def source_lines(self, file: str):
        # Split on newlines only, as the parser counts lines (not on form feeds and the like).
        return self.source.split("\n") if file == self.filename else None

    def set_params(self, arrays: dict) -> None:
        """Replace the named params' values; a name that is no param, or a wrong shape or
        dtype, is an error. Params not named keep their values."""
        by_name = {p.value.name: p.value for p in self.graph.params}
        unknown = sorted(set(arrays) - set(by_name))
        if unknown:
            raise ChainruleError(f"unknown param(s) {', '.join(unknown)}; the model's params "
                                 f"are {', '.join(by_name) or '(none)'}")
        named = [by_name[name] for name in arrays]
        check_arrays(named, {k: np.asarray(v) for k, v in arrays.items()}, "param")
        self.params.update({k: np.asarray(v) for k, v in arrays.items()})

    def to_f64(self) -> Model:
        """This model in float64: every f16, bf16 and f32 value, constant and param promoted."""
        graph, _ = promote_to_f64(self.graph)
        model = Model(graph, self.source, self.filename)
        model.params = {k: np.asarray(v, np.float64) for k, v in self.params.items()}
        model.onnx_names = dict(self.onnx_names)  # promotion keeps the values' names
        model.onnx_sequences = dict(self.onnx_sequences)
        return model

    # ---- graphs -------------------------------------------------------------------------------

    @gc_paused
    def compile_graph(self, *, grad: bool = False, wrt=None, opt_level: str = "O0",
                      passes: str | None = None, ctx: PassContext | None = None,
                      training: bool = False, precision: str = "f32"):
        """The graph after a pipeline: autodiff (with grad) then an optimisation preset, or an
        explicit comma-separated pass list; in mixed `precision` (bf16, f16) the forward graph
        computes in that dtype (passes/mixed_precision.py). Returns the graph and the gradient
        names."""
        # A pipeline's result is kept, so run/grad in a loop compile once (the graph never
        # changes; params are fed separately). A caller's own context may print: run it afresh.
        key = (grad, None if wrt is None else tuple(wrt), opt_level, passes, training, precision)
        if ctx is None and key in self._compiled:
            return self._compiled[key]
        if grad and self.onnx_names:
            self._check_imported_objective()
        fresh = ctx is None
        ctx = ctx or PassContext()
        ctx.wrt = list(wrt) if wrt is not None else None
        ctx.training = training
        ctx.evaluate = ctx.evaluate or evaluate_scalars
        ctx.precision = check_precision(precision)
        names = pipeline(passes, opt_level, grad)
        if precision != "f32" and "autodiff" in names:
            names.insert(names.index("autodiff"), "mixed_precision")
        graph = run_passes(self.graph, names, ctx)
        if fresh:
            self._compiled[key] = (graph, dict(ctx.grads))
        return graph, dict(ctx.grads)

    def _check_imported_objective(self) -> None:
        """An imported inference model's objective is its first output, rarely a float scalar:
        the refusal says where a loss comes from."""
        objective = self.objective
        if objective.type.rank != 0 or not is_float(objective.type.dtype):
            raise ChainruleError(
                f"the objective '{objective.name}' must be a float scalar to differentiate, but "
                f"it is {objective.type}: an imported model has no loss until --loss "
                f"({', '.join(LOSSES)}), or loss= in import_onnx, attaches one", self.graph.loc)

    def optimize(self, graph: Graph, opt_level: str = "O1") -> Graph:
        """Run an optimisation preset over a graph built from this model's."""
        return run_passes(graph, pipeline(None, opt_level),
                          PassContext(evaluate=evaluate_scalars))

    @gc_paused
    def train_step_graph(self, optimizer: OptimizerSpec | str | None = None,
                         opt_level: str = "O1", freeze=(), precision: str = "f32",
                         loss_scale_interval: int = DEFAULT_GROWTH_INTERVAL):
        """The whole training step as one graph: forward, backward and optimizer update
        (`optimizer` a spec or a name; default plain sgd). Params matching a glob pattern of
        `freeze` get neither a gradient nor an update. With `precision` bf16 or f16 the
        forward and backward compute in that dtype from f32 master params; f16 scales the
        loss, doubling the scale after `loss_scale_interval` good steps in a row.

        Returns the graph and its TrainStepInterface (which outputs update which inputs)."""
        graph, grads = self.compile_graph(grad=True, wrt=trained_params(self.graph, freeze),
                                          opt_level=opt_level, training=True,
                                          precision=precision)
        scaling = loss_scale_interval if scales_loss(precision) else None
        step, interface = build_train_step(graph, grads, OptimizerSpec.of(optimizer), scaling)
        return self.optimize(step, opt_level), interface

    def grad_graph(self, wrt=None, opt_level: str = "O0",
                   training: bool = False) -> tuple[Graph, dict]:
        """The forward graph extended with the backward graph of the objective."""
        return self.compile_graph(grad=True, wrt=wrt, opt_level=opt_level, training=training)

    def ir(self, grad: bool = False, opt_level: str = "O0") -> str:
        return print_graph(self.compile_graph(grad=grad, opt_level=opt_level)[0])

    def _train_step_onnx(self, spec: OptimizerSpec, opset: int, opt_level: str, freeze=(),
                         precision: str = "f32",
                         loss_scale_interval: int = DEFAULT_GROWTH_INTERVAL):
        from onnx import numpy_helper

        from .backends.onnx_backend import export_onnx
        graph, interface = self.train_step_graph(spec, "O1" if opt_level == "O0" else opt_level,
                                                 freeze, precision, loss_scale_interval)
        model = export_onnx(graph, opset=opset, params_as_inputs=True, training=True)
        defaults = {**self.params, **initial_state(graph, interface)}
        model.graph.initializer.extend(numpy_helper.from_array(np.asarray(array), name)
                                       for name, array in defaults.items())
        return model

    # ---- execution ----------------------------------------------------------------------------

    def backend(self, name):
        """The model's instance of a backend (an object passed in is used as it is)."""
        if not isinstance(name, str):
            return name
        if name not in self._backends:
            self._backends[name] = get_backend(name)
        return self._backends[name]

    def run(self, backend: str = "numpy", opt_level: str = "O2", outputs=None,
            **inputs) -> dict[str, np.ndarray]:
        """The model's outputs by name: every one, or only `outputs`, computing only what
        they need (so an input only the loss reads, such as labels, is not needed)."""
        key = (backend, opt_level, outputs if outputs is None else tuple(outputs))
        prepared = self._runs.get(key)
        if prepared is None:
            graph = self.forward_graph(outputs, opt_level)
            names = [v.name for v in graph.param_values()]
            prepared = self._runs[key] = (graph, self.backend(backend), names,
                                          ArgumentConformer(graph.inputs))
        graph, runner, names, conform = prepared
        current = self._current_params()
        return runner.run(graph, conform(inputs), {name: current[name] for name in names})

    def params_of(self, graph: Graph) -> dict[str, np.ndarray]:
        """The params `graph` reads: one reduced to some outputs may not need them all."""
        current = self._current_params()
        return {v.name: current[v.name] for v in graph.param_values()}

    def forward_graph(self, outputs=None, opt_level: str = "O2") -> Graph:
        """The forward graph, reduced to `outputs` and what they need when they are given."""
        graph, _ = self.compile_graph(opt_level=opt_level)
        if outputs is None:
            return graph
        key = ("outputs", tuple(outputs), opt_level)
        if key not in self._compiled:
            self._compiled[key] = select_outputs(graph, list(outputs))
        return self._compiled[key]

    def predict(self, data: dict, outputs=None, *, batch_size: int = 256,
                backend: str = "numpy", opt_level: str = "O2",
                progress=None) -> dict[str, np.ndarray]:
        """`outputs` (default: every output with one row per example) over a whole data set,
        run in batches of `batch_size` rows and joined. `data` holds an array per input the
        outputs need; `progress(done_rows, total_rows)` is called after each batch."""
        outputs = list(outputs) if outputs else self.per_example_outputs(data)
        graph = self.forward_graph(outputs, opt_level)
        data = conform_arguments(graph.inputs, data)
        rows = check_rows(graph.inputs, data, {name: "the data" for name in data})
        per_example = self.per_example_outputs(data, graph)
        scalar = [name for name in outputs if name not in per_example]
        if scalar:
            raise ChainruleError(f"output(s) {', '.join(scalar)} have no row per example "
                                 f"(their first axis is not the inputs' batch axis), so they "
                                 f"cannot be predicted row by row; choose from "
                                 f"{', '.join(per_example) or '(none)'}")
        if batch_size < 1:
            raise ChainruleError("the batch size must be at least 1")
        runner = self.backend(backend)
        parts = {name: [] for name in outputs}
        for begin in range(0, rows, batch_size):
            batch = {v.name: data[v.name][begin:begin + batch_size] for v in graph.inputs}
            for name, array in runner.run(graph, batch, self.params_of(graph)).items():
                parts[name].append(array)
            if progress:
                progress(min(begin + batch_size, rows), rows)
        return {name: np.concatenate(arrays) if arrays else np.zeros((0,), np.float32)
                for name, arrays in parts.items()}

    def evaluate(self, data: dict, outputs=None, *, batch_size: int = 256,
                 backend: str = "numpy", opt_level: str = "O2") -> dict[str, float]:
        """Scalar outputs averaged over a whole data set, run in batches of `batch_size` rows:
        by default what training reports (the objective, then the metrics such as `acc`).
        `data` holds an array per input they need, cast as `run` casts."""
        from .train import average_outputs

        graph = self.evaluation_graph(outputs, opt_level)
        if batch_size < 1:
            raise ChainruleError("the batch size must be at least 1")
        data = conform_arguments(graph.inputs, data)
        return average_outputs(self.backend(backend), graph, data, self.params_of(graph),
                               batch_size, "the data")

    def evaluation_graph(self, outputs=None, opt_level: str = "O2") -> Graph:
        """The forward graph reduced to the scalar outputs `evaluate` averages (default: the
        objective and metrics); an output with a row per example is refused."""
        from .train import reported_outputs

        graph = self.forward_graph(list(outputs) if outputs else reported_outputs(self.graph),
                                   opt_level)
        per_row = [f"{v.name} ({v.type})" for v in graph.outputs if v.type.rank]
        if per_row:
            hint = (" (an .onnx model's loss comes from --loss, or loss= in import_onnx)"
                    if not outputs else "")
            raise ChainruleError(f"output(s) {', '.join(per_row)} are not scalars; evaluation "
                                 f"averages scalar outputs (a loss, a metric) over the "
                                 f"data{hint}, and predict gives outputs row by row")
        return graph

    def per_example_outputs(self, data: dict, graph: Graph | None = None) -> list[str]:
        """Outputs whose first axis is the batch axis of the inputs, when `data` can feed
        everything they need."""
        graph = graph or self.graph
        batch_dims = {v.type.shape[0] for v in graph.inputs
                      if v.type.rank and isinstance(v.type.shape[0], str)}
        names = []
        for value in graph.outputs:
            if not value.type.rank or value.type.shape[0] not in batch_dims:
                continue
            needed = select_outputs(graph, [value.name]).inputs
            if all(v.name in data for v in needed):
                names.append(value.name)
        return names

    def grad(self, wrt=None, backend: str = "numpy", opt_level: str = "O2",
             training: bool = False, **inputs) -> dict[str, np.ndarray]:
        """The objective under its name and each gradient under the name it differentiates
        (`dJ/dJ` for the gradient of an objective that is itself a param or input). With
        `training`, batch_norm uses the batch's statistics, as a training step does; state is
        read, not updated."""
        graph, grads = self.grad_graph(wrt, opt_level, training)
        results = self.backend(backend).run(graph, conform_arguments(graph.inputs, inputs),
                                            self.params_of(graph))
        objective = self.objective.name
        out = {objective: results[objective]}
        # An objective that is itself a param or input (`return W`) shares its name with W's
        # gradient: the gradient is then called dW/dW, so neither hides the other.
        out.update((f"d{objective}/d{name}" if name == objective else name, results[gradient])
                   for name, gradient in grads.items())
        return out

    def train_step(self, lr: float = 0.01, optimizer: OptimizerSpec | str = "sgd",
                   backend: str = "numpy", opt_level: str = "O2",
                   **inputs) -> dict[str, float]:
        """One optimizer step on a batch, keeping the optimizer's state on the model between
        calls. Returns the objective and metrics.

        The params stay where the step's backend keeps them from one step to the next, with
        no copy per step: the numpy backend updates them in place, onnxruntime in buffers of
        its own. Reading `params` gives their current values back (copying them out of
        onnxruntime), and the step after that takes a copy of them again."""
        call = (optimizer, backend, opt_level)
        # Usually the last call's arguments again, the same objects, compared by identity
        # (rather than a spec's hash of all its fields).
        if call != self._last_step_call:
            self._last_step_trainer = self._trainer(optimizer, backend, opt_level)
            self._last_step_call = call
        trainer = self._last_step_trainer
        if self._holder is not trainer:
            params = self.params  # back from the previous holder, if any
            # The step may write into the arrays it holds: the caller's stay untouched.
            trainer.params = {name: np.array(array) for name, array in params.items()}
            self._holder = trainer
        outputs = trainer.train_step(self._conform_inputs(inputs), lr)
        return {name: float(outputs[name]) for name in trainer.reported}

    def _trainer(self, optimizer, backend, opt_level: str):
        """train_step's trainer for these settings: one per optimizer spec however named."""
        key = (OptimizerSpec.of(optimizer), backend, opt_level)
        if key not in self._trainers:
            from .train import TrainConfig, Trainer

            # Each call gives its step's lr: the config's (a schedule's base) goes unused.
            config = TrainConfig(optimizer=optimizer, backend=backend, opt_level=opt_level)
            self._trainers[key] = Trainer(self, config)
        return self._trainers[key]

    @functools.cached_property
    def _conform_inputs(self) -> ArgumentConformer:
        return ArgumentConformer(self.graph.inputs)

    def export_graph(self, grad: bool = False, outputs=None, wrt=None,
                     opt_level: str = "O0") -> Graph:
        graph = self.compile_graph(grad=grad, wrt=wrt, opt_level=opt_level)[0]
        if outputs:
            graph = select_outputs(graph, list(outputs))
        return graph

    def to_onnx(self, path=None, *, grad: bool = False, outputs=None, wrt=None,
                opset: int = DEFAULT_OPSET, opt_level: str = "O0",
                train_step: OptimizerSpec | str | None = None, freeze=(),
                precision: str = "f32", loss_scale_interval: int = DEFAULT_GROWTH_INTERVAL):
        """An ONNX ModelProto (written atomically to `path` when given).

        With `train_step` (an optimizer's spec or name), the whole training step: params and
        optimizer state are inputs with their initial values as defaults, each updated one as
        an output named `<input>.next`; params matching a glob of `freeze` are inputs the step
        reads and never updates. `precision` and `loss_scale_interval` are the train step's
        mixed precision (`train_step_graph`): f16's loss scale and good-step count are state
        inputs too, and the output `amp.skipped` is 1 on a step it skipped."""
        if train_step is not None:
            model = self._train_step_onnx(OptimizerSpec.of(train_step), opset, opt_level, freeze,
                                          precision, loss_scale_interval)
        else:
            from .backends.onnx_backend import export_onnx  # loads onnx: only on export

            graph = self.export_graph(grad, outputs, wrt, opt_level)
            model = export_onnx(graph, self.params, opset=opset)
        if path is not None:
            atomic_write_bytes(path, model.SerializeToString())
        return model
