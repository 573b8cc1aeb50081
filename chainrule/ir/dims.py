"""Dims as expressions: `B*H`, `S-1`, `(H+2)//2+1`, over symbols that stand for positive sizes.

A dim is an int, a symbol (a str such as "B"), UNKNOWN ("?"), or a `DimExpr`. Every result of
the arithmetic here is canonical: an expression that comes to a number is an int, one that comes
to a bare symbol is that str, and any other is a DimExpr holding a polynomial in canonical form,
so `B*2*H` and `2*H*B` are the same value (equal, same hash, same text). Floor division and
modulo that do not divide exactly stay as atoms of the polynomial, `(S-1)//2`.

Equality of canonical forms is decidable and cheap: two dims whose forms are equal are equal
for every size of their symbols (the converse does not always hold: the forms reduce the
common cases, such as `(H-2)//2+1` to `H//2`). `provably_different` and `at_least` reason
about signs with every symbol at least 1, the size of a dim of a tensor chainrule accepts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from math import ceil, gcd

from .types import UNKNOWN

# A monomial: sorted ((atom, power), ...); () is the constant term.
# A polynomial: a sorted tuple of (monomial, nonzero coefficient).


@dataclass(frozen=True, order=True)
class Quotient:
    """An atom `numerator // denominator` (kind "//") or `numerator % denominator` (kind "%")
    that does not simplify; both sides are polynomials in canonical form."""

    kind: str
    numerator: tuple
    denominator: tuple

    def __str__(self) -> str:
        return self.text(str)

    def text(self, name) -> str:
        return (f"{_grouped(self.numerator, name)}{self.kind}"
                f"{_grouped(self.denominator, name)}")


class DimExpr:
    """A dim that no int or bare symbol can state: a polynomial over symbols and quotients."""

    __slots__ = ("terms", "_hash")

    def __init__(self, terms: tuple):
        self.terms = terms
        self._hash = hash(terms)

    def __eq__(self, other) -> bool:
        return isinstance(other, DimExpr) and self.terms == other.terms

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        return _poly_text(self.terms)

    def __repr__(self) -> str:
        return f"DimExpr({str(self)!r})"

    # Arithmetic, so that numpy object arrays of dims (the importer's shape folding) compute.
    def __add__(self, other):
        return add(self, other)

    __radd__ = __add__

    def __sub__(self, other):
        return sub(self, other)

    def __rsub__(self, other):
        return sub(other, self)

    def __mul__(self, other):
        return mul(self, other)

    __rmul__ = __mul__

    def __floordiv__(self, other):
        return floordiv(self, other)

    def __rfloordiv__(self, other):
        return floordiv(other, self)

    def __mod__(self, other):
        return mod(self, other)

    def __rmod__(self, other):
        return mod(other, self)

    def __neg__(self):
        return neg(self)


class Symbol(DimExpr):
    """A bare symbol that takes part in arithmetic (`Symbol("B") * 4`), for code that computes
    with numpy object arrays of dims; `canonical` turns results back into plain dims."""

    __slots__ = ()

    def __init__(self, name: str):
        super().__init__(_poly_of(name))


class NotADim(ValueError):
    """A text that is not a dim expression, or arithmetic a dim cannot do."""


# ---- polynomials ------------------------------------------------------------------------------

def _poly_of(dim) -> tuple:
    if isinstance(dim, DimExpr):
        return dim.terms
    if isinstance(dim, bool):
        raise NotADim(f"{dim!r} is not a dim")
    if isinstance(dim, int):
        return (((), dim),) if dim else ()
    if isinstance(dim, str) and dim != UNKNOWN and dim:
        return ((((dim, 1),), 1),)
    if hasattr(dim, "__index__"):  # numpy integers
        return _poly_of(int(dim))
    raise NotADim(f"{dim!r} is not a dim")


def _normalized(terms: dict) -> tuple:
    return tuple(sorted(((m, c) for m, c in terms.items() if c), key=_term_order))


def _term_order(term):
    monomial, _ = term
    return (monomial == (), -sum(p for _, p in monomial), str(monomial))


def _atom_order(atom) -> tuple:
    return (0, atom) if isinstance(atom, str) else (1, str(atom))


def _poly_add(a: tuple, b: tuple, scale: int = 1) -> tuple:
    terms = dict(a)
    for monomial, coefficient in b:
        terms[monomial] = terms.get(monomial, 0) + scale * coefficient
    return _normalized(terms)


def _monomial_mul(a: tuple, b: tuple) -> tuple:
    powers = dict(a)
    for atom, power in b:
        powers[atom] = powers.get(atom, 0) + power
    return tuple(sorted(powers.items(), key=lambda item: _atom_order(item[0])))


def _poly_mul(a: tuple, b: tuple) -> tuple:
    terms: dict = {}
    for ma, ca in a:
        for mb, cb in b:
            monomial = _monomial_mul(ma, mb)
            terms[monomial] = terms.get(monomial, 0) + ca * cb
    return _normalized(terms)


def _constant(poly: tuple) -> int | None:
    if not poly:
        return 0
    if len(poly) == 1 and poly[0][0] == ():
        return poly[0][1]
    return None


def _monomial_quotient(monomial: tuple, divisor: tuple) -> tuple | None:
    """monomial / divisor when the divisor's atoms all appear in it, else None."""
    powers = dict(monomial)
    for atom, power in divisor:
        if powers.get(atom, 0) < power:
            return None
        powers[atom] -= power
    return tuple(sorted(((a, p) for a, p in powers.items() if p),
                        key=lambda item: _atom_order(item[0])))


