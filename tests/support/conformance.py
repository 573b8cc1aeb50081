"""ONNX's backend node tests run through the importer: one case's outcome, the known
failures, and the counts (tests/test_onnx_conformance.py says what is checked and why)."""
from __future__ import annotations

import collections
import functools
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

import chainrule
from chainrule.ir import get_op
from chainrule.onnx_import import UnsupportedModel

BACKENDS = ("numpy", "onnxruntime")
KNOWN_FAILURES_FILE = Path(__file__).parents[1] / "onnx_conformance_known_failures.txt"


def load_cases() -> dict:
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():  # the cases' own numpy references overflow on purpose
        warnings.simplefilter("ignore")
        # The op type to keep: "" keeps every one (onnx before 1.17 requires the argument).
        return {case.name: case for case in collect_testcases("")}


ONNX_VERSION = tuple(int(part) for part in onnx.__version__.split(".")[:2])


def read_known_failures(path: Path = KNOWN_FAILURES_FILE,
                        onnx_version: tuple[int, int] = ONNX_VERSION) -> dict:
    """(case, backend) -> cause, from lines `case_name backend: cause` (# starts a comment).
    A line `case_name backend onnx==1.16: cause` holds only with that onnx release: some
    releases ship a case with other expected data."""
    known = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        head, _, cause = line.partition(":")
        case, backend, *condition = head.split() or [""]
        release = re.fullmatch(r"onnx==(\d+)\.(\d+)", condition[0]) if condition else None
        if backend not in BACKENDS or not cause.strip() or (case, backend) in known or \
                len(condition) > 1 or (condition and not release):
            raise ValueError(f"{path.name}:{number}: expected 'case_name backend: cause' "
                             f"(or 'case_name backend onnx==X.Y: cause') once per pair, "
                             f"backend one of {', '.join(BACKENDS)}; got {line!r}")
        if release and onnx_version != tuple(int(part) for part in release.groups()):
            continue
        known[(case, backend)] = cause.strip()
    return known


# ---- one case -----------------------------------------------------------------------------------

