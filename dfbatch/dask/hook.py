"""Register ``.llm`` on Dask frames without importing dask ourselves (as ``frames.hook`` does
for pandas): at once when ``dask.dataframe`` is loaded, else the moment it finishes loading."""

from __future__ import annotations

import warnings

from .._post_import import when_imported


def _register() -> None:
    try:
        from . import accessor  # noqa: F401  (its import registers the accessors)
    except Exception as exc:  # a dfbatch bug must not break the user's `import dask.dataframe`
        warnings.warn(f"dfbatch could not register ddf.llm: {exc!r}", RuntimeWarning, stacklevel=2)


def register_accessor_with_dask() -> None:
    """Register ``.llm`` on Dask frames now if dask.dataframe is loaded, else when it is."""
    when_imported("dask.dataframe", _register)