def _divide_exactly(poly: tuple, divisor: tuple) -> tuple | None:
    """poly / divisor when the divisor is a single term dividing every term of poly, or
    when poly is a single term times a divisor of several (`(16*B*N + 16*B) // (4*N + 4)` is
    `4*B`, as a reshape's -1 over a ViT's patch grid makes it)."""
    if len(divisor) != 1:
        if not poly:
            return ()
        leading_monomial, leading_coefficient = poly[0]
        for d_monomial, d_coefficient in divisor:
            quotient = _monomial_quotient(leading_monomial, d_monomial)
            if quotient is None or leading_coefficient % d_coefficient:
                continue
            candidate = ((quotient, leading_coefficient // d_coefficient),)
            if _poly_mul(candidate, divisor) == poly:
                return candidate
        return None
    (d_monomial, d_coefficient), = divisor
    terms = {}
    for monomial, coefficient in poly:
        quotient = _monomial_quotient(monomial, d_monomial)
        if quotient is None or coefficient % d_coefficient:
            return None
        terms[quotient] = coefficient // d_coefficient
    return _normalized(terms)


def _split_multiple(poly: tuple, divisor: int) -> tuple[tuple, tuple]:
    """poly as divisor*q + r, each coefficient of r in [0, divisor): q takes the whole
    multiples of divisor out of every term, so that r is never negative."""
    quotient, remainder = {}, {}
    for monomial, coefficient in poly:
        quotient[monomial], remainder[monomial] = divmod(coefficient, divisor)
    return _normalized(quotient), _normalized(remainder)


def _canonical(poly: tuple):
    constant = _constant(poly)
    if constant is not None:
        return constant
    if len(poly) == 1:
        (monomial, coefficient), = poly
        if coefficient == 1 and len(monomial) == 1:
            (atom, power), = monomial
            if power == 1 and isinstance(atom, str):
                return atom
    return DimExpr(poly)


# ---- the arithmetic ---------------------------------------------------------------------------

def canonical(dim):
    """A dim in canonical form: an int, a symbol's str, UNKNOWN or a DimExpr."""
    if dim == UNKNOWN or isinstance(dim, str) and dim:
        return dim
    return _canonical(_poly_of(dim))


def _unknown_in(*dims) -> bool:
    return any(isinstance(d, str) and d == UNKNOWN for d in dims)


def add(a, b):
    return UNKNOWN if _unknown_in(a, b) else _canonical(_poly_add(_poly_of(a), _poly_of(b)))


def sub(a, b):
    return UNKNOWN if _unknown_in(a, b) else _canonical(_poly_add(_poly_of(a), _poly_of(b), -1))


def neg(a):
    return sub(0, a)


def mul(a, b):
    return UNKNOWN if _unknown_in(a, b) else _canonical(_poly_mul(_poly_of(a), _poly_of(b)))


def product(dims):
    result = 1
    for dim in dims:
        result = mul(result, dim)
    return result


def floordiv(a, b):
    """a // b, simplified where the division is exact or leaves a constant remainder."""
    if _unknown_in(a, b):
        return UNKNOWN
    numerator, denominator = _poly_of(a), _poly_of(b)
    top, bottom = _constant(numerator), _constant(denominator)
    if bottom == 0:
        raise NotADim(f"{a} // {b} divides by zero")
    if top is not None and bottom is not None:
        return top // bottom
    exact = _divide_exactly(numerator, denominator)
    if exact is not None:
        return _canonical(exact)
    if bottom is not None and bottom > 0:
        # (c*q + r) // c is q + r // c for whole q: `(H-2)//2+1` is `H//2`.
        quotient, remainder = _split_multiple(numerator, bottom)
        return _canonical(_poly_add(quotient, _quotient_atom(remainder, bottom)))
    return _canonical(_atom(Quotient("//", numerator, denominator)))


def _quotient_atom(numerator: tuple, divisor: int) -> tuple:
    """numerator // divisor for a numerator of coefficients in [0, divisor), as a polynomial:
    0 for a number, and (a//c1)//c2 as a//(c1*c2), so that repeated halvings equal one
    division (a pyramid's `(S//2)//2` is `S//4`), and a factor common to every coefficient
    and the divisor cancels."""
    if not numerator or _constant(numerator) is not None:
        return ()  # a number below the divisor
    common = gcd(divisor, *(coefficient for _, coefficient in numerator))
    if common > 1:  # (2*B+2)//4 is (B+1)//2
        numerator = _normalized({m: c // common for m, c in numerator})
        divisor //= common
    if len(numerator) == 1:
        (monomial, coefficient), = numerator
        if coefficient == 1 and len(monomial) == 1:
            (atom, power), = monomial
            inner = _constant(atom.denominator) if isinstance(atom, Quotient) else None
            if power == 1 and inner is not None and inner > 0 and atom.kind == "//":
                return _poly_of(floordiv(DimExpr(atom.numerator), inner * divisor))
    return _atom(Quotient("//", numerator, ((((), divisor),))))


def mod(a, b):
    if _unknown_in(a, b):
        return UNKNOWN
    numerator, denominator = _poly_of(a), _poly_of(b)
    top, bottom = _constant(numerator), _constant(denominator)
    if bottom == 0:
        raise NotADim(f"{a} % {b} divides by zero")
    if top is not None and bottom is not None:
        return top % bottom
    if _divide_exactly(numerator, denominator) is not None:
        return 0
    if bottom is not None and bottom > 0:
        _, remainder = _split_multiple(numerator, bottom)  # (c*q + r) % c is r % c
        rest = _constant(remainder)
        if rest is not None:
            return rest % bottom
        numerator = remainder
    return _canonical(_atom(Quotient("%", numerator, denominator)))


def _atom(atom) -> tuple:
    return ((((atom, 1),), 1),)


def ceildiv(a, b: int):
    """a / b rounded up, for a positive number b: written as a floor division."""
    return floordiv(add(a, b - 1), b)


# ---- questions about dims ---------------------------------------------------------------------

def is_symbolic(dim) -> bool:
    """A symbol or an expression over symbols: a size known when the model runs."""
    return isinstance(dim, DimExpr) or isinstance(dim, str) and dim not in (UNKNOWN, "")


def symbols(dim) -> set[str]:
    """The symbols a dim is written with."""
    if isinstance(dim, int) or dim == UNKNOWN:
        return set()
    found = set()
    for monomial, _ in _poly_of(dim):
        for atom, _ in monomial:
            if isinstance(atom, str):
                found.add(atom)
            else:
                found |= symbols(DimExpr(atom.numerator)) | symbols(DimExpr(atom.denominator))
    return found


def is_nonnegative(dim) -> bool:
    """Whether the dim is >= 0 for every size of its symbols (each at least 1): with each
    symbol written 1 + t, a polynomial in t >= 0 with no negative coefficient whose quotients
    are of such polynomials too (`S-1` is, `S-3` and `2*S-T` are not)."""
    if isinstance(dim, int):
        return dim >= 0
    if dim == UNKNOWN:
        return False
    shifted = _poly_of(substitute(dim, {s: add(s, 1) for s in symbols(dim)}))
    return _nonnegative_at_zero(shifted) or _nonnegative_at_zero(_least_value(shifted))


def _least_value(poly: tuple) -> tuple:
    """A polynomial at most poly for every value >= 0 of its symbols, with each quotient by a
    number k replaced by its least value: N//k by (N-k+1)/k, N%k by 0 (by N/k and k-1 where
    the coefficient is negative). So `2*(S//2) - S + 1` is at least 0: the end of torch.chunk's
    last slice, 2*((S+1)//2), is at least S. A dim is a whole number, so a constant bound rounds
    up: `H//2 - 2*(H//4)` is at least -1/2, so at least 0 (a UNet's padding to its skip)."""
    terms: dict = {}
    for monomial, coefficient in poly:
        for term, value in _least_term(monomial, coefficient):
            terms[term] = terms.get(term, 0) + value
    if () in terms:
        terms[()] = ceil(terms[()])
    return _normalized(terms)


def _least_term(monomial: tuple, coefficient: int) -> list:
    (atom, power), = monomial if len(monomial) == 1 else ((None, 0),)
    divisor = _constant(atom.denominator) if isinstance(atom, Quotient) and power == 1 \
        else None
    if divisor is None or divisor <= 0 or not _nonnegative_at_zero(atom.numerator):
        return [(monomial, coefficient)]
    if atom.kind == "%":
        return [((), coefficient * (divisor - 1))] if coefficient < 0 else []
    shift = divisor - 1 if coefficient > 0 else 0
    return [(m, Fraction(coefficient * c, divisor))
            for m, c in _poly_add(atom.numerator, (((), shift),) if shift else (), -1)]


def _nonnegative_at_zero(poly: tuple) -> bool:
    """Whether poly >= 0 for every value >= 0 of its symbols."""
    return all(coefficient >= 0 and all(_nonnegative_atom(atom) for atom, _ in monomial)
               for monomial, coefficient in poly)


def _nonnegative_atom(atom) -> bool:
    if isinstance(atom, str):
        return True
    if atom.kind == "%":  # Python's modulo takes the divisor's sign
        return _nonnegative_at_zero(atom.denominator)
    return _nonnegative_at_zero(atom.numerator) and _nonnegative_at_zero(atom.denominator)


def at_least(a, b) -> bool:
    """Whether a >= b whatever sizes the symbols have."""
    return not _unknown_in(a, b) and is_nonnegative(sub(a, b))


def provably_different(a, b) -> bool:
    """Whether a and b differ for every size of their symbols: one exceeds the other
    (`S+1` and `S`, `6*B` and `4*B`)."""
    return at_least(a, add(b, 1)) or at_least(b, add(a, 1))


def evaluate(dim, env: dict) -> int:
    """The dim's size when each symbol has the size `env` gives it; KeyError names a symbol
    the env lacks."""
    return compute(dim, _Sizes(env))


class _Sizes:
    """compute's arithmetic on numbers: a dim's size."""

    def __init__(self, env: dict):
        self.symbol = env.__getitem__

    number = staticmethod(int)
    add = staticmethod(int.__add__)
    mul = staticmethod(int.__mul__)
    floordiv = staticmethod(int.__floordiv__)
    mod = staticmethod(int.__mod__)


def compute(dim, arithmetic):
    """The dim computed with `arithmetic`'s number(n), symbol(name), add(a, b), mul(a, b),
    floordiv(a, b) and mod(a, b): how a backend builds code that computes a dim at run time
    (the ONNX exporter's Shape, Gather, Add and Mul nodes)."""
    if isinstance(dim, int):
        return arithmetic.number(dim)
    if isinstance(dim, str):
        return arithmetic.symbol(dim)
    return _compute_poly(dim.terms, arithmetic)


def _compute_poly(poly: tuple, arithmetic):
    total = None
    for monomial, coefficient in poly:
        term = arithmetic.number(coefficient) if coefficient != 1 or not monomial else None
        for atom, power in monomial:
            if isinstance(atom, str):
                factor = arithmetic.symbol(atom)
            else:
                numerator = _compute_poly(atom.numerator, arithmetic)
                denominator = _compute_poly(atom.denominator, arithmetic)
                divide = arithmetic.floordiv if atom.kind == "//" else arithmetic.mod
                factor = divide(numerator, denominator)
            for _ in range(power):
                term = factor if term is None else arithmetic.mul(term, factor)
        total = term if total is None else arithmetic.add(total, term)
    return arithmetic.number(0) if total is None else total


def substitute(dim, env: dict):
    """The dim with the symbols `env` gives replaced by their values (dims or ints)."""
    if dim == UNKNOWN:
        return dim
    return compute(dim, _Substitution(env))


class _Substitution:
    """compute's arithmetic on dims, each symbol replaced where `env` says."""

    def __init__(self, env: dict):
        self.env = env

    def symbol(self, name):
        return self.env.get(name, name)

    number = staticmethod(int)
    add = staticmethod(add)
    mul = staticmethod(mul)
    floordiv = staticmethod(floordiv)
    mod = staticmethod(mod)


def solve(dim, size: int, env: dict) -> tuple[str, int] | None:
    """The one symbol of `dim` that `env` leaves unbound and its size, when `dim` is linear
    in it (`2*B+1` of size 7 gives ("B", 3)); None when no size of at least 1 solves it."""
    unbound = symbols(dim) - set(env)
    if len(unbound) != 1 or isinstance(dim, int):
        return None
    symbol, = unbound
    try:
        at_zero = substitute(dim, {**env, symbol: 0})
        at_one = substitute(dim, {**env, symbol: 1})
        if not isinstance(at_zero, int) or not isinstance(at_one, int):
            return None
        slope = at_one - at_zero
        if slope == 0 or (size - at_zero) % slope:
            return None
        value = (size - at_zero) // slope
        if value < 1 or substitute(dim, {**env, symbol: value}) != size:
            return None  # no size, or not linear in the symbol after all
    except NotADim:  # a division by a bound symbol's zero on the way
        return None
    return symbol, value


# ---- text -------------------------------------------------------------------------------------

def text(dim, name=str) -> str:
    """The dim as Python would write it, each symbol written as name(symbol): code that
    computes the dim from variables holding the symbols' sizes."""
    if isinstance(dim, int):
        return str(dim)
    return _poly_text(_poly_of(dim), name)


def _monomial_text(monomial: tuple, coefficient: int, name) -> str:
    """A term of a positive coefficient: `2*B*H`, `B`, `3`."""
    factors = [name(atom) if isinstance(atom, str) else atom.text(name)
               for atom, power in monomial for _ in range(power)]
    if coefficient != 1 or not factors:
        factors.insert(0, str(coefficient))
    if len(factors) == 1:
        return factors[0]
    # `2*((S-1)//2)`: a quotient among factors keeps its own parentheses.
    return "*".join(f"({f})" if "/" in f or "%" in f else f for f in factors)


def _poly_text(poly: tuple, name=str) -> str:
    if not poly:
        return "0"
    parts = []
    for index, (monomial, coefficient) in enumerate(poly):
        text = _monomial_text(monomial, abs(coefficient), name)
        if coefficient < 0 and not index and ("/" in text or "%" in text):
            text = f"({text})"  # a leading minus binds tighter than // and %
        parts.append(("-" if coefficient < 0 else "+" if index else "") + text)
    return "".join(parts)


def _grouped(poly: tuple, name) -> str:
    """A quotient's side, in parentheses unless it is a number or a bare symbol."""
    simple = _canonical(poly)
    if isinstance(simple, str) or isinstance(simple, int) and simple >= 0:
        return _poly_text(poly, name)
    return f"({_poly_text(poly, name)})"


_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_][A-Za-z_0-9.]*)|(//|[-+*/%()]))")


def parse(text: str):
    """A dim from its text: `B`, `64`, `B*H`, `(S-1)//2+1`. A name may hold dots (ONNX dim
    names such as `batch.size` do). `/` reads as floor division: dims are sizes."""
    tokens = _tokens(text)
    position, dim = _parse_sum(tokens, 0, text)
    if position != len(tokens):
        raise NotADim(f"'{text}' is not a dim expression (unexpected '{tokens[position]}')")
    return dim


def _tokens(text: str) -> list[str]:
    tokens, position = [], 0
    stripped = text.strip()
    while position < len(stripped):
        match = _TOKEN.match(stripped, position)
        if match is None or match.end() == position:
            raise NotADim(f"'{text}' is not a dim expression")
        tokens.append(match.group(match.lastindex))
        position = match.end()
    if not tokens:
        raise NotADim("an empty text is not a dim")
    return tokens


def _parse_sum(tokens, position, text):
    position, total = _parse_product(tokens, position, text)
    while position < len(tokens) and tokens[position] in "+-":
        operator = tokens[position]
        position, term = _parse_product(tokens, position + 1, text)
        total = add(total, term) if operator == "+" else sub(total, term)
    return position, total


def _parse_product(tokens, position, text):
    position, result = _parse_factor(tokens, position, text)
    while position < len(tokens) and tokens[position] in ("*", "//", "/", "%"):
        operator = tokens[position]
        position, factor = _parse_factor(tokens, position + 1, text)
        if operator == "*":
            result = mul(result, factor)
        elif operator == "%":
            result = mod(result, factor)
        else:
            result = floordiv(result, factor)
    return position, result


def _parse_factor(tokens, position, text):
    if position >= len(tokens):
        raise NotADim(f"'{text}' ends early")
    token = tokens[position]
    if token == "-":
        position, factor = _parse_factor(tokens, position + 1, text)
        return position, neg(factor)
    if token == "(":
        position, inner = _parse_sum(tokens, position + 1, text)
        if position >= len(tokens) or tokens[position] != ")":
            raise NotADim(f"'{text}' has an unclosed '('")
        return position + 1, inner
    if token.isdigit():
        return position + 1, int(token)
    if token[0].isalpha() or token[0] == "_":
        return position + 1, token
    raise NotADim(f"'{text}' is not a dim expression (unexpected '{token}')")
