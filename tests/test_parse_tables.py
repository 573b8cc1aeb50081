"""The DSL parser's saved tables (chainrule/dsl/parse_tables.py) are the grammar's own: a
grammar edit without rewriting them fails here, and the saved parser reads every example as
the parser built from the grammar does, errors included."""
import lark
import pytest

from chainrule.dsl import parse_tables
from chainrule.dsl.parser import _parser, build_parser, grammar_digest
from support.paths import ROOT

REWRITE = 'python -c "from chainrule.dsl.parser import write_tables; write_tables()"'
SOURCES = sorted(ROOT.glob("examples/*.nn")) + sorted(ROOT.glob("tests/**/*.nn"))
BROKEN = ["model m( {", "model m(x: f32[3]) {\n    return x +\n}\n", "@@", "model m() {\n"]


def test_the_saved_tables_are_the_grammars():
    assert parse_tables.GRAMMAR_SHA256 == grammar_digest(), \
        f"grammar.lark changed since its parse tables were saved: rewrite them with {REWRITE}"


def test_the_saved_tables_parse_as_the_built_parser_does():
    saved, built = _parser(), build_parser()
    if parse_tables.LARK_VERSION != lark.__version__:
        assert saved.parser is not None  # another lark: the grammar was built, not loaded
        return
    for path in SOURCES:
        text = path.read_text()
        assert saved.parse(text) == built.parse(text), path
    for text in BROKEN:
        errors = []
        for parser in (saved, built):
            with pytest.raises(lark.exceptions.UnexpectedInput) as raised:
                parser.parse(text)
            error = raised.value
            errors.append((type(error), error.line, error.column,
                           frozenset(getattr(error, "expected", ()) or ())))
        assert errors[0] == errors[1]
