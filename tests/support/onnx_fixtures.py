"""ONNX files exported from torch, each beside an `.npz` of its inputs, torch's outputs, loss
and gradients, as tests/fixtures/onnx/make_dynamic_fixtures.py writes them (`input/<name>`,
`output/<name>`, `grad/<initializer>`, `meta/<key>`, and a second batch under `alt/`)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnxruntime

import chainrule
from chainrule.ir import dsl_names

from .cli import chainrule as chainrule_cli
from .numeric import assert_close


class OnnxFixtures:
    """The fixtures of one directory, by name (`lstm-ts` is lstm-ts.onnx and lstm-ts.npz)."""

    def __init__(self, directory: Path):
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.onnx"

    @functools.cache
    def expected(self, name: str) -> dict:
        with np.load(self.directory / f"{name}.npz", allow_pickle=False) as data:
            return dict(data)

    def inputs(self, name: str, batch: str = "") -> dict:
        prefix = f"{batch}input/"
        return {k.removeprefix(prefix): v for k, v in self.expected(name).items()
                if k.startswith(prefix)}

    def meta(self, name: str, key: str) -> str:
        return str(self.expected(name)[f"meta/{key}"])

    def imported(self, name: str, **options) -> chainrule.Model:
        return chainrule.import_onnx(str(self.path(name)), **options)

    def with_loss(self, name: str) -> chainrule.Model:
        return self.imported(name, loss=self.meta(name, "loss"),
                             targets=self.meta(name, "target"))

    def loss_feeds(self, name: str) -> dict:
        target = self.meta(name, "target")
        return {**self.inputs(name), target: self.expected(name)[target]}

    @functools.cache
    def original_outputs(self, name: str, batch: str) -> dict:
        """The outputs onnxruntime computes from the file itself, by ONNX name."""
        session = onnxruntime.InferenceSession(str(self.path(name)),
                                               providers=["CPUExecutionProvider"])
        results = session.run(None, self.inputs(name, batch))
        return {info.name: result for info, result in zip(session.get_outputs(), results,
                                                           strict=True)}

    # ---- the checks every set of fixtures makes ----------------------------------------------

    def assert_forward_matches(self, name: str, batch: str, results: dict,
                               tolerance: float) -> None:
        """`results` (a run on the fixture's `batch`) against onnxruntime on the file, and
        against torch's output."""
        output = self.meta(name, "output")
        assert_close(results[output], self.original_outputs(name, batch)[output], tolerance,
                     what=output)
        assert_close(results[output], self.expected(name)[f"{batch}output/{output}"],
                     tolerance, what=f"{output} (torch)")

    def assert_re_export_matches(self, name: str, tolerance: float) -> None:
        """The imported model exported again runs in onnxruntime at both batch sizes, as the
        original file does."""
        session = onnxruntime.InferenceSession(self.imported(name).to_onnx().SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        output = self.meta(name, "output")
        for batch in ("", "alt/"):
            (exported,) = [r for info, r in zip(session.get_outputs(),
                                                session.run(None, self.inputs(name, batch)),
                                                strict=True)
                           if info.name == output]
            assert_close(exported, self.original_outputs(name, batch)[output], tolerance,
                         what=output)

    def assert_dsl_round_trip(self, name: str, directory: Path) -> None:
        """`chainrule import` writes the model as a `.nn` file (in `directory`) that compiles
        to the same values as the import, bit for bit, at both batch sizes."""
        path = directory / "model.nn"
        result = chainrule_cli("import", self.path(name), "-o", path)
        assert result.returncode == 0, result.stderr
        recompiled = chainrule.compile(str(path))
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as values:
            recompiled.set_params(dict(values))
        original = self.imported(name)
        names = dsl_names(original.graph)
        for batch in ("", "alt/"):
            feeds = self.inputs(name, batch)
            ours = recompiled.run(**{names.get(k, k): v for k, v in feeds.items()})
            for key, value in original.run(**feeds).items():
                assert np.array_equal(ours[names.get(key, key)], value), key

    def assert_gradients_match_torch(self, name: str, tolerance: float) -> None:
        """The loss and every `grad/<initializer>`, within `tolerance` of the largest
        gradient; each of those initializers must train."""
        model, data = self.with_loss(name), self.expected(name)
        grads = model.grad(**self.loss_feeds(name))
        assert_close(grads["loss"], data["loss"], tolerance, what="loss")
        reference = {k.removeprefix("grad/"): v for k, v in data.items()
                     if k.startswith("grad/")}
        scale = max(np.max(np.abs(v)) for v in reference.values())
        trainable = {p.value.name for p in model.graph.params if p.trainable}
        for initializer, value in reference.items():
            ir_name = model.onnx_names[initializer]
            assert ir_name in trainable, f"{initializer} does not train"
            assert_close(grads[ir_name], value, tolerance, scale=scale, what=initializer)

    def assert_training_lowers_the_loss(self, name: str, steps: int) -> None:
        """`steps` Adam steps on the fixture's batch leave a lower, finite loss."""
        model = self.with_loss(name)
        feeds = self.loss_feeds(name)
        before = float(model.run(**feeds)["loss"])
        losses = [float(model.train_step(lr=0.01, optimizer="adam", **feeds)["loss"])
                  for _ in range(steps)]
        after = float(model.run(**feeds)["loss"])
        assert np.isfinite(losses).all() and np.isfinite(after)
        assert after < before, (before, losses, after)
