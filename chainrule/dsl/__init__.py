"""The model language: a lark grammar, its parser, and lowering to the graph IR."""
from .lower import lower_source
from .parser import parse

__all__ = ["lower_source", "parse"]