def with_constants(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` with the named graph inputs turned into initializers holding `arrays`."""
    if not arrays:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [info for info in copy.graph.input if info.name not in arrays]
    del copy.graph.input[:]
    copy.graph.input.extend(kept)
    copy.graph.initializer.extend(numpy_helper.from_array(np.asarray(array), name)
                                  for name, array in arrays.items())
    return copy


def import_case(model: onnx.ModelProto, inputs: dict):
    """The imported Model and the inputs it needed as constants; an UnsupportedModel once no
    more inputs can be made constant, nor a sequence's or optional's shapes given."""
    constants: dict[str, np.ndarray] = {}
    sequences: dict[str, object] = {}
    while True:
        try:
            return chainrule.import_onnx(with_constants(model, constants),
                                         sequences=sequences), constants
        except UnsupportedModel as error:
            wanted = {p.needs_constant for p in error.problems} & set(inputs) - set(constants)
            shaped = {p.needs_elements for p in error.problems} & set(inputs) - set(sequences)
            if not wanted and not shaped:
                raise
            constants.update((name, inputs[name]) for name in wanted)
            sequences.update((name, element_shapes(inputs[name])) for name in shaped)


# ---- sequences and optionals --------------------------------------------------------------------
# A data set holds a sequence as a list of arrays, and an optional as what it holds or None.
# The importer takes their shapes (import_onnx's `sequences`), and the model takes and gives a
# sequence as one input or output per tensor (Model.onnx_sequences names them).

def element_shapes(data):
    """What `sequences=` says of a sequence or optional input holding `data`."""
    if data is None:
        return None
    if isinstance(data, list):
        return [np.shape(array) for array in data]
    return np.shape(data)


def case_feeds(model, inputs: dict, constants: dict) -> dict:
    """The run's inputs by IR name: each tensor of a sequence fed as an input of its own."""
    declared = {value.name for value in model.graph.inputs}
    feeds = {}
    for name, data in inputs.items():
        if name in constants:
            continue
        if name in model.onnx_sequences:
            feeds.update(zip(model.onnx_sequences[name], data, strict=True))
        elif model.onnx_names.get(name) in declared and data is not None:
            feeds[model.onnx_names[name]] = data
    return feeds


def output_mismatch(model, results: dict, name: str, expected, compare, rtol, atol):
    """How the output `name` (a tensor, or a sequence as a list) differs from `expected`."""
    if not isinstance(expected, list):
        return compare(results[model.onnx_names.get(name)], expected, rtol, atol)
    names = model.onnx_sequences.get(name, [])
    if len(names) != len(expected):
        return f"a sequence of {len(names)} tensors, expected {len(expected)}"
    for index, (element, array) in enumerate(zip(names, expected, strict=True)):
        problem = compare(results[element], as_array(array), rtol, atol)
        if problem:
            return f"tensor {index}: {problem}"
    return None


def skip_reason(error: UnsupportedModel) -> str:
    """What puts a case out of scope: the first problem's op type and reason."""
    problem = error.problems[0]
    return f"{problem.op_type}: {problem.reason}"


def mismatch(actual, expected: np.ndarray, rtol: float, atol: float) -> str | None:
    """Why `actual` is not `expected`, or None when it is (as ONNX's runner compares)."""
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        return f"shape {actual.shape}, expected {expected.shape}"
    if actual.dtype != expected.dtype:
        return f"dtype {actual.dtype}, expected {expected.dtype}"
    try:
        if expected.dtype == np.bool_:
            np.testing.assert_array_equal(actual, expected)
        else:
            np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
    except AssertionError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        return "; ".join(lines[1:4])
    return None


def as_array(data) -> np.ndarray:
    """A data set's array; a few cases store TensorProtos (to keep exact float bits)."""
    return numpy_helper.to_array(data) if isinstance(data, onnx.TensorProto) else data


# ---- random cases -------------------------------------------------------------------------------
# ONNX's expected outputs of a random node (Dropout in training mode, imported as dropout_mask)
# are one draw of numpy's legacy generator seeded with the node's seed: np.random.seed(seed),
# then np.random.uniform(0, 1, shape). Such a case runs in training mode. On numpy it draws from
# RandomState(seed), whose random(shape) is that very draw, and is compared as any case is;
# onnxruntime draws from its own generator, so its outputs are compared where both draws kept
# an element.

def stochastic_seeds(model) -> list[int]:
    """The seeds of the model's random ops: none for a case with a deterministic result."""
    return [node.attrs["seed"] for node in model.graph.nodes
            if "stochastic" in get_op(node.op).traits]


def run_case(model, backend: str, feeds: dict, seeds: list[int]) -> dict:
    # The model keeps its own onnxruntime backend: its session serves each data set, and goes
    # with the model (one backend for all cases would keep them all).
    if not seeds:
        return model.run(backend=backend, **feeds)
    [seed] = seeds  # ONNX's reference seeds each node's draw afresh: one node per case
    graph, _ = model.compile_graph(opt_level="O2", training=True)
    rng = np.random.RandomState(seed) if backend == "numpy" else None
    return model.backend(backend).run(graph, feeds, model.params_of(graph), training=True,
                                      rng=rng)


def mismatch_where_kept(actual, expected: np.ndarray, rtol: float, atol: float) -> str | None:
    """`mismatch` between two draws of dropout: in shape and dtype, and in value where both
    kept an element (a float that is not 0, a mask's true)."""
    actual = np.asarray(actual)
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return mismatch(actual, expected, rtol, atol)
    kept = (actual != 0) & (expected != 0)
    return mismatch(actual[kept], expected[kept], rtol, atol)


@dataclass
class Outcome:
    """A case's result: out of scope (`skipped` says why), or each backend's failure."""

    skipped: str | None = None
    failures: dict[str, str] = field(default_factory=dict)  # backend -> what went wrong


def check_case(case) -> Outcome:
    """Import, run on both backends and compare; a non-Chainrule exception propagates."""
    outcome = Outcome()
    names = [info.name for info in case.model.graph.input
             if info.name not in {t.name for t in case.model.graph.initializer}]
    for inputs, expected in case.data_sets:
        inputs = dict(zip(names, map(as_array, inputs), strict=True))
        expected = [array if isinstance(array, list) else as_array(array)
                    for array in expected]
        try:
            model, constants = import_case(case.model, inputs)
        except UnsupportedModel as error:
            internal = [p for p in error.problems if p.internal]
            if internal:  # chainrule's own failure on a node: a crash, never out of scope
                raise AssertionError(f"{internal[0].op_type}: {internal[0].reason}")
            return Outcome(skipped=skip_reason(error))
        except chainrule.ChainruleError as error:
            return Outcome(failures={backend: f"import: {error}" for backend in BACKENDS})
        feeds = case_feeds(model, inputs, constants)
        outputs = [info.name for info in case.model.graph.output]
        seeds = stochastic_seeds(model)
        for backend in BACKENDS:
            if backend in outcome.failures:
                continue
            try:
                results = run_case(model, backend, feeds, seeds)
            except chainrule.ChainruleError as error:
                outcome.failures[backend] = f"run: {error}"
                continue
            compare = mismatch_where_kept if seeds and backend != "numpy" else mismatch
            for index, (name, array) in enumerate(zip(outputs, expected, strict=True)):
                problem = output_mismatch(model, results, name, array, compare, case.rtol,
                                          case.atol)
                if problem:
                    outcome.failures[backend] = f"output {index}: {problem}"
                    break
    return outcome


# ---- every case ---------------------------------------------------------------------------------

@functools.cache
def cases() -> dict:
    return load_cases()


@functools.cache
def known_failures() -> dict[tuple[str, str], str]:
    return read_known_failures()


def verdict(name: str, outcome: Outcome, listed: dict[str, str]) -> list[str]:
    """What is wrong with a case's outcome given its known failures (backend -> cause)."""
    if outcome.skipped:
        return [f"{name} {backend} is listed as a known failure but is out of scope "
                f"({outcome.skipped})" for backend in sorted(listed)]
    problems = [f"{name} {backend}: {why} (not listed as a known failure)"
                for backend, why in outcome.failures.items() if backend not in listed]
    problems += [f"{name} {backend} is listed as a known failure but passes: remove it"
                 for backend in sorted(listed) if backend not in outcome.failures]
    return problems


# ---- the summary --------------------------------------------------------------------------------

def summary(top: int = 15) -> str:
    skips = collections.Counter()
    passed = collections.Counter()
    crashes = []
    in_scope = 0
    for name in sorted(cases()):
        try:
            outcome = check_case(cases()[name])
        except Exception as error:  # noqa: BLE001 - a crash is counted, and the suite fails it
            crashes.append(f"{name}: {type(error).__name__}: {error}")
            continue
        if outcome.skipped:
            skips[re.sub(r"'[^']*'", "'…'", outcome.skipped)] += 1  # the reason, not the value
            continue
        in_scope += 1
        passed.update(b for b in BACKENDS if b not in outcome.failures)
    lines = [f"cases: {len(cases())}", f"in scope: {in_scope}"]
    lines += [f"passed on {backend}: {passed[backend]} ({passed[backend] / max(in_scope, 1):.1%})"
              for backend in BACKENDS]
    lines.append(f"crashes: {len(crashes)}")
    lines += [f"  {crash}" for crash in crashes]
    causes = collections.Counter(known_failures().values())
    lines.append(f"known failures: {sum(causes.values())}")
    lines += [f"  {count:4d}  {cause}" for cause, count in causes.most_common()]
    lines.append(f"top reasons out of scope ({sum(skips.values())} cases):")
    lines += [f"  {count:4d}  {reason}" for reason, count in skips.most_common(top)]
    return "\n".join(lines)
