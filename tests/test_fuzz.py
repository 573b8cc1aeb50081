"""Fuzzing the front end: whatever text comes in, it compiles or gives one located error, with
bounded work.

Each test feeds one kind of text to the DSL compiler (`chainrule.compile`) or to the IR reader
(`chainrule.ir.parse_graph`): random characters; random sequences of the grammar's tokens;
statements built from the grammar's rules with random parts, which mostly parse and so reach
lowering and type checking; and the examples (`examples/*.nn`, and the IR they print) with
tokens and lines deleted, duplicated and swapped. Every input must either compile or raise a
ChainruleError that carries a line and column, within a bound on its work (function calls,
counted: tests/support/fuzzing.py); any other exception is a bug, and hypothesis shows the
text.

The suite runs a few derandomized examples per test; CHAINRULE_FUZZ_EXAMPLES sets another count
per test, e.g. 2,500 for each of the eight, 20,000 in all:

    CHAINRULE_FUZZ_EXAMPLES=2500 python -m pytest tests/test_fuzz.py -q

The long run (docs/internals.md) counts these tests' inputs among its whole models.

Inputs always end with a newline, as files do.

Last, inputs of every size: expressions nested thousands deep and a model of 20,000 lines
compile, and the work grows linearly with the length of the text; and random nestings of loops,
ifs, calls, layers and parentheses, to well past the limits on nesting and on unrolling.
"""
import os
import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import chainrule
from chainrule import ChainruleError
from chainrule.dsl.builtins import BUILTINS
from chainrule.ir import OPS, parse_graph
from chainrule.ir.init import INITIALIZERS

from support.fuzzing import EXPRESSIONS, WHOLE_MODELS, fuzz_kind, within_calls
from support.paths import EXAMPLES

EXAMPLES_PER_TEST = int(os.environ.get("CHAINRULE_FUZZ_EXAMPLES", "40"))
# The examples compile in 15 to 40 calls per character, and print their IR back in about 10;
# the bound allows many times more, for the error paths (a message that suggests a name).
CALLS_PER_INPUT = 100_000
CALLS_PER_CHARACTER = 1_000

fuzz = fuzz_kind(WHOLE_MODELS, EXAMPLES_PER_TEST)

SOURCES = [path.read_text() for path in EXAMPLES]
IR_TEXTS = [chainrule.compile(source=source).ir(grad=grad) for source in SOURCES for grad in (False, True)]
parse_graph(IR_TEXTS[0])  # the IR parser is built once, before any input's work is counted


def compile_text(text: str):
    return chainrule.compile(source=text)


def check_front_end(read, text: str) -> None:
    """`read(text)` succeeds or raises a located ChainruleError, within the work allowed."""
    with within_calls(CALLS_PER_INPUT + CALLS_PER_CHARACTER * len(text)):
        try:
            read(text)
        except ChainruleError as error:
            assert error.line is not None and error.line >= 1 and error.col >= 1, \
                repr(error.message)
            error.render(lambda file: text.splitlines())


# ---- what the inputs are made of --------------------------------------------------------------

# Whitespace runs, comments, words, numbers, multi-character operators, then single characters:
# joining the pieces gives the text back.
PIECES = re.compile(r"\s+|#[^\n]*|%?[A-Za-z_][A-Za-z0-9_./]*|[0-9.]+(?:[eE][-+]?[0-9]+)?"
                    r"|\*\*|[<>=!]=|\.\.\.|.", re.DOTALL)


def tokens(text: str) -> list[str]:
    return PIECES.findall(text)


def lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


@st.composite
def mutations(draw, texts: list[str], split) -> str:
    """One of `texts`, split into pieces; then one to four pieces deleted, duplicated or
    swapped."""
    pieces = split(draw(st.sampled_from(texts)))
    for _ in range(draw(st.integers(1, 4))):
        i, j = (draw(st.integers(0, len(pieces) - 1)) for _ in range(2))
        kind = draw(st.sampled_from(["delete", "duplicate", "swap"]))
        if kind == "delete" and len(pieces) > 1:
            del pieces[i]
        elif kind == "duplicate":
            pieces.insert(j, pieces[i])
        else:
            pieces[i], pieces[j] = pieces[j], pieces[i]
    return "".join(pieces) + "\n"


