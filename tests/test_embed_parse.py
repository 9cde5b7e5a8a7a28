"""Embedding responses read into float32 vectors: base64 (strict and lenient), floats, order."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from dfbatch._embed import decode_vector, parse_embeddings


def b64(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, "<f4").tobytes()).decode()


def test_base64_decodes_bit_for_bit_with_and_without_stray_line_breaks() -> None:
    v = np.random.default_rng(0).standard_normal(7).astype("<f4")
    text = b64(v)
    assert np.array_equal(decode_vector(text), v)
    wrapped = "\n".join(text[i : i + 8] for i in range(0, len(text), 8))  # MIME-style
    assert np.array_equal(decode_vector(wrapped), v)


def test_float_lists_and_bad_values() -> None:
    assert decode_vector([0.5, 1.0]).dtype == np.float32
    with pytest.raises(ValueError, match="whole number"):
        decode_vector(base64.b64encode(b"abcde").decode())
    with pytest.raises(ValueError, match="unexpected type"):
        decode_vector(3)


def test_items_are_joined_on_their_index_not_their_order() -> None:
    vs = [np.full(3, i, "<f4") for i in range(3)]
    data = [{"index": i, "embedding": b64(vs[i])} for i in (2, 0, 1)]
    out = parse_embeddings({"data": data}, 3)
    assert [float(v[0]) for v in out] == [0.0, 1.0, 2.0]  # type: ignore[index]


@pytest.mark.parametrize(
    ("response", "message"),
    [
        ({}, "no 'data' list"),
        ({"data": [{"index": 5, "embedding": [1.0]}]}, "out of range"),
        (
            {"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1, 2]}]},
            "different",
        ),
    ],
)
def test_malformed_responses_are_refused(response: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_embeddings(response, 2)


def test_a_missing_item_is_none() -> None:
    out = parse_embeddings({"data": [{"index": 1, "embedding": [1.0]}]}, 2)
    assert out[0] is None and out[1] is not None
