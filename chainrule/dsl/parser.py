"""Parsing `.nn` text into a lark tree, with syntax errors turned into located ChainruleErrors."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import lark
from lark import Lark, Token
from lark.exceptions import UnexpectedInput

from ..ir.errors import ChainruleError, SourceLoc, syntax_error

GRAMMAR = Path(__file__).with_name("grammar.lark")
# The parser's tables, computed from the grammar by lark and saved as a Python literal
# (write_tables() writes them): computing them takes most of a `chainrule check`.
TABLES = Path(__file__).with_name("parse_tables.py")

OPEN_BRACKETS = {"LPAR", "LSQB"}
CLOSE_BRACKETS = {"RPAR", "RSQB"}

# The terminals an operand can start with (`-x`, `(a + b)`, `f32(x)`, `2`); a place that takes
# any of them reads "expected an expression".
OPERAND_START = frozenset({"LPAR", "MINUS", "TRUE", "FALSE", "DTYPE", "NAME", "INT", "FLOAT"})

# How terminals read in "expected ..." messages; other punctuation and keywords show as written
# in the grammar.
READABLE = {
    OPERAND_START | {"NOT"}: "an expression", OPERAND_START: "an expression",
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number",
    "DTYPE": "a dtype (f32, f64, i64, bool, ...)", "_NL": "end of line", "$END": "end of input",
}


class BracketAwareNewlines:
    """Drops newlines inside () and [], and ends the last statement of a block before '}'."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for token in stream:
            if token.type in OPEN_BRACKETS:
                depth += 1
            elif token.type in CLOSE_BRACKETS:
                depth = max(depth - 1, 0)
            elif token.type == "_NL" and depth > 0:
                continue
            elif token.type == "RBRACE":
                yield Token.new_borrow_pos("_NL", "\n", token)
            yield token


PARSER_OPTIONS = dict(start="program", parser="lalr", lexer="basic",
                      propagate_positions=True, maybe_placeholders=True)


def grammar_digest() -> str:
    """What the saved tables were computed from: the grammar and the parser's options."""
    return hashlib.sha256(GRAMMAR.read_bytes() + repr(PARSER_OPTIONS).encode()).hexdigest()


@lru_cache(maxsize=1)
def _parser() -> Lark:
    """The saved tables when they are this grammar's and this lark's, else built anew."""
    from . import parse_tables

    if (parse_tables.GRAMMAR_SHA256, parse_tables.LARK_VERSION) == (grammar_digest(),
                                                                    lark.__version__):
        # lark's loader of a saved parser, given the saved dict rather than a pickle.
        return Lark.__new__(Lark)._load(parse_tables.TABLES, postlex=BracketAwareNewlines())
    return build_parser()


def build_parser() -> Lark:
    # The basic lexer, not the contextual one: the post-lexer must see a '}' that ends a
    # statement before the parser state can accept it.
    return Lark(GRAMMAR.read_text(), postlex=BracketAwareNewlines(), **PARSER_OPTIONS)


def write_tables() -> None:
    """Save the tables of build_parser() for this grammar and lark version (parse_tables.py)."""
    data, memo = build_parser().memo_serialize([lark.lexer.TerminalDef, lark.grammar.Rule])
    del data["options"]["postlex"]  # an object, not a literal: the loader is given it
    TABLES.write_text(
        '"""The DSL parser\'s LALR tables for grammar.lark, as lark serializes them, written by\n'
        'chainrule.dsl.parser.write_tables(); do not edit. Tables of another grammar or lark\n'
        'version are ignored, and the parser is built from the grammar."""\n'
        f"GRAMMAR_SHA256 = {grammar_digest()!r}\n"
        f"LARK_VERSION = {lark.__version__!r}\n"
        f"TABLES = {{'data': {data!r}, 'memo': {memo!r}}}\n")


def parse(source: str, filename: str = "<string>"):
    try:
        return _parser().parse(source)
    except UnexpectedInput as error:
        raise _syntax_error(error, source, filename) from None


def _syntax_error(error: UnexpectedInput, source: str, filename: str) -> ChainruleError:
    located = syntax_error(error, source, filename, _parser(), READABLE)
    bracket = _unclosed_bracket(source, error)
    if bracket is None or bracket.line >= located.line:
        return located
    # Newlines inside brackets do not end statements, so a bracket left open shows up lines
    # later as an odd token; say where it opened.
    note = (SourceLoc(filename, bracket.line, bracket.column), f"this '{bracket}' is not closed")
    return ChainruleError(located.message, located.loc, (note,))


def _unclosed_bracket(source: str, error: UnexpectedInput) -> Token | None:
    """The innermost bracket still open where parsing failed."""
    stop = error.pos_in_stream
    if stop is None or stop < 0:  # at the end of the input
        stop = len(source)
    open_brackets = []
    try:
        for token in _parser().lex(source):
            if token.start_pos >= stop:
                break
            if token.type in OPEN_BRACKETS:
                open_brackets.append(token)
            elif token.type in CLOSE_BRACKETS and open_brackets:
                open_brackets.pop()
    except UnexpectedInput:
        pass  # a character the lexer cannot read ends the search there
    return open_brackets[-1] if open_brackets else None
