"""Golden IR tests: a model or IR file in, a pass pipeline, the printed IR compared as text.

Each tests/ir/*.golden file starts with header lines naming its input and pipeline:

    # INPUT: examples/mlp.nn          (relative to the repository root)
    # PIPELINE: grad O1               (grad: run autodiff first; O0/O1/O2: a preset)
    # PASSES: autodiff,dce            (instead of PIPELINE: exactly these passes)

and the expected IR after them. `pytest --update-golden` rewrites the expectations; on a
mismatch the failure shows a unified diff.
"""
import difflib
from pathlib import Path

import pytest

import chainrule
from chainrule.ir import print_graph, verify
from chainrule.passes.manager import PassContext
from support.paths import EXAMPLES, ROOT

GOLDEN_DIR = ROOT / "tests" / "ir"
GOLDEN_FILES = sorted(GOLDEN_DIR.glob("*.golden"))
HEADER_KEYS = ("INPUT", "PIPELINE", "PASSES")


def read_golden(path: Path) -> tuple[dict, str]:
    header, body = {}, []
    for line in path.read_text().splitlines(keepends=True):
        key, _, value = line.removeprefix("# ").partition(": ")
        if not body and line.startswith("# ") and key in HEADER_KEYS:
            header[key] = value.strip()
        else:
            body.append(line)
    return header, "".join(body)


def run_pipeline(header: dict) -> str:
    model = chainrule.compile(header["INPUT"])
    words = header.get("PIPELINE", "").split()
    level = next((w for w in words if w.startswith("O")), "O0")
    graph, _ = model.compile_graph(grad="grad" in words, opt_level=level,
                                   passes=header.get("PASSES"), ctx=PassContext(verify_each=True))
    verify(graph)
    return print_graph(graph)


def check_golden(path: Path, header: dict, expected: str, update: bool) -> None:
    actual = run_pipeline(header)
    if update:
        lines = [f"# {key}: {header[key]}\n" for key in HEADER_KEYS if key in header]
        path.write_text("".join(lines) + actual)
        return
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            f"{path.name} (expected)", "actual"))
        pytest.fail(f"IR differs from {path.name}; rerun with --update-golden if intended:\n"
                    f"{diff}")


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden(path, update_golden, monkeypatch):
    monkeypatch.chdir(ROOT)
    header, expected = read_golden(path)
    check_golden(path, header, expected, update_golden)


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_has_a_lowering_golden(example, update_golden, monkeypatch):
    """Lowering of each example is pinned; a new example gets its golden with --update-golden."""
    monkeypatch.chdir(ROOT)
    path = GOLDEN_DIR / f"lower_{example.stem}.golden"
    if not path.exists() and not update_golden:
        pytest.fail(f"{path.name} is missing; run pytest --update-golden to create it")
    header = {"INPUT": str(example.relative_to(ROOT)), "PIPELINE": "O0"}
    expected = read_golden(path)[1] if path.exists() else ""
    check_golden(path, header, expected, update_golden)