def sentences(vocabulary) -> st.SearchStrategy[str]:
    """Up to 60 words drawn from `vocabulary`, joined by spaces."""
    return st.lists(vocabulary, max_size=60).map(lambda words: " ".join(words) + "\n")


# The DSL's keywords and punctuation, names it knows and some it does not, small numbers and
# ones past 64 bits (not a large one that fits: it could declare a param too large to draw),
# and newlines.
DSL_WORDS = st.sampled_from(
    "model def param let return and or not true false f32 f64 i64 bool "
    "( ) [ ] { } , : = + - * / @ ** < <= > >= == != . ... # \\".split()
    + ["\n", "\n\n"]
    + ["x", "y", "W", "z", "B", "T", "m", "f", "a", "axis", "keepdims", "perm", "xx"]
    + sorted(BUILTINS) + sorted(INITIALIZERS)
    + ["0", "1", "2", "3", "10", "0.5", "1e-3", ".5", "2.", "-1", "1e999", "9" * 20])

IR_WORDS = st.sampled_from(
    "graph param return none true false f32 f64 i64 bool ? ( ) [ ] { } , : = # inf nan -inf "
    "-0.0 0 1 2 3 1.0 %x %y %W %z %a B T x 1e999".split() + ["9" * 20]
    + ["\n", "# <string>:1:1\n"] + sorted(OPS)
    + sorted({key for op in OPS.values() for key in op.attrs}) + sorted(INITIALIZERS))

CHARACTERS = st.text(st.sampled_from("model def param let return f32[B, 3] x y W relu sum "
                                     "()[]{}:,=+-*/@.<>!#\\\n\t 0123456789.e_\"'$%")
                     | st.characters(), max_size=300)

MODEL_OPEN = "model m(x: f32[B, 3], y: i64[B]) {\n"

@st.composite
def random_models(draw) -> str:
    """A function and a model whose statements assign random expressions."""
    function_body = draw(EXPRESSIONS)
    statements = [f"v{i} = {draw(EXPRESSIONS)}" for i in range(draw(st.integers(1, 4)))]
    returned = draw(st.sampled_from([f"v{i}" for i in range(len(statements))] + ["x"]))
    return ("def f(a, b=1) {\n"
            f"    return {function_body}\n"
            "}\n"
            "model m(x: f32[B, 3], y: i64[B]) {\n"
            "    param W: f32[3, 3] = glorot()\n"
            "    param v: f32[3] = zeros()\n"
            "    let k = 2\n"
            + "".join(f"    {statement}\n" for statement in statements)
            + f"    return {returned}\n"
            "}\n")


@st.composite
def random_graphs(draw) -> str:
    """IR nodes with random ops, operands, attributes and types."""
    defined = ["%x", "%y", "%W"]
    text = ["graph g(%x: f32[B, 3], %y: i64[B]) {",
            "  param %W: f32[3, 3] = uniform(-1.0, 1.0)  # <string>:2:11"]
    attr_values = st.sampled_from(["0", "1", "-1", "2.5", "true", "none", "f32", "i64", "[]",
                                   "[0]", "[1, 0]", "[0.5]", "[[0]]", "inf"])
    types = st.sampled_from(["f32[B, 3]", "f32[3, 3]", "f32[]", "f32[B]", "i64[B]",
                             "bool[B, 3]", "f32[?]", "f64[3]", "f32[B, 3, 1]"])
    for i in range(draw(st.integers(1, 5))):
        op = OPS[draw(st.sampled_from(sorted(OPS)))]
        count = op.num_inputs if isinstance(op.num_inputs, int) else 2
        operands = draw(st.lists(st.sampled_from(defined), min_size=count, max_size=count)
                        | st.lists(st.sampled_from(defined), max_size=3))
        keys = draw(st.lists(st.sampled_from(sorted(op.attrs)), unique=True)) if op.attrs else []
        keys += ["bogus"] if draw(st.integers(0, 9)) == 0 else []
        attrs = ", ".join(f"{key}={draw(attr_values)}" for key in keys)
        text.append(f"  %v{i} = {op.name}({', '.join(operands)})"
                    f"{f' {{{attrs}}}' if keys else ''} : {draw(types)}  # <string>:{i + 3}:5")
        defined.append(f"%v{i}")
    text += [f"  return {draw(st.sampled_from(defined))}", "}", ""]
    return "\n".join(text)


