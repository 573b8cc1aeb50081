"""Errors that point at source text: every user-facing failure carries a location."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLoc:
    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


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


def _render_one(loc, kind, message, source_lines) -> str:
    if loc is None:
        return f"{kind}: {message}"
    text = f"{loc}: {kind}: {message}"
    lines = source_lines(loc.file) if source_lines else None
    if lines and 1 <= loc.line <= len(lines):
        source = lines[loc.line - 1].rstrip("\n").expandtabs(1)
        text += f"\n    {source}\n    {' ' * max(loc.col - 1, 0)}^"
    return text
