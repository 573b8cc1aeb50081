"""Ops whose result's shape depends on the values of their inputs: how many boxes
NonMaxSuppression selects, how many distinct values Unique finds, how many elements NonZero
counts. chainrule's shapes are fixed (or symbolic) when a graph is compiled, and no dim can
stand for a count of values, so the importer refuses these saying so, rather than as ops
chainrule has never heard of."""
from __future__ import annotations

# Op type -> what its result's length counts.
DATA_DEPENDENT_LENGTHS = {
    "NonMaxSuppression": "how many boxes it selects",
    "Unique": "how many distinct values its input holds",
    "NonZero": "how many elements of its input are not zero",
}


def data_dependent_shape(op_type: str) -> str:
    return (f"{op_type}'s result is as long as {DATA_DEPENDENT_LENGTHS[op_type]}, which only "
            f"its input's values tell (chainrule fixes shapes when it compiles)")