# ---- the DSL ----------------------------------------------------------------------------------

@fuzz
@given(CHARACTERS)
def test_random_characters(text):
    check_front_end(compile_text, text + "\n")
    check_front_end(compile_text, MODEL_OPEN + text + "\n}\n")


@fuzz
@given(sentences(DSL_WORDS))
def test_random_token_sequences(text):
    check_front_end(compile_text, text)
    check_front_end(compile_text, MODEL_OPEN + text + "}\n")


@fuzz
@given(random_models())
def test_random_statements(text):
    check_front_end(compile_text, text)


@fuzz
@given(mutations(SOURCES, tokens) | mutations(SOURCES, lines))
def test_mutated_examples(text):
    check_front_end(compile_text, text)


# ---- the IR -----------------------------------------------------------------------------------

@fuzz
@given(CHARACTERS)
def test_random_characters_as_ir(text):
    check_front_end(parse_graph, "graph g(%x: f32[3]) {\n" + text + "\n}\n")


@fuzz
@given(sentences(IR_WORDS))
def test_random_token_sequences_as_ir(text):
    check_front_end(parse_graph, text)
    check_front_end(parse_graph, "graph g(%x: f32[B, 3]) {\n" + text + "}\n")


@fuzz
@given(random_graphs())
def test_random_nodes(text):
    check_front_end(parse_graph, text)
    check_front_end(compile_text, text)


@fuzz
@given(mutations(IR_TEXTS, tokens) | mutations(IR_TEXTS, lines))
def test_mutated_ir(text):
    check_front_end(parse_graph, text)
    check_front_end(compile_text, text)


# ---- inputs of every size ---------------------------------------------------------------------

def chain(lines: int) -> str:
    """A model of `lines` assignments, each negating the one before."""
    return (MODEL_OPEN + "    h0 = x\n" + "".join(f"    h{i + 1} = -h{i}\n" for i in range(lines))
            + f"    return h{lines}\n}}\n")


@pytest.mark.parametrize("expression, nodes", [
    ("(" * 5000 + "x" + ")" * 5000, 0),
    ("-" * 5000 + "x", 5000),
    ("-(" * 5000 + "x" + ")" * 5000, 5000),
    ("relu(" * 5000 + "x" + ")" * 5000, 5000),
    (" ** ".join(["x"] * 5000), 4999),
    (" + ".join(["x"] * 5000), 4999),
    ("x" + "[0:2]" * 2000, 2000),
], ids=["parentheses", "minus signs", "negated parentheses", "calls", "powers", "sum",
        "slices"])
def test_deep_expressions_compile(expression, nodes):
    compiled = chainrule.compile(source=MODEL_OPEN + f"    h = {expression}\n    return h\n}}\n")
    assert len(compiled.graph.nodes) == nodes


@pytest.mark.slow
def test_a_long_model_compiles():
    assert len(chainrule.compile(source=chain(20_000)).graph.nodes) == 20_000


