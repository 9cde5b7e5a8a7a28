"""Label/value tables as text and as HTML: how the estimate and the run report show themselves."""

from __future__ import annotations

import html
from collections.abc import Sequence


def text_table(title: str, rows: Sequence[tuple[str, str]]) -> str:
    """``title`` then one aligned ``label  value`` line per row.

    >>> print(text_table("t", [("a", "1"), ("bbb", "2")]))
    t
      a    1
      bbb  2
    """
    width = max((len(k) for k, _ in rows), default=0)
    return title + "\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def html_table(title: str, rows: Sequence[tuple[str, str]]) -> str:
    """The same rows as an HTML table captioned ``title`` (labels and values escaped)."""
    cells = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
        f"<td style='text-align:right'>{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return f"<table><caption>{html.escape(title)}</caption>{cells}</table>"
