"""Memoisation for the handlers: keys are the function's own arguments, never spelled by hand.

``@memoize(size)`` caches a function of ``(owner, *args)`` per owner (the :class:`AppState`,
held weakly, so a state's entries go with it) in a small LRU keyed on the remaining arguments,
bound to the signature with defaults applied (``f(x)`` and ``f(x, cf=None)`` share an entry).
Every key argument must be hashable (tuples, frozen dataclasses, strings, numbers);
``ignore`` names arguments that do not change the value (a progress callback).
"""

from __future__ import annotations

import functools
import inspect
import threading
import weakref
from collections import OrderedDict


class LRU(OrderedDict):
    """A small least-recently-used cache; safe to share between Gradio's worker threads
    (the computation itself runs outside the lock, so two threads may compute one key)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self._lock = threading.Lock()

    def get_or(self, key, make):
        with self._lock:
            if key in self:
                self.move_to_end(key)
                return self[key]
        value = make()
        with self._lock:
            self[key] = value
            while len(self) > self.size:
                self.popitem(last=False)
        return value


def memoize(size: int = 128, ignore: tuple[str, ...] = ()):
    def decorate(fn):
        signature = inspect.signature(fn)
        names = [n for n in list(signature.parameters)[1:] if n not in ignore]
        caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # owner -> LRU
        lock = threading.Lock()

        @functools.wraps(fn)
        def cached(owner, *args, **kwargs):
            bound = signature.bind(owner, *args, **kwargs)
            bound.apply_defaults()
            key = tuple(bound.arguments[n] for n in names)
            with lock:
                lru = caches.get(owner)
                if lru is None:
                    lru = caches[owner] = LRU(size)
            return lru.get_or(key, lambda: fn(*bound.args, **bound.kwargs))

        cached.cache_size = size
        return cached
    return decorate
