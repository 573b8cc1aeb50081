"""Layers: definitions that own params, instances that namespace them, calls of their forward.

An instance's body is lowered once, where `layer NAME = Def(args)` stands: its params join the
model's under the instance's path (`blocks.1.fc2.weight`, PyTorch's state_dict key style) and
its names (arguments, lets, params, nested instances) live in a scope of its own. Calling the
instance inlines its forward as a function whose free names are read from that scope.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from lark import Tree

from ..ir import ChainruleError, SourceLoc, Value
from .builtins import NO_DEFAULT
from .expressions import is_dim, suggest
from .scan_loops import ScanRefused
from .scope import Scope, redefinition
from .weak import Weak

# What a layer's body holds besides `if`: the rest (computing with tensors) is forward's.
LAYER_BODY_STATEMENTS = frozenset({"param_stmt", "state_stmt", "let_stmt", "layer_stmt",
                                   "layer_list_stmt", "forward_stmt", "if_stmt"})


@dataclass
class LayerDef:
    name: str
    params: list  # [(name, default expression tree or None)]
    body: Tree
    loc: SourceLoc


@dataclass
class LayerInstance:
    """One instance: its path (`blocks.1`), its scope, and its forward once the body names it."""
    definition: LayerDef
    path: str
    scope: Scope
    forward: object = None  # a Function, whose free names the instance's scope holds


@dataclass
class LayerList:
    path: str
    items: list = field(default_factory=list)


def saved_name(name: str) -> str:
    """A layer's param or instance is saved under its name less one trailing underscore:
    `param bias_` beside an argument `bias` is saved as `bias`, as PyTorch's Linear names it,
    and `layer downsample_` beside an argument `downsample` as `downsample`."""
    return name[:-1] if name.endswith("_") and len(name) > 1 else name


class LayerLowering:
    """Layer definitions, instances and calls, mixed into the Lowerer."""

    def declare_layer(self, tree: Tree) -> None:
        name_token, fparams, body = tree.children
        name = str(name_token)
        self.check_new_callable(name, "layer", self.loc(name_token))
        forwards = [s for s in body.children if s.data == "forward_stmt"]
        if len(forwards) != 1:
            where = self.loc(forwards[1]) if forwards else self.loc(name_token)
            raise ChainruleError(f"layer '{name}' defines one forward(...) {{ ... }} in its "
                                 f"body, found {len(forwards)}", where)
        params = self.formal_params(fparams)
        self.layers[name] = LayerDef(name, params, body, self.loc(name_token))

    def layer_stmt(self, tree: Tree, scope: Scope) -> None:
        name_token, new = tree.children
        path = self.check_layer_place(scope, str(name_token), self.loc(name_token))
        instance = self.instantiate(new, path, scope)
        scope.bind(str(name_token), instance, self.loc(name_token))

    def layer_list_stmt(self, tree: Tree, scope: Scope) -> None:
        name_token, *news = tree.children
        path = self.check_layer_place(scope, str(name_token), self.loc(name_token))
        items = [self.instantiate(new, f"{path}.{i}", scope) for i, new in enumerate(news)]
        scope.bind(str(name_token), LayerList(path, items), self.loc(name_token))

    def check_layer_place(self, scope: Scope, name: str, loc: SourceLoc) -> str:
        """The path of an instance made in a model or a layer's body under a name, and a path,
        not yet taken there (checked first: its params would take the earlier instance's
        names)."""
        if scope.kind not in ("model", "layer"):
            raise ChainruleError(f"layers are instantiated in a model or a layer's body, not "
                                 f"in a {scope.kind}", loc)
        if name in scope.bindings:
            raise redefinition(f"'{name}'", "a layer is named once", loc, scope.locs[name])
        path = self.path_in(scope, saved_name(name))
        taken = next((other for other, bound in scope.bindings.items()
                      if self.is_layer(bound) and bound.path == path), None)
        if taken is not None:
            raise redefinition(f"a layer saved as '{path}'", "a layer's name (less a trailing "
                               "'_') is unique where it is made", loc, scope.locs[taken])
        return path

    def path_in(self, scope: Scope, name: str) -> str:
        return f"{scope.layer.path}.{name}" if scope.kind == "layer" else name

    def instantiate(self, new: Tree, path: str, scope: Scope) -> LayerInstance:
        """The instance `new` (`Def(args)`) makes at `path`, its params declared."""
        name_token, args = new.children
        name, loc = str(name_token), self.loc(new)
        if name not in self.layers:
            message = (f"'{name}' is a function, not a layer" if name in self.functions
                       else f"unknown layer '{name}'{suggest(name, self.layers)}")
            raise ChainruleError(message, self.loc(name_token))
        definition = self.layers[name]
        if name in self.layer_stack:
            chain = " -> ".join(self.layer_stack[self.layer_stack.index(name):] + [name])
            raise ChainruleError(f"layer '{name}' contains itself ({chain})", loc)
        positional, keywords = self.call_arguments(args, scope)
        for value, arg_loc in positional + list(keywords.values()):
            if isinstance(value, (Value, Weak)):
                raise ChainruleError("a layer's arguments are known when compiling (numbers, "
                                     "bools, lets, dims), not tensors", arg_loc)
        inner = Scope("layer")
        defaults = {p: NO_DEFAULT if d is None else self.expr(d, inner)
                    for p, d in definition.params}
        bound = self.bind_arguments(name, [p for p, _ in definition.params], defaults,
                                    positional, keywords, loc)
        for param, value in bound.items():
            inner.bind(param, value, definition.loc)
        instance = LayerInstance(definition, path, inner)
        inner.layer = instance
        self.layer_stack.append(name)
        try:
            with self.nested("layer", loc):
                self.lower_block(definition.body, inner)
        except ChainruleError as error:
            if error.loc == loc:
                raise
            note = (loc, f"in layer '{path}' ({name}) made here")
            raise ChainruleError(error.message, error.loc, error.notes + (note,)) from None
        finally:
            self.layer_stack.pop()
        return instance

    def forward_stmt(self, tree: Tree, scope: Scope) -> None:
        fparams, body = tree.children
        loc = self.loc(tree)
        if scope.kind != "layer":
            raise ChainruleError(f"forward(...) is defined in a layer's body, not in a "
                                 f"{scope.kind}", loc)
        instance = scope.layer
        if instance.forward is not None:  # a second one, in an if's branch
            raise ChainruleError(f"layer '{instance.definition.name}' defines one forward",
                                 loc)
        instance.forward = self.make_function(instance.path, self.formal_params(fparams), body,
                                              loc, enclosing=scope)

    def layer_param_name(self, scope: Scope, name: str, loc: SourceLoc) -> str:
        """The model-wide name of a param declared in a layer's body."""
        key = f"{scope.layer.path}.{saved_name(name)}"
        taken = next((p for p in self.graph.params if p.value.name == key), None)
        if taken is not None:
            raise redefinition(f"a param saved as '{key}'", "a param's name (less a trailing "
                               "'_') is unique in its layer", loc, taken.loc)
        return key

    def call_arguments(self, args, scope: Scope):
        """gather_arguments, run outside an expression: (positional, keywords)."""
        pending, value = self.gather_arguments(args), None
        try:
            while True:
                value = self.expr(pending.send(value), scope)
        except StopIteration as finished:
            return finished.value

    @staticmethod
    def is_layer(value) -> bool:
        return isinstance(value, (LayerInstance, LayerList))

    @staticmethod
    def layer_used_as_value(name: str, layer, loc: SourceLoc) -> ChainruleError:
        if isinstance(layer, LayerList):
            return ChainruleError(f"'{name}' is a list of layers, not a value; call one of "
                                  f"them: {name}[i](x)", loc)
        return ChainruleError(f"'{name}' is a layer, not a value; call it: {name}(x)", loc)

    def call_layer_named(self, name: str, layer, positional, keywords, loc):
        if isinstance(layer, LayerList):
            raise ChainruleError(f"'{name}' is a list of layers; call one of them: "
                                 f"{name}[i](x)", loc)
        return self.call_function(layer.forward, positional, keywords, loc, layer.path)

    def x_item_call(self, tree: Tree, scope: Scope):
        """`blocks[i](h)`: the i-th layer of a list, called; i is known when compiling."""
        base_tree, *items, args = tree.children
        loc = self.loc(tree)
        if base_tree.data != "name":
            raise ChainruleError("only an item of a list of layers is called this way "
                                 "(blocks[i](x))", loc)
        name = str(base_tree.children[0])
        layers = scope.lookup(name, self.loc(base_tree))
        if not isinstance(layers, LayerList):
            raise ChainruleError(f"'{name}' is not a list of layers; only an item of one is "
                                 f"called this way (blocks[i](x))", self.loc(base_tree))
        if len(items) != 1 or (isinstance(items[0], Tree)
                               and items[0].data in ("slice_range", "ellipsis")):
            raise ChainruleError(f"'{name}' takes one integer index", loc)
        index = yield items[0]
        if is_dim(index):
            raise ScanRefused(f"the index of the layer list '{name}' is known when compiling; "
                              f"here it changes with a loop that is not unrolled "
                              f"(--loops unroll)", self.loc(items[0]))
        if isinstance(index, bool) or not isinstance(index, int):
            raise ChainruleError(f"the index of the layer list '{name}' is an integer known "
                                 f"when compiling", self.loc(items[0]))
        if not -len(layers.items) <= index < len(layers.items):
            raise ChainruleError(f"index {index} is out of range for the {len(layers.items)} "
                                 f"layers of '{name}'", self.loc(items[0]))
        positional, keywords = yield from self.gather_arguments(args)
        item = layers.items[index]
        return self.call_function(item.forward, positional, keywords, loc, item.path)
