"""The docs hold: every built-in and CLI option is documented, every snippet runs, every link
resolves.

Snippet convention, by the fence's tag:
- ```nn: a whole model; it is compiled from its text.
- ```python: run as a script.
- ```console: each `$ chainrule ...` line (a trailing backslash continues it) is run in process
  (tests/support/cli.py) and must exit 0; other lines are output, not checked.
Other tags (```sh, ```text, none) are not run. The ```python and ```console blocks of one
page run in order in one scratch directory, where `examples/` and `tests/` lead to the
repository's, so a page's commands can use what an earlier block wrote.
"""
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import chainrule
from chainrule.cli.parser import build_parser
from chainrule.dsl.builtins import BUILTINS, CASTS
from chainrule.ir.ops import OPS
from support.cli import chainrule as chainrule_cli
from support.paths import ROOT

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`\n]+`")


def blocks(page, tag):
    """The fenced blocks of a page with this tag, each with the line it starts on."""
    text = page.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(2))
            for m in FENCE.finditer(text) if m.group(1) == tag]


def page_id(page):
    return str(page.relative_to(ROOT))


def test_every_builtin_has_a_signature_in_the_language_reference():
    text = (DOCS / "language.md").read_text()
    missing = sorted(name for name in [*BUILTINS, *CASTS] if f"`{name}(" not in text)
    assert not missing, f"built-ins without a signature in docs/language.md: {missing}"


def test_every_ir_op_is_in_the_language_reference():
    text = (DOCS / "language.md").read_text()
    missing = sorted(name for name in OPS if f"`{name}`" not in text)
    assert not missing, f"IR ops missing from docs/language.md's op table: {missing}"


def test_every_cli_command_and_option_is_in_the_cli_reference():
    text = (DOCS / "cli.md").read_text()
    parser = build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    missing = [f"chainrule {name}" for name in commands.choices
               if f"chainrule {name}" not in text]
    for name, sub in commands.choices.items():
        for action in sub._actions:
            missing += [f"{name} {flag}" for flag in action.option_strings
                        if flag not in ("-h", "--help") and f"`{flag}" not in text]
    assert not missing, f"undocumented in docs/cli.md: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_relative_links_resolve(page):
    broken = []
    # Code is not a link: `blocks[i](h)` calls a layer.
    prose = CODE_SPAN.sub("", FENCE.sub("", page.read_text()))
    for target in LINK.findall(prose):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page_id(page)} links to missing files: {broken}"


NN_BLOCKS = [(page, line, text) for page in PAGES for line, text in blocks(page, "nn")]


@pytest.mark.parametrize("page, line, text", NN_BLOCKS,
                         ids=[f"{page_id(p)}:{line}" for p, line, _ in NN_BLOCKS])
def test_nn_snippet_compiles(page, line, text):
    model = chainrule.compile(source=text)
    assert model.graph.outputs


def console_commands(text):
    """The `$ chainrule ...` commands of a console block, as argument lists."""
    commands, pending = [], None
    for line in text.splitlines():
        if pending is not None:
            pending += " " + line.strip()
        elif line.startswith("$ "):
            pending = line[2:].strip()
        else:
            continue
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        words = shlex.split(pending, comments=True)
        pending = None
        if words[:1] == ["chainrule"]:
            commands.append(words[1:])
    return commands


def run_console(commands, where):
    for argv in commands:
        result = chainrule_cli(*argv, cwd=Path.cwd())
        assert result.returncode == 0, f"{where}: chainrule {shlex.join(argv)} exited " \
                                       f"{result.returncode}:\n{result.stderr}"


RUNNABLE = [page for page in PAGES if blocks(page, "python") or blocks(page, "console")]


@pytest.mark.parametrize("page", RUNNABLE, ids=page_id)
def test_python_and_console_snippets_run(page, tmp_path, monkeypatch):
    for name in ("examples", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    text = page.read_text()
    for match in FENCE.finditer(text):
        tag, body = match.group(1), match.group(2)
        where = f"{page_id(page)}:{text.count(chr(10), 0, match.start()) + 1}"
        if tag == "console":
            run_console(console_commands(body), where)
        elif tag == "python":
            script = tmp_path / "snippet.py"
            script.write_text(body)
            try:
                runpy.run_path(str(script), run_name="__main__")
            except Exception as error:
                raise AssertionError(f"{where}: the snippet raised {error!r}") from error
    assert os.getcwd() == str(tmp_path)


@pytest.mark.subprocess
def test_onnx_training_loop_trains_in_plain_onnxruntime(tmp_path):
    """docs/onnx.md's loop, in a process of its own: it reaches the digits' accuracy, quietly."""
    section = (DOCS / "onnx.md").read_text().split("## The training step as standard ONNX", 1)[1]
    (command,) = console_commands(section.split("```console", 1)[1].split("```", 1)[0])
    assert command[:1] == ["export"] and command[-2:] == ["-o", "step.onnx"]
    step = tmp_path / "step.onnx"
    run_console([[*command[:-1], str(step)]], "docs/onnx.md")
    loop = section.split("```python", 1)[1].split("```", 1)[0].replace('"step.onnx"', f'"{step}"')
    loop += "\nassert float(result['acc']) > 0.9, result['acc']\n"
    result = subprocess.run([sys.executable, "-c", loop], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "appears in graph inputs" not in result.stderr
