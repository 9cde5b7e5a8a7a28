"""Embedding responses read into float32 vectors: base64 (strict and lenient), floats, order."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from dfbatch.engine.answers import decode_vector, parse_embeddings
from dfbatch.engine.types import Outcome, Request
from dfbatch.jobs.embed import EmbedJob


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


@pytest.mark.parametrize("encode", [b64, lambda v: v.tolist()], ids=["base64", "floats"])
def test_items_are_joined_on_their_index_not_their_order(encode) -> None:  # type: ignore[no-untyped-def]
    vs = [np.full(3, i, "<f4") for i in range(3)]
    data = [{"index": i, "embedding": encode(vs[i])} for i in (2, 0, 1)]
    positions, matrix = parse_embeddings({"data": data}, 3)
    assert positions == [2, 0, 1]
    assert matrix.dtype == np.float32 and matrix.shape == (3, 3)
    assert np.array_equal(matrix[:, 0], [2.0, 0.0, 1.0])


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


def test_a_missing_item_is_absent() -> None:
    positions, matrix = parse_embeddings({"data": [{"index": 1, "embedding": [1.0]}]}, 2)
    assert positions == [1] and matrix.shape == (1, 1)


def _job_with_two_requests() -> tuple[EmbedJob, list[Request]]:
    job = EmbedJob.plan(["a", "b", "c", "d"], model="m", dimensions=None, truncate=False)
    job.count_tokens()
    return job, list(job.requests(batch_size=2, encoding_format="base64"))


def _response(vectors: list[np.ndarray], indices: list[int]) -> dict:
    return {
        "data": [{"index": i, "embedding": b64(v)} for v, i in zip(vectors, indices, strict=True)]
    }


def test_receive_a_response_missing_an_input_fails_that_row_only() -> None:
    job, (first, second) = _job_with_two_requests()
    v = [np.full(4, x, "<f4") for x in range(4)]
    assert job.receive(Outcome(first, _response([v[1]], [1])), None, []) == (2, 1)
    assert job.receive(Outcome(second, _response([v[3], v[2]], [1, 0])), None, []) == (2, 0)
    column = job.column()
    assert column[0] is None and "no embedding for this input" in job.errors[0]
    assert [float(column[r][0]) for r in (1, 2, 3)] == [1.0, 2.0, 3.0]


def test_receive_vectors_of_another_length_than_earlier_ones_fail_their_rows() -> None:
    job, (first, second) = _job_with_two_requests()
    short, long = [np.ones(4, "<f4")] * 2, [np.ones(8, "<f4")] * 2
    assert job.receive(Outcome(first, _response(short, [0, 1])), None, []) == (2, 0)
    assert job.receive(Outcome(second, _response(long, [0, 1])), None, []) == (2, 2)
    assert "8 dimensions where others had 4" in job.errors[2]
    assert 0 not in job.errors and job.column()[0] is not None
