"""Every example in examples/: its gradients in float64 against central finite differences, the
same results at -O0 and -O2, and its `run`, `grad` and `export` commands as a user runs them."""
import numpy as np
import onnx
import pytest

import chainrule
from chainrule.backends import get_backend
from chainrule.cli import random_inputs
from support.cli import chainrule as chainrule_cli
from support.cli import ok
from support.numeric import assert_close, central_difference
from support.paths import EXAMPLES

# Symbolic dims of the examples' inputs, kept small so finite differences stay fast.
DIMS = {"B": 3, "T": 3}
SAMPLES_PER_PARAM = 6


def f64_model(path):
    """The example with every f32 (types and casts) turned into f64."""
    return chainrule.compile(source=path.read_text().replace("f32", "f64"))


def perturbed_params(model, rng):
    """The initial params plus noise, so zero biases, unit gains and zero weights (where a
    gradient term such as weight decay vanishes) are not what the check sees."""
    return {name: np.array(value + 0.1 * rng.normal(size=value.shape))
            for name, value in model.params.items()}


def sampled_central_difference(objective, array, indices):
    """d objective / d array at the flat `indices` (array is perturbed in place, then restored)."""
    base = array.copy()
    offsets = np.zeros(len(indices))

    def shifted():
        array.reshape(-1)[indices] = base.reshape(-1)[indices] + offsets
        return objective()

    try:
        return central_difference(shifted, offsets)
    finally:
        array[...] = base


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_gradients_match_finite_differences_in_float64(path):
    model = f64_model(path)
    rng = np.random.default_rng(0)
    params = perturbed_params(model, rng)
    model.set_params(params)
    params = {v.name: model.params[v.name] for v in model.graph.trainable_values()}  # not state
    inputs = random_inputs(model.graph, DIMS, seed=0, given={})
    grads = model.grad(**inputs)
    assert set(grads) == {model.objective.name, *params}
    assert grads[model.objective.name].dtype == np.float64

    forward, _ = model.compile_graph()
    backend = get_backend("numpy")
    name = model.objective.name

    def objective():
        return float(backend.run(forward, inputs, model.params)[name])

    for param, array in params.items():
        count = min(SAMPLES_PER_PARAM, array.size)
        indices = rng.choice(array.size, size=count, replace=False)
        numeric = sampled_central_difference(objective, array, indices)
        analytic = grads[param].reshape(-1)[indices]
        scale = max(np.max(np.abs(grads[param])), 1e-12)
        assert_close(analytic, numeric, 1e-6, scale=scale, what=f"{path.stem}: d{name}/d{param}")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_optimisation_levels_agree(path):
    """-O0 and -O2 compute the same outputs and gradients, up to float rounding."""
    model = chainrule.compile(str(path))
    inputs = random_inputs(model.graph, DIMS, seed=1, given={})
    for method in (model.run, model.grad):
        plain = method(opt_level="O0", **inputs)
        optimised = method(opt_level="O2", **inputs)
        assert plain.keys() == optimised.keys()
        for key, value in plain.items():
            assert optimised[key].dtype == value.dtype, key
            assert_close(optimised[key], value, 1e-5, atol=1e-6, what=f"{method.__name__} {key}")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_cli_runs_differentiates_and_exports(path, tmp_path):
    model = chainrule.compile(str(path))
    objective = model.objective.name
    onnx_path = tmp_path / "model.onnx"
    stdout = {command: ok(chainrule_cli(command, path, *options)).stdout
              for command, options in (("run", ["--random-inputs", "--dim", "B=3"]),
                                       ("grad", ["--random-inputs", "--dim", "B=3"]),
                                       ("export", ["--grad", "-o", onnx_path]))}
    # State updates (batch_norm's running statistics) are outputs of training only.
    outputs = [v.name for v in model.graph.outputs if v.name not in model.graph.updates.values()]
    trainable = [v.name for v in model.graph.trainable_values()]
    assert "outputs (numpy):" in stdout["run"]
    for output in outputs:
        assert f"\n  {output} " in stdout["run"], output
    assert "objective and gradients (numpy):" in stdout["grad"]
    for name in [objective, *trainable]:
        assert f"\n  {name} " in stdout["grad"], name
    assert f"wrote {onnx_path}" in stdout["export"]
    exported = onnx.load(str(onnx_path))
    assert [o.name for o in exported.graph.output] == (
        outputs + [f"d{objective}/d{name}" for name in trainable])
