"""Scopes of names in the model language: a model, a function, a layer's body, a loop body."""
from __future__ import annotations

from ..ir import ChainruleError, SourceLoc
from .expressions import suggest


class Scope:
    """Names visible in a model, function, layer's body or loop body.

    In a model or a function, `=` may assign a name again: a new value under the same name,
    which the lines after it read (`x = relu(x)`); a let, a param, a loop variable or a
    function is bound once. A loop body's scope sees the names around it. Assigning one of
    those in the body rebinds it for the next iteration and for the code after the loop: it is
    `carried`, and assigned once per iteration. Every other name assigned in the body is local
    to one iteration."""

    def __init__(self, kind: str, parent: Scope | None = None):
        self.kind = kind
        self.parent = parent
        self.bindings: dict[str, object] = {}
        self.locs: dict[str, SourceLoc] = {}
        self.carried: list[str] = []
        self.layer = None  # in a layer's body: the LayerInstance it makes (layers.py)

    def bind(self, name: str, value, loc: SourceLoc, *, again: bool = False) -> None:
        """Bind `name` here; `again`: an assignment, which may rebind outside a loop body."""
        if name in self.bindings and (not again or self.kind == "loop"):
            rule = ("a name is assigned once per iteration" if self.kind == "loop"
                    else "a name is assigned once")
            raise redefinition(f"'{name}'", rule, loc, self.locs[name])
        if self.parent is not None and self.parent.owner(name) is not None:
            self.carried.append(name)
        self.bindings[name] = value
        self.locs[name] = loc

    def owner(self, name: str) -> Scope | None:
        """The nearest scope, this one or one around it, where `name` is bound."""
        scope = self
        while scope is not None and name not in scope.bindings:
            scope = scope.parent
        return scope

    def lookup(self, name: str, loc: SourceLoc):
        owner = self.owner(name)
        if owner is not None:
            return owner.bindings[name]
        raise ChainruleError(f"unknown name '{name}'{suggest(name, self.visible())}", loc)

    def visible(self) -> list[str]:
        names, scope = [], self
        while scope is not None:
            names += scope.bindings
            scope = scope.parent
        return names


def redefinition(what: str, rule: str, loc: SourceLoc, first: SourceLoc) -> ChainruleError:
    return ChainruleError(f"{what} is already defined (at line {first.line}); {rule}", loc,
                          ((first, "first defined here"),))
