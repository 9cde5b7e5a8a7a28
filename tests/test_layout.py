"""The house: the rooms' docstrings, and the accessor's twins that state each option once."""

from __future__ import annotations

import importlib
import inspect

import pytest

ROOMS = ["dfbatch.engine", "dfbatch.cache", "dfbatch.jobs", "dfbatch.frames", "dfbatch.cli"]


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_says_what_it_does_and_what_it_may_import(room: str) -> None:
    """Every subpackage's docstring names its job, what it may import, and its in and out."""
    doc = importlib.import_module(room).__doc__ or ""
    assert "May import" in doc
    assert "In:" in doc and "out:" in doc
