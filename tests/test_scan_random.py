"""Random scan bodies through the whole -O2 pipeline with autodiff, against their unrolled twins.

Each body mixes the shapes of recurrent cells: elementwise ops, products with a weight and
with the carried values, reductions, softmax, biases, transposes that cancel, carried sums of
per-step products (autodiff's own pattern, which scan_hoist contracts), and stacks of any value.
"""
import random

import numpy as np
import pytest

from chainrule.backends.numpy_compiled import CompiledNumpyBackend
from chainrule.ir import parse_graph, verify
from chainrule.passes.manager import PassContext, pipeline, run_passes
from support.unroll import unrolled

MATRIX = "f64[2, 3]"


def random_cell(r: random.Random, values: list[str], fresh) -> list[str]:
    """One line or a few of a cell, reading `values`, appending what it defines."""
    a, b, out = r.choice(values), r.choice(values), fresh()
    kind = r.choice(["unary", "binary", "weight", "outer", "reduce", "softmax", "bias", "twice"])
    if kind == "unary":
        lines = [f"%{out} = {r.choice(['tanh', 'sin', 'exp', 'neg', 'sigmoid'])}(%{a})"]
    elif kind == "binary":
        lines = [f"%{out} = {r.choice(['add', 'mul', 'sub'])}(%{a}, %{b})"]
    elif kind == "weight":
        lines = [f"%{out} = matmul(%{a}, %w)"]
    elif kind == "outer":
        t, p = fresh(), fresh()
        lines = [f"%{t} = transpose(%{a}) {{perm=[1, 0]}} : f64[3, 2]",
                 f"%{p} = matmul(%{t}, %{b}) : f64[3, 3]", f"%{out} = matmul(%{a}, %{p})"]
    elif kind == "reduce":
        t = fresh()
        lines = [f"%{t} = sum(%{a}) {{axes=[-1], keepdims=true}} : f64[2, 1]",
                 f"%{out} = mul(%{b}, %{t})"]
    elif kind == "softmax":
        lines = [f"%{out} = softmax(%{a}) {{axis=-1}}"]
    elif kind == "bias":
        lines = [f"%{out} = add(%{a}, %k)"]
    else:
        t = fresh()
        lines = [f"%{t} = transpose(%{a}) {{perm=[1, 0]}} : f64[3, 2]",
                 f"%{out} = transpose(%{t}) {{perm=[1, 0]}}"]
    values.append(out)
    return [line if " : " in line else f"{line} : {MATRIX}" for line in lines]


def random_scan(seed: int) -> str:
    r = random.Random(seed)
    steps, reverse = r.choice([1, 3, 4]), r.choice(["false", "true"])
    carried, sums = r.choice([1, 2]), r.choice([0, 1])
    counter = iter(range(1000))

    def fresh():
        return f"v{next(counter)}"
    values = ["x"] + [f"c{i}.in" for i in range(carried)]
    lines = []
    for _ in range(r.randint(3, 9)):
        lines += random_cell(r, values, fresh)
    returned = []
    for i in range(carried):
        lines.append(f"%c{i}.next = tanh(%{r.choice(values)}) : {MATRIX}")
        returned.append(f"c{i}.next")
    for i in range(sums):
        t, p = fresh(), fresh()
        lines += [f"%{t} = transpose(%{r.choice(values[1:])}) {{perm=[1, 0]}} : f64[3, 2]",
                  f"%{p} = matmul(%{t}, %{r.choice(values)}) : f64[3, 3]",
                  f"%s{i}.next = add(%s{i}.in, %{p}) : f64[3, 3]"]
        returned.append(f"s{i}.next")
    stacked = r.sample(values, r.randint(0, 2))
    results = ([f"%C{i}" for i in range(carried)] + [f"%S{i}" for i in range(sums)]
               + [f"%Y{i}" for i in range(len(stacked))])
    types = ([MATRIX] * carried + ["f64[3, 3]"] * sums
             + [f"f64[{steps}, 2, 3]"] * len(stacked))
    inputs = ([f"%h{i}: {MATRIX}" for i in range(carried)]
              + [f"%a{i}: f64[3, 3]" for i in range(sums)]
              + [f"%xs: f64[{steps}, 2, 3]", "%W: f64[3, 3]", "%K: f64[3]"])
    body_inputs = ([f"%c{i}.in: {MATRIX}" for i in range(carried)]
                   + [f"%s{i}.in: f64[3, 3]" for i in range(sums)]
                   + [f"%x: {MATRIX}", "%w: f64[3, 3]", "%k: f64[3]"])
    operands = [i.split(":")[0] for i in inputs]
    text = [f"graph random({', '.join(inputs)}) {{",
            f"  {', '.join(results)} = scan({', '.join(operands)}) {{length={steps}, "
            f"carried={carried + sums}, scanned=1, reverse={reverse}}} "
            f"body({', '.join(body_inputs)}) {{", *[f"    {line}" for line in lines],
            "    return " + ", ".join(f"%{v}" for v in returned + stacked),
            f"  }} : {', '.join(types)}"]
    total = None
    for index, (result, result_type) in enumerate(zip(results, types)):
        text += [f"  %q{index}.sin = sin({result}) : {result_type}",
                 f"  %q{index} = sum(%q{index}.sin) {{axes=none, keepdims=false}} : f64[]"]
        if total is not None:
            text.append(f"  %t{index} = add(%{total}, %q{index}) : f64[]")
        total = f"t{index}" if total is not None else f"q{index}"
    text += [f"  %J = mul(%{total}, %{total}) : f64[]", "  return %J", "}"]
    return "\n".join(text) + "\n"


def gradients(graph, feeds, passes):
    ctx = PassContext(wrt=[v.name for v in graph.inputs])
    differentiated = run_passes(graph, passes, ctx)
    verify(differentiated)
    results = CompiledNumpyBackend().run(differentiated, feeds, {})
    return results["J"], {name: results[grad] for name, grad in ctx.grads.items()}


@pytest.mark.parametrize("seed", range(120))
def test_a_random_scan_optimised_equals_its_unrolled_twin(seed):
    graph = parse_graph(random_scan(seed), f"random{seed}.cir")
    rng = np.random.default_rng(seed)
    feeds = {v.name: rng.normal(size=v.type.shape) * 0.5 for v in graph.inputs}
    expected_objective, expected = gradients(unrolled(graph), feeds, ["autodiff"])
    objective, ours = gradients(graph, feeds, pipeline(opt_level="O2", grad=True))
    np.testing.assert_allclose(objective, expected_objective, rtol=1e-10)
    for name in expected:
        np.testing.assert_allclose(ours[name], expected[name], rtol=1e-9, atol=1e-11,
                                   err_msg=name)
