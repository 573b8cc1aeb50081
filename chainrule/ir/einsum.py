"""einsum as matrix products: the DSL's einsum(spec, a, b, ...) contracts its operands two at a
time, left to right. Each pair becomes one batched matmul: both operands transposed so the
letters they share and keep lead (the batch), reshaped to matrices of their own letters by the
contracted ones, multiplied, and reshaped back; a letter only one operand has and nothing
later needs is summed away first. Transposes, reshapes, matmul and sum all have derivative
rules, so einsum's gradient follows, and attention's "bhqd,bhkd->bhqk" costs what its matmul
costs, not the [b, h, q, k, d] product a broadcast multiply would build.
"""
from __future__ import annotations

from . import dims
from .shapes import dims_may_equal


def einsum(ops, *operands, spec):
    terms, output = _parse(ops, spec, operands)
    sizes = _letter_sizes(ops, spec, operands, terms)
    current, term = operands[0], terms[0]
    for index in range(1, len(operands)):
        needed = set(output).union(*terms[index + 1:])
        current, term = _contract(ops, current, term, operands[index], terms[index], needed,
                                  sizes)
    current, term = _summed_away(ops, current, term, set(output))
    return _transposed(ops, current, term, output)


def _parse(ops, spec: str, operands) -> tuple[list[str], str]:
    """Each operand's letters and the output's (without "->": the letters used once, in
    alphabetical order, as numpy reads it)."""
    inputs, arrow, output = spec.replace(" ", "").partition("->")
    terms = inputs.split(",")
    if len(terms) != len(operands):
        ops.error(f'"{spec}" names {len(terms)} operands, but {len(operands)} are given')
    letters = "".join(terms)
    if not all(c.isalpha() for c in letters + output):
        ops.error(f'"{spec}": the terms are letters (no "..."), joined by "," and "->"')
    for term, x in zip(terms, operands, strict=True):
        if len(term) != x.type.rank:
            ops.error(f'"{spec}": the term "{term}" has {len(term)} letters for an operand of '
                      f"rank {x.type.rank} ({x.type})")
        if len(set(term)) != len(term):
            ops.error(f'"{spec}": the term "{term}" repeats a letter (a diagonal), which '
                      f"einsum does not take")
    if not arrow:
        output = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if len(set(output)) != len(output) or not set(output) <= set(letters):
        ops.error(f'"{spec}": the output letters must be distinct and each name an operand\'s '
                  f"axis")
    return terms, output


def _letter_sizes(ops, spec, operands, terms) -> dict:
    """Each letter's size; a letter's axes agree, or are 1 where a batch letter broadcasts."""
    sizes = {}
    for term, x in zip(terms, operands, strict=True):
        for letter, size in zip(term, x.type.shape, strict=True):
            known = sizes.setdefault(letter, size)
            if known == 1:
                sizes[letter] = size
            elif size != 1 and not dims_may_equal(known, size):
                ops.error(f'"{spec}": the axes of "{letter}" differ, {known} and {size}')
    return sizes


def _contract(ops, a, a_term, b, b_term, needed, sizes):
    """a and b as one operand of the letters in `needed` that either has."""
    a, a_term = _summed_away(ops, a, a_term, needed | set(b_term))
    b, b_term = _summed_away(ops, b, b_term, needed | set(a_term))
    batch = [c for c in a_term if c in b_term and c in needed]
    contracted = [c for c in a_term if c in b_term and c not in needed]
    left = [c for c in a_term if c not in b_term]
    right = [c for c in b_term if c not in a_term]
    rows = _matrix(ops, a, a_term, batch, left, contracted, sizes)
    columns = _matrix(ops, b, b_term, batch, contracted, right, sizes)
    product = ops.emit("matmul", rows, columns)
    if len(left) != 1 or len(right) != 1:
        product = ops.emit("reshape", product, shape=(0,) * len(batch) + tuple(
            sizes[c] for c in left + right))
    return product, "".join(batch + left + right)


def _matrix(ops, x, term, batch, row_letters, column_letters, sizes):
    """x as [*batch, rows, columns], the rows and the columns each a product of letters' axes
    (the batch axes copied as they are, so a symbolic batch stays)."""
    x = _transposed(ops, x, term, "".join(batch + row_letters + column_letters))
    if len(row_letters) == 1 and len(column_letters) == 1:
        return x
    shape = (0,) * len(batch) + tuple(dims.product(sizes[c] for c in letters)
                                      for letters in (row_letters, column_letters))
    return ops.emit("reshape", x, shape=shape)


def _summed_away(ops, x, term, kept):
    axes = tuple(i for i, c in enumerate(term) if c not in kept)
    if not axes:
        return x, term
    return ops.emit("sum", x, axes=axes), "".join(c for c in term if c in kept)


def _transposed(ops, x, term, order):
    perm = tuple(term.index(c) for c in order)
    return x if perm == tuple(range(len(perm))) else ops.emit("transpose", x, perm=perm)
