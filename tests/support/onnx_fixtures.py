"""ONNX files exported from torch, each beside an `.npz` of its inputs, torch's outputs, loss
and gradients, as tests/fixtures/onnx/make_dynamic_fixtures.py writes them (`input/<name>`,
`output/<name>`, `grad/<initializer>`, `meta/<key>`, and a second batch under `alt/`)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnxruntime

import chainrule


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
