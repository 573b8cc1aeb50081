"""Einsum as chainrule ops: each operand transposed and unsqueezed onto one common axis order,
multiplied with broadcasting, and summed over the contracted letters. That covers products,
contractions, batch matmuls, outer products, transposes and sums. A letter repeated within one
operand takes that operand's diagonal first."""
from __future__ import annotations

import string

import numpy as np

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
    contracted = [c for term in terms for c in term if c not in output]
    order = list(output) + list(dict.fromkeys(contracted))
    aligned = [_aligned(ctx, x, term, order) for x, term in zip(operands, terms, strict=True)]
    product = aligned[0]
    for x in aligned[1:]:
        product = ctx.emit("mul", product, x)
    if len(order) > len(output):
        product = ctx.emit("sum", product, axes=tuple(range(len(output), len(order))))
    return product


def _aligned(ctx, x, term: str, order: list[str]):
    """x with its axes in `order`'s order and size-1 axes for the letters it lacks."""
    present = [c for c in order if c in term]
    perm = tuple(term.index(c) for c in present)
    if perm != tuple(range(len(perm))):
        x = ctx.emit("transpose", x, perm=perm)
    missing = tuple(i for i, c in enumerate(order) if c not in term)
    return ctx.emit("unsqueeze", x, axes=missing) if missing else x


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
