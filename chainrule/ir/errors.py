"""Errors that point at source text: every user-facing failure carries a location."""
from __future__ import annotations

from dataclasses import dataclass, field

from lark import Lark
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput


@dataclass(frozen=True)
class SourceLoc:
    """A place in a file; line 0 stands for the whole file (a file that cannot be read).

    `iteration` says which pass of the enclosing loops a node was lowered in (`t=3`, or
    `i=1, t=3` nested): an unrolled loop body is one place in the text but many in the graph.
    `node` names the node of an imported ONNX file a value comes from; ONNX has no lines.
    `scope` is the calls and unrolled loop steps a node was lowered in, outermost first
    (`("layer1.0 58:13", "conv1 44:16")`, `("t=2", "gru_cell 35:15")`): what the interactive
    page groups nodes by. The IR text does not print it, nor does it compare: two locations
    are the same place whatever calls led there.
    """

    file: str
    line: int
    col: int
    iteration: str = ""
    node: str = ""
    scope: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        file = printable(self.file)
        if self.node:
            node = printable(self.node)
            # The IR text's reader would take a last `]` as closing an iteration, and strip a
            # last space: either is written escaped.
            if node.endswith(("]", " ")):
                node = f"{node[:-1]}\\x{ord(node[-1]):02x}"
            return f"{file}:{node}"
        return f"{file}:{self.line}:{self.col}" if self.line else file

    def described(self) -> str:
        """FILE:LINE:COL with the iteration, as the IR text and ONNX docs show it."""
        return f"{self} [{self.iteration}]" if self.iteration else str(self)


def printable(text: str) -> str:
    """Foreign text (an ONNX name, a file name) as it may stand inside one printed line: a
    backslash, and every character that ends a line or does not print (controls, U+2028,
    U+2029, bidirectional overrides), as Python writes it in a string (`\\n`, `\\x1b`,
    `\\u2028`). A name can then neither start a line of code in a printed model nor hide
    text; `from_printable` reads it back."""
    return "".join(char if char.isprintable() and char != "\\" else
                   char.encode("unicode_escape").decode("ascii") for char in text)


def from_printable(text: str) -> str:
    """The text `printable` wrote."""
    if "\\" not in text:
        return text
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def onnx_node_loc(file: str, node_name: str) -> SourceLoc:
    """Where a value of an imported ONNX model comes from: its file and node name."""
    return SourceLoc(file, 0, 0, node=node_name)


def file_error(path, message: str) -> ChainruleError:
    """An error about a whole file, rendered `FILE: error: message`."""
    return ChainruleError(message, SourceLoc(str(path), 0, 0))


class ChainruleError(Exception):
    """An error a user can cause and fix. Rendered as `FILE:LINE:COL: error: message`."""

    def __init__(self, message: str, loc: SourceLoc | None = None,
                 notes: tuple[tuple[SourceLoc | None, str], ...] = ()):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.notes = tuple(notes)

    @property
    def file(self):
        return self.loc.file if self.loc else None

    @property
    def line(self):
        return self.loc.line if self.loc else None

    @property
    def col(self):
        return self.loc.col if self.loc else None

    def render(self, source_lines=None) -> str:
        """The message with each location's source line and a caret.

        `source_lines(file) -> list[str] | None` supplies the text; without it only locations print.
        """
        parts = [_render_one(self.loc, "error", self.message, source_lines)]
        parts += [_render_one(loc, "note", text, source_lines) for loc, text in self.notes]
        return "\n".join(parts)

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}" if self.loc else self.message


def _loops_text(iteration: str) -> str:
    """`t=3` is an unrolled loop's iteration; a bare `t` is a scan's body, every step of it."""
    if all("=" in part for part in iteration.split(", ")):
        return f"the loop iteration {iteration}"
    return ", ".join(f"the loop iteration {part}" if "=" in part else f"the loop over {part}"
                     for part in iteration.split(", "))


def _render_one(loc, kind, message, source_lines) -> str:
    if loc is None:
        return f"{kind}: {message}"
    text = f"{loc}: {kind}: {message}"
    if loc.iteration:
        text += f" (in {_loops_text(loc.iteration)})"
    lines = source_lines(loc.file) if source_lines and loc.line else None
    if lines and 1 <= loc.line <= len(lines):
        source = lines[loc.line - 1].rstrip("\n").expandtabs(1)
        text += f"\n    {source}\n    {' ' * max(loc.col - 1, 0)}^"
    return text


# ---- literals ---------------------------------------------------------------------------------

INT64_MAX = 2**63 - 1


def integer_literal(text: str, loc: SourceLoc) -> int:
    """The integer `text` spells (digits, perhaps after a '-'); past 64 bits, a located error.

    The length is checked first: Python refuses to convert more than 4300 digits.
    """
    digits = text.lstrip("-")
    largest = INT64_MAX + 1 if text.startswith("-") else INT64_MAX  # down to -2**63
    if len(digits) > len(str(INT64_MAX)) or int(digits) > largest:
        shown = text if len(text) <= 24 else f"{text[:12]}... ({len(digits)} digits)"
        raise ChainruleError(f"the integer {shown} does not fit in 64 bits", loc)
    return int(text)


# ---- syntax errors from lark ------------------------------------------------------------------

# More names than this in "expected ..." say little: the message then stops at what was found.
MAX_EXPECTED = 8


def syntax_error(error: UnexpectedInput, text: str, filename: str, parser: Lark,
                 readable: dict) -> ChainruleError:
    """A lark parse failure as a located `unexpected X; expected A, B` ChainruleError.

    `readable` says how terminals read in the expected list: a terminal name maps to words
    (`"NAME": "a name"`), and a frozenset of names maps to words for all of them together
    (`"an expression"`). Other terminals show as the grammar writes them.
    """
    if isinstance(error, UnexpectedCharacters):
        return ChainruleError(f"unexpected character {error.char!r}",
                              SourceLoc(filename, error.line, error.column))
    expected = _expected(error, parser, readable)
    if isinstance(error, UnexpectedEOF) or error.token.type == "$END":
        # lark places the end of input at the last token; the reader's cursor is past all text.
        # Lines are counted as lark counts them, by '\n' only.
        lines = text.split("\n")
        if len(lines) > 1 and not lines[-1]:
            lines.pop()  # the newline that ends the last line
        return ChainruleError(f"unexpected end of input{expected}",
                              SourceLoc(filename, len(lines), len(lines[-1].rstrip("\r")) + 1))
    token = error.token
    shown = "end of line" if "\n" in token else repr(str(token))
    return ChainruleError(f"unexpected {shown}{expected}",
                          SourceLoc(filename, token.line, token.column))


def _expected(error: UnexpectedInput, parser: Lark, readable: dict) -> str:
    # `accepts` asks the parser which tokens would really continue; `expected` is LALR's
    # merged (and so looser) lookahead set.
    terminals = set(getattr(error, "accepts", None) or getattr(error, "expected", None) or ())
    names = set()
    for group, words in readable.items():
        if isinstance(group, frozenset) and group <= terminals:
            terminals -= group
            names.add(words)
    names.update(readable.get(terminal) or _as_written(parser, terminal)
                 for terminal in terminals)
    if not names or len(names) > MAX_EXPECTED:
        return ""
    return "; expected " + ", ".join(sorted(names))


def _as_written(parser: Lark, terminal: str) -> str:
    try:
        pattern = parser.get_terminal(terminal).pattern
    except KeyError:
        return repr(terminal)
    return repr(pattern.value) if pattern.type == "str" else terminal.lower()
