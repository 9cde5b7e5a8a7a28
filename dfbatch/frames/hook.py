"""Register the ``.llm`` accessors without importing pandas ourselves.

``import dfbatch`` must give every DataFrame a ``.llm``; but ``dfbatch run`` never touches a
DataFrame, and pandas (with the pyarrow it loads) costs ~95 MB of the 150 MB a million-line run
may use. So: when pandas is already imported (the notebook case) register at once; otherwise
register the moment pandas finishes importing, by wrapping its loader — the post-import hook that
wrapt and PEP 369 describe. A process that never imports pandas never pays for it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import warnings
from collections.abc import Sequence
from types import ModuleType

_lock = threading.Lock()


def _register() -> None:
    try:
        from . import accessor  # noqa: F401  (its import registers the accessors)
    except Exception as exc:  # a dfbatch bug must not break the user's `import pandas`
        warnings.warn(f"dfbatch could not register df.llm: {exc!r}", RuntimeWarning, stacklevel=2)


class _PandasImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps pandas' own loader so that registration follows its import."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "pandas":
            return None
        _remove_hook()  # one shot: the lookup below goes to the ordinary finders
        spec = importlib.util.find_spec("pandas")
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            _register()

        loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


_hook = _PandasImportHook()


def _remove_hook() -> None:
    with _lock:
        if _hook in sys.meta_path:
            sys.meta_path.remove(_hook)


def register_accessor_with_pandas() -> None:
    """Register ``.llm`` now if pandas is loaded, else as soon as something imports it."""
    with _lock:
        if "pandas" not in sys.modules:
            if _hook not in sys.meta_path:
                sys.meta_path.insert(0, _hook)
            return
    _register()
