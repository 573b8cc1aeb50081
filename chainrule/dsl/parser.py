"""Parsing `.nn` text into a lark tree, with syntax errors turned into located ChainruleErrors."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..ir.errors import ChainruleError, SourceLoc

GRAMMAR = Path(__file__).with_name("grammar.lark")

OPEN_BRACKETS = {"LPAR", "LSQB"}
CLOSE_BRACKETS = {"RPAR", "RSQB"}

# How terminals are named in "expected ..." messages; other punctuation and keywords show as
# written in the grammar.
READABLE = {
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number",
    "DTYPE": "a dtype (f32, f64, i64, bool)", "_NL": "end of line", "$END": "end of file",
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


@lru_cache(maxsize=1)
def _parser() -> Lark:
    # The basic lexer, not the contextual one: the post-lexer must see a '}' that ends a
    # statement before the parser state can accept it.
    return Lark(GRAMMAR.read_text(), start="program", parser="lalr", lexer="basic",
                postlex=BracketAwareNewlines(), propagate_positions=True,
                maybe_placeholders=True)


def parse(source: str, filename: str = "<string>"):
    try:
        return _parser().parse(source)
    except UnexpectedInput as error:
        raise _syntax_error(error, source, filename) from None


def _syntax_error(error: UnexpectedInput, source: str, filename: str) -> ChainruleError:
    if isinstance(error, UnexpectedCharacters):
        char = source[error.pos_in_stream] if error.pos_in_stream < len(source) else "?"
        return ChainruleError(f"unexpected character {char!r}",
                              SourceLoc(filename, error.line, error.column))
    if isinstance(error, UnexpectedEOF) or (isinstance(error, UnexpectedToken)
                                            and error.token.type == "$END"):
        lines = source.splitlines() or [""]
        loc = SourceLoc(filename, len(lines), len(lines[-1]) + 1)
        return ChainruleError(f"unexpected end of file{_expected(error)}", loc)
    token = error.token
    shown = "end of line" if token.type == "_NL" else repr(str(token))
    return ChainruleError(f"unexpected {shown}{_expected(error)}",
                          SourceLoc(filename, token.line, token.column))


def _expected(error) -> str:
    names = sorted({_readable(t) for t in (getattr(error, "expected", None) or ())})
    if not names or len(names) > 8:
        return ""
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return "; expected " + listed


def _readable(terminal: str) -> str:
    if terminal in READABLE:
        return READABLE[terminal]
    try:
        pattern = _parser().get_terminal(terminal).pattern
    except KeyError:
        return repr(terminal)
    return repr(pattern.value) if pattern.type == "str" else terminal.lower()
