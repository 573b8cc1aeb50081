"""The numpy interpreter: runs any graph node by node with the numpy kernels.

The default numpy backend compiles graphs instead (numpy_compiled.py); the interpreter is the
reference it is tested against, and it checks every node's result for `--check-numerics` (the
backend named "numpy-check")."""
from __future__ import annotations

import numpy as np

from ..ir import ChainruleError, Graph, get_op
from ..ir.symbols import attr_symbols, resolved_attrs
from ..ir.types import numpy_dtype
from .feeds import check_arrays, check_feeds
from .numpy_kernels import KERNELS
from .numpy_scan import StepError, scan_loop
from .protocol import CHECKING_BACKEND


class ExecutionError(ChainruleError):
    """A kernel failed at run time; names the node and its DSL line."""


class NumpyBackend:
    def __init__(self, check_numerics: bool = False):
        # With check_numerics, the first node whose float result holds a NaN or an Inf stops
        # the run, named with its DSL line.
        self.check_numerics = check_numerics
        self.name = CHECKING_BACKEND if check_numerics else "numpy"

    def run(self, graph: Graph, inputs: dict, params: dict, *, training: bool = False,
            rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        """Every output by name; `training` switches stochastic ops such as dropout on, drawing
        from `rng`."""
        missing = sorted({n.op for n in graph.nodes if n.op not in KERNELS and n.op != "scan"})
        if missing:
            raise ChainruleError(f"no numpy kernel for op(s): {', '.join(missing)}")
        sizes = check_feeds(graph, inputs, params)
        symbolic = bool(attr_symbols(graph))
        env = {v: np.asarray(inputs[v.name]) for v in graph.inputs}
        env.update((v, np.asarray(params[v.name])) for v in graph.param_values())
        for node in graph.nodes:
            args = [env[v] for v in node.inputs]
            mode = ({"training": training, "rng": rng}
                    if "stochastic" in get_op(node.op).traits else {})
            attrs = resolved_attrs(node, sizes) if symbolic else node.attrs
            if node.op == "scan":
                results = self.run_scan(node, args, attrs["length"], training, rng)
            else:
                try:
                    with np.errstate(all="ignore"):
                        results = (KERNELS[node.op](*args, **attrs, **mode),)
                except Exception as error:
                    raise ExecutionError(f"while computing %{node.output.name} = "
                                         f"{node.op}(...): {error}", node.loc) from error
            for out, result in zip(node.outputs, results, strict=True):
                env[out] = self.checked(node, out, np.asarray(result))
        return {v.name: env[v] for v in graph.outputs}

    def checked(self, node, out, result: np.ndarray) -> np.ndarray:
        """The result in its value's dtype, after the --check-numerics test."""
        if self.check_numerics and result.dtype.kind == "f" and not np.isfinite(result).all():
            bad = "NaN" if np.isnan(result).any() else "Inf"
            raise ExecutionError(f"%{out.name} = {node.op}(...) produced {bad} "
                                 f"(--check-numerics)", node.loc)
        expected = numpy_dtype(out.type.dtype)
        return result if result.dtype == expected else result.astype(expected)

    def run_scan(self, node, operands, length: int, training: bool, rng) -> tuple:
        """A scan, its body run by this interpreter at every step (checked each time: the
        interpreter is the reference, not the fast path)."""
        body = node.attrs["body"]
        names = [v.name for v in body.inputs]

        def step(*inputs):
            results = self.run(body, dict(zip(names, inputs)), {}, training=training, rng=rng)
            return tuple(results[v.name] for v in body.outputs)
        try:
            return scan_loop(step, node, operands, length)
        except StepError as failed:
            error = failed.error
            if isinstance(error, ChainruleError):
                raise type(error)(f"at step {failed.step} of the scan: {error.message}",
                                  error.loc) from error
            raise error
        except ChainruleError as error:  # the loop's own check of its operands
            raise ExecutionError(f"while computing %{node.outputs[0].name} = scan(...): "
                                 f"{error.message}", node.loc) from error

    def step_runner(self, graph: Graph, carried: dict[str, str], rng=None) -> PlainStep:
        """The interpreter compiles nothing to keep values in: they stay in a Python dict."""
        return PlainStep(self, graph, carried, rng)


class PlainStep:
    """A train step whose params and state are numpy arrays in a dict: each step passes them to
    the backend's `run` and the outputs that update them take their places."""

    def __init__(self, backend, graph: Graph, carried: dict[str, str], rng):
        self.backend, self.graph, self.rng = backend, graph, rng
        self.carried = carried
        state = [v for v in graph.inputs if v.name in carried]
        self.held_values = state + graph.param_values()
        self.state_names = [v.name for v in state]
        self.param_names = [v.name for v in graph.param_values()]
        self.returned = [v.name for v in graph.outputs if v.name not in set(carried.values())]
        self.current = {v.name: np.zeros(v.type.shape, numpy_dtype(v.type.dtype))
                        for v in self.held_values}

    def load(self, values: dict) -> None:
        """Copy `values` (every held value by name) in."""
        check_arrays(self.held_values, values, "param or state")
        self.current = {v.name: np.array(values[v.name]) for v in self.held_values}

    def values(self) -> dict[str, np.ndarray]:
        """The current held values; a step replaces them with new arrays, never writes into
        them."""
        return dict(self.current)

    def step(self, feeds: dict) -> dict[str, np.ndarray]:
        """One step on `feeds` (the batch and the learning rate): the outputs that replace no
        held value, by name."""
        current = self.current
        inputs = {**feeds, **{name: current[name] for name in self.state_names}}
        outputs = self.backend.run(self.graph, inputs,
                                   {name: current[name] for name in self.param_names},
                                   training=True, rng=self.rng)
        for name, next_name in self.carried.items():
            current[name] = outputs[next_name]
        return {name: outputs[name] for name in self.returned}
