"""Run a function the moment a module finishes importing, without importing it ourselves.

``import dfbatch`` gives DataFrames (pandas, Dask) a ``.llm`` but must not load pandas or dask:
``dfbatch run`` never touches a DataFrame, and pandas with pyarrow costs ~95 MB. So a front end
asks :func:`when_imported` to register its accessor: at once when the module is loaded (the
notebook case), else the moment it finishes loading, by wrapping its loader (the post-import
hook that wrapt and PEP 369 describe). A process that never imports the module never pays.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType

_lock = threading.Lock()
_hooks: dict[str, _Hook] = {}


class _Hook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the module's own loader so that ``then`` follows it."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        self.remove()  # one shot: the lookup below goes to the ordinary finders
        spec = None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if find is not None and (spec := find(fullname, path, target)) is not None:
                break
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        then = self.then

        def exec_then(module: ModuleType) -> None:
            exec_module(module)
            then()

        spec.loader.exec_module = exec_then  # type: ignore[method-assign]
        return spec

    def remove(self) -> None:
        with _lock:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            if _hooks.get(self.name) is self:
                del _hooks[self.name]


def when_imported(name: str, then: Callable[[], None]) -> None:
    """Call ``then()`` now if module ``name`` is loaded, else right after it is."""
    with _lock:
        if name not in sys.modules:
            if name not in _hooks:
                hook = _hooks[name] = _Hook(name, then)
                sys.meta_path.insert(0, hook)
            return
    then()
