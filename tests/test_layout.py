"""The house: the rooms' docstrings, and the accessor's twins that state each option once."""

from __future__ import annotations

import importlib
import inspect

import pytest

ROOMS = [
    "dfbatch.engine",
    "dfbatch.cache",
    "dfbatch.batch",
    "dfbatch.coord",
    "dfbatch.jobs",
    "dfbatch.frames",
    "dfbatch.dask",
    "dfbatch.cli",
]


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_says_what_it_does_and_what_it_may_import(room: str) -> None:
    """Every subpackage's docstring names its job, what it may import, and its in and out."""
    doc = importlib.import_module(room).__doc__ or ""
    assert "May import" in doc
    assert "In:" in doc and "out:" in doc


def test_sync_twins_show_the_async_methods_signature() -> None:
    """embed/complete state no option of their own: their signature is aembed's/acomplete's."""
    from dfbatch.frames.accessor import LlmFrameAccessor as Frame
    from dfbatch.frames.accessor import LlmSeriesAccessor as Series

    assert inspect.signature(Frame.embed) == inspect.signature(Frame.aembed)
    assert inspect.signature(Frame.complete) == inspect.signature(Frame.acomplete)
    assert Frame.embed.__name__ == "embed" and "float32 vectors" in (Frame.embed.__doc__ or "")
    series_embed = inspect.signature(Series.embed).parameters
    assert "column" not in series_embed and "dimensions" in series_embed
    series_complete = inspect.signature(Series.complete).parameters
    assert series_complete["prompt"].default == "{}" and "_positional" not in series_complete
    assert "max_tokens" in series_complete
