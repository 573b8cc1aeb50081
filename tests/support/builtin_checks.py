"""A built-in called in a one-line model, `y = <expression>`, against a plain-numpy reference
on both backends: the tables of tests/test_conv.py and tests/test_builtins_composed.py."""
from __future__ import annotations

import numpy as np

import chainrule
from chainrule.ir.types import numpy_dtype
from support.backend_checks import TOLERANCES
from support.numeric import assert_close

BATCH = 2  # the size of every symbolic dim when the models run


def model_source(signature: str, expression: str, dtype: str) -> str:
    """`F[` in the signature stands for the dtype's tensors."""
    return (f"model m({signature.replace('F[', f'{dtype}[')}) {{\n  y = {expression}\n"
            f"  return y\n}}\n")


def random_feeds(graph, rng, dtype="f64") -> dict:
    return {v.name: rng.normal(size=[d if isinstance(d, int) else BATCH for d in v.type.shape])
            .astype(numpy_dtype(dtype)) for v in graph.inputs}


def check_builtin(signature: str, expression: str, shape: str, compute, dtype: str) -> None:
    """The result's type is `dtype` and `shape`; numpy's values are compute's on the inputs in
    float64, and onnxruntime's are numpy's."""
    model = chainrule.compile(source=model_source(signature, expression, dtype))
    assert str(model.graph.outputs[0].type) == f"{dtype}{shape}"
    feeds = random_feeds(model.graph, np.random.default_rng(0), dtype)
    expected = compute(*(feeds[v.name].astype(np.float64) for v in model.graph.inputs))
    rtol, atol = TOLERANCES[dtype]
    result = model.run(**feeds)["y"]
    assert result.dtype == numpy_dtype(dtype)
    assert_close(result, expected, max(rtol, 1e-12), atol=atol, what="numpy")
    assert_close(model.run(backend="onnxruntime", **feeds)["y"], result, rtol, atol=atol,
                 what="onnxruntime")
