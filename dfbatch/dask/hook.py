"""Register ``.llm`` on Dask frames without importing dask ourselves (as ``frames.hook`` does
for pandas): at once when ``dask.dataframe`` is loaded, else the moment it finishes loading."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
import warnings
from collections.abc import Sequence
from types import ModuleType

_MODULE = "dask.dataframe"
_lock = threading.Lock()


def _register() -> None:
    try:
        from . import accessor  # noqa: F401  (its import registers the accessors)
    except Exception as exc:  # a dfbatch bug must not break the user's `import dask.dataframe`
        warnings.warn(f"dfbatch could not register ddf.llm: {exc!r}", RuntimeWarning, stacklevel=2)


class _DaskImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps dask.dataframe's own loader so registration follows it."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _MODULE:
            return None
        _remove_hook()
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            _register()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


_hook = _DaskImportHook()


def _remove_hook() -> None:
    with _lock:
        if _hook in sys.meta_path:
            sys.meta_path.remove(_hook)


def register_accessor_with_dask() -> None:
    """Register ``.llm`` on Dask frames now if dask.dataframe is loaded, else when it is."""
    with _lock:
        if _MODULE not in sys.modules:
            if _hook not in sys.meta_path:
                sys.meta_path.insert(0, _hook)
            return
    _register()
