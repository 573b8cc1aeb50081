"""Pausing Python's cyclic garbage collector while a graph is being built.

Compiling allocates many small objects (values, nodes, types) that all live until it returns.
The collector's full passes rescan every one of them, ever more often as the graph grows, which
made compile time grow faster than the graph; nothing compiled here forms cycles that need it.
"""
from __future__ import annotations

import functools
import gc


def gc_paused(fn):
    """Run `fn` with the cyclic collector off (restored afterwards, also on errors)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()
    return wrapper
