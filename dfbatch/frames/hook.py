"""Register the ``.llm`` accessors when pandas is imported, without importing it ourselves.

``import dfbatch`` must give every DataFrame a ``.llm``; but ``dfbatch run`` never touches a
DataFrame, and pandas (with the pyarrow it loads) costs ~95 MB of the 150 MB a million-line run
may use: registration waits for pandas (see :mod:`dfbatch._post_import`).
"""

from __future__ import annotations

import warnings

from .._post_import import when_imported


def _register() -> None:
    try:
        from . import accessor  # noqa: F401  (its import registers the accessors)
    except Exception as exc:  # a dfbatch bug must not break the user's `import pandas`
        warnings.warn(f"dfbatch could not register df.llm: {exc!r}", RuntimeWarning, stacklevel=2)


def register_accessor_with_pandas() -> None:
    """Register ``.llm`` now if pandas is loaded, else as soon as something imports it."""
    when_imported("pandas", _register)