def test_compiling_takes_work_linear_in_the_length():
    """Twice the lines, twice the Python calls (counted, not timed)."""
    def calls(text: str) -> int:
        count = 0

        def profile(frame, event, arg):
            nonlocal count
            count += event in ("call", "c_call")
        sys.setprofile(profile)
        try:
            chainrule.compile(source=text)
        finally:
            sys.setprofile(None)
        return count
    ratio = calls(chain(500)) / calls(chain(250))
    assert 1.9 < ratio < 2.1, ratio


# ---- nesting depth ----------------------------------------------------------------------------

NESTING_KINDS = ["for", "if", "else", "else if", "call", "layer", "parentheses", "negation"]


@st.composite
def nestings(draw) -> str:
    """Constructs nested one inside the next, from a few levels to well past the limits on
    blocks (100) and calls (64): loops, if and else branches, functions calling the next, layers
    calling (and made in) the next, and parentheses and minus signs around the innermost
    expression. Most loops run once; a few run 2 or 3 times, or 20 of them do (a nest whose
    unrolling must be refused), or one runs a million times."""
    depth = draw(st.integers(1, 20) | st.integers(90, 130) | st.integers(130, 300))
    kinds = draw(st.lists(st.sampled_from(NESTING_KINDS), min_size=depth, max_size=depth))
    loop_count = kinds.count("for")
    repeated = draw(st.sampled_from([0, 1, 2, 3, 20]))
    repeated = repeated if repeated <= loop_count and (repeated < 20 or loop_count >= 20) else 0
    lengths = [1] * loop_count
    for index in draw(st.permutations(range(loop_count)))[:repeated]:
        lengths[index] = draw(st.sampled_from([2, 3])) if repeated <= 3 else 2
    if loop_count and draw(st.integers(0, 9)) == 0:
        lengths[draw(st.integers(0, loop_count - 1))] = 10 ** 6
    expression = "y + 1.0"
    statements, declarations, definitions = "", [], []
    for level, kind in enumerate(reversed(kinds)):
        if kind == "parentheses":
            expression = f"({expression})"
        elif kind == "negation":
            expression = f"-{expression}"
        if kind in ("parentheses", "negation"):
            continue
        statements = statements or f"y = {expression}\n"
        if kind == "for":
            statements = f"for k{level} in range({lengths.pop()}) {{\n{statements}}}\n"
        elif kind == "call" and not declarations:  # (a function sees no layer made outside)
            definitions.append(f"def g{level}(y) {{\n{statements}return y\n}}\n")
            statements = f"y = g{level}(y)\n"
        elif kind in ("if", "call"):
            statements = f"if {level} >= 0 {{\n{statements}}}\n"
        elif kind == "else":
            statements = f"if false {{\ny = y\n}} else {{\n{statements}}}\n"
        elif kind == "else if":
            statements = f"if false {{\ny = y\n}} else if true {{\n{statements}}}\n"
        elif kind == "layer":  # its forward runs the levels inside; made where the next is
            body = "".join(f"{d}\n" for d in declarations)
            definitions.append(f"layer L{level}() {{\n{body}forward(y) {{\n{statements}"
                               f"return y\n}}\n}}\n")
            declarations = [f"layer l{level} = L{level}()"]
            statements = f"y = l{level}(y)\n"
    statements = statements or f"y = {expression}\n"
    return ("".join(definitions) + "model m(x: f32[2]) {\ny = x\n"
            + "".join(f"{d}\n" for d in declarations) + statements + "return y\n}\n")


@fuzz
@given(nestings())
def test_nestings_of_every_depth(text):
    check_front_end(compile_text, text)


def test_deeply_nested_function_calls_are_an_error():
    functions = "def g0(a) {\n  return a\n}\n" + "".join(
        f"def g{i}(a) {{\n  return g{i - 1}(a)\n}}\n" for i in range(1, 200))
    with pytest.raises(ChainruleError) as info:
        chainrule.compile(source=functions + MODEL_OPEN + "    h = g199(x)\n    return h\n}\n")
    assert info.value.message == ("function calls nest more than 64 deep "
                                  "(g199 -> g198 -> ... -> g136 -> g135)")
