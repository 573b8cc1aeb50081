"""Einsum as chainrule ops: the equation with its ellipsis spelled out as letters, and a letter
repeated within one operand replaced by that operand's diagonal, is the DSL's einsum
(ir/einsum.py), pairs of operands contracted by matrix products."""
from __future__ import annotations

import string

import numpy as np

from ..ir.einsum import einsum as matrix_einsum
from .context import Unsupported

ELLIPSIS_LETTERS = string.ascii_uppercase  # `...` dims get letters no equation uses


def parse(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """Each operand's letters (ellipsis spelled out) and the output's."""
    equation = equation.replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(ranks):
        raise Unsupported(f"Einsum '{equation}' names {len(terms)} operands, given "
                          f"{len(ranks)}")
    widest = max((rank - len(term.replace("...", "")) for term, rank in zip(terms, ranks)
                  if "..." in term), default=0)
    if widest > len(ELLIPSIS_LETTERS):
        raise Unsupported(f"Einsum '{equation}' with that many ellipsis dims")
    spelled = []
    for term, rank in zip(terms, ranks, strict=True):
        if "..." in term:
            count = rank - len(term.replace("...", ""))
            term = term.replace("...", ELLIPSIS_LETTERS[widest - count:widest])
        if len(term) != rank:
            raise Unsupported(f"Einsum term '{term}' for an operand of rank {rank}")
        spelled.append(term)
    ellipsis = ELLIPSIS_LETTERS[:widest]
    if arrow:
        output = output.replace("...", ellipsis)
        if len(set(output)) != len(output):
            raise Unsupported(f"Einsum '{equation}' repeats a letter in its output")
    else:  # implicit: the ellipsis, then the letters used once, alphabetically
        letters = "".join(spelled)
        output = ellipsis + "".join(sorted(c for c in set(letters)
                                           if letters.count(c) == 1 and c not in ellipsis))
    return spelled, output


def einsum(ctx, equation: str, operands):
    terms, output = parse(equation, [x.type.rank for x in operands])
    operands, terms = zip(*(_diagonal(ctx, x, term) for x, term in
                            zip(operands, terms, strict=True)), strict=True)
    return matrix_einsum(ctx, *operands, spec=f"{','.join(terms)}->{output}")


def _diagonal(ctx, x, term: str):
    """x without repeated letters: for each, the elements where the two axes agree (x where
    an identity matrix on them holds, else 0, summed over the second)."""
    while len(set(term)) != len(term):
        letter = next(c for c in term if term.count(c) > 1)
        first = term.index(letter)
        second = term.index(letter, first + 1)
        size = x.type.shape[first]
        if not isinstance(size, int) or x.type.shape[second] != size:
            raise Unsupported(f"Einsum diagonal '{letter}' of {x.type}")
        identity = np.eye(size, dtype=bool).reshape([size if axis in (first, second) else 1
                                                     for axis in range(first, x.type.rank)])
        masked = ctx.emit("where", ctx.known_tensor(identity, "identity"), x,
                          ctx.constant(0, x))
        x = ctx.emit("sum", masked, axes=(second,), keepdims=False)
        term = term[:second] + term[second + 1:]
    return x, term
