"""Writes chainrule/backends/onnxruntime_kernels.json: which standard ONNX ops onnxruntime's CPU
provider has a kernel for, at which opsets and dtypes.

    python tests/support/onnxruntime_kernel_table.py [OTHER_PYTHON ...]

Each interpreter (this one, then every OTHER_PYTHON, e.g. /tmp/venv-min/bin/python with the
oldest onnxruntime chainrule allows) lists the kernels its onnxruntime registered
(`get_all_opkernel_def()`); the table keeps a kernel's dtypes only where every release listed has
it, so an export that the table lets through loads on each of them. A kernel is a combination of
dtypes, one per type constraint of the op's schema (OneHot's indices, depth and values), so the
table lists the combinations, not each constraint's dtypes apart.
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

TABLE = Path(__file__).parents[2] / "chainrule" / "backends" / "onnxruntime_kernels.json"
MIN_OPSET = 13  # the oldest opset chainrule exports
LATEST = 2 ** 31 - 1  # onnxruntime's "and every later opset"


def registered_kernels() -> dict:
    """This interpreter's onnxruntime: {op: [[since, until, constraints, [dtypes, ...]], ...]}
    with each combination of one dtype per constraint, in chainrule's dtype names."""
    import onnxruntime
    from onnxruntime.capi import _pybind_state

    sys.path.insert(0, str(TABLE.parents[2]))
    from chainrule.ir.types import ONNX_DTYPES
    from onnx import helper

    known = helper.get_all_tensor_dtypes()  # an older onnx lacks the newest dtypes
    names = {f"tensor({helper.tensor_dtype_to_string(number).split('.')[-1].lower()})": dtype
             for dtype, number in ONNX_DTYPES.items() if number in known}
    kernels: dict = {}
    for kernel in _pybind_state.get_all_opkernel_def():
        since, until = kernel.version_range
        if kernel.provider != "CPUExecutionProvider" or kernel.domain != "" or until < MIN_OPSET:
            continue
        constraints = sorted(kernel.type_constraints)
        choices = [[names[t] for t in kernel.type_constraints[c] if t in names]
                   for c in constraints]
        combinations = [list(c) for c in itertools.product(*choices)]
        kernels.setdefault(kernel.op_name, []).append([since, until, constraints, combinations])
    return {"onnxruntime": onnxruntime.__version__, "kernels": kernels}


def supported(segments, opset: int) -> tuple[list, set] | None:
    """The constraints and the combinations registered for an opset, or None."""
    found = [(constraints, {tuple(c) for c in combos})
             for since, until, constraints, combos in segments if since <= opset <= until]
    if not found:
        return None
    return found[0][0], set().union(*(combos for _, combos in found))


def merged(releases: list[dict]) -> dict:
    """The kernels every release has, opset by opset, with equal neighbouring opsets joined."""
    table: dict = {}
    for op in sorted(set().union(*(r["kernels"] for r in releases))):
        bounds = sorted({MIN_OPSET} | {b for r in releases for s, u, *_ in r["kernels"].get(op, [])
                                       for b in (max(s, MIN_OPSET), u + 1) if b <= LATEST})
        segments = []
        for since, next_since in zip(bounds, bounds[1:] + [LATEST + 1]):
            each = [supported(r["kernels"].get(op, []), since) for r in releases]
            # A release that lacks the kernel, or reads the op's dtypes under other type
            # constraints (a newer schema's), has none in common with the others.
            if any(found is None or found[0] != each[0][0] for found in each):
                continue
            constraints = each[0][0]
            combos = sorted(set.intersection(*(combos for _, combos in each)))
            if segments and segments[-1][2:] == [constraints, [list(c) for c in combos]] \
                    and segments[-1][1] == since - 1:
                segments[-1][1] = next_since - 1
            else:
                segments.append([since, next_since - 1, constraints, [list(c) for c in combos]])
        if segments:
            table[op] = segments
    return table


def main(argv: list[str]) -> None:
    if argv == ["--registered"]:
        print(json.dumps(registered_kernels()))
        return
    releases = [registered_kernels()]
    for python in argv:
        output = subprocess.run([python, __file__, "--registered"], check=True,
                                capture_output=True, text=True).stdout
        releases.append(json.loads(output))
    versions = sorted(r["onnxruntime"] for r in releases)
    document = {"about": "onnxruntime's CPU kernels of standard ONNX ops, by op: "
                         "[since opset, until opset, type constraints, combinations of dtypes]; "
                         "written by tests/support/onnxruntime_kernel_table.py",
                "onnxruntime": versions, "kernels": merged(releases)}
    TABLE.write_text(json.dumps(document, separators=(",", ":")) + "\n")
    print(f"{TABLE}: {len(document['kernels'])} ops, onnxruntime {', '.join(versions)}")


if __name__ == "__main__":
    main(sys.argv[1:])
