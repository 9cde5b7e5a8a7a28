"""The response cache: keys, durable round trips, damage, other processes, kill -9."""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from dfbatch import ApiConfig, ConfigurationError
from dfbatch.cache.store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    ResponseCache,
    default_cache_path,
    embedding_digests,
    embedding_key,
    parse_age,
    request_key,
)
from dfbatch.engine import constants as C

BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
    ],
    "temperature": 0,
    "max_tokens": 5,
}
RESPONSE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21},
}


class FakeClock:
    """A clock the test moves by assignment."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "cache.sqlite"


def child(code: str, *args: str, **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    """Run ``code`` in a fresh Python process (not a fork: its own SQLite connections)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def write_store(path: Path, n: int, *, text: str = "x" * 400) -> None:
    with ResponseCache(path) as cache:
        for i in range(n):
            cache.put(f"k{i}", {"i": i, "text": text}, model="m")


# -- keys -------------------------------------------------------------------------------------


def test_request_key_ignores_api_key_and_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key depends on what is asked, never on the API key, the host or credentials in a URL."""
    key = request_key("/chat/completions", BODY)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-other")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://elsewhere/v1")
    assert request_key("/chat/completions", BODY) == key
    assert request_key("https://user:pw@host.example/chat/completions?api-key=x", BODY) == key


def test_request_key_is_canonical() -> None:
    """Field order and the spelling of the endpoint do not change the key."""
    shuffled = {k: BODY[k] for k in reversed(BODY)}
    shuffled["messages"] = [{"content": m["content"], "role": m["role"]} for m in BODY["messages"]]
    key = request_key("/chat/completions", BODY)
    for endpoint in ("chat/completions", "/chat/completions/", " /chat/completions"):
        assert request_key(endpoint, shuffled) == key
    assert len(key) == 64 and int(key, 16) >= 0


@pytest.mark.parametrize(
    ("endpoint", "change"),
    [
        ("/completions", {}),
        ("/chat/completions", {"model": "gpt-4o"}),
        ("/chat/completions", {"temperature": 1}),
        ("/chat/completions", {"max_tokens": 6}),
        ("/chat/completions", {"messages": [{"role": "user", "content": "Capital of Spain?"}]}),
    ],
)
def test_request_key_depends_on_endpoint_and_body(endpoint: str, change: dict) -> None:
    """Another endpoint, model or any body field gives another key."""
    assert request_key(endpoint, {**BODY, **change}) != request_key("/chat/completions", BODY)


def test_request_key_numpy_values_hash_like_python() -> None:
    """Numpy scalars from DataFrame cells give the key of the Python numbers they equal."""
    assert request_key("/chat/completions", {**BODY, "max_tokens": np.int64(5)}) == request_key(
        "/chat/completions", BODY
    )


@pytest.mark.parametrize(
    "other",
    [
        ("text-embedding-3-large", None, "hello"),
        ("text-embedding-3-small", 256, "hello"),
        ("text-embedding-3-small", None, "hello "),
        ("text-embedding-3-small", None, "Hello"),
    ],
)
def test_embedding_key_depends_on_model_dimensions_text(other: tuple) -> None:
    """Model, dimensions and text each change an embedding key; nothing else goes in."""
    key = embedding_key("text-embedding-3-small", None, "hello")
    assert embedding_key("text-embedding-3-small", None, "hello") == key
    assert embedding_key(*other) != key
    assert key != request_key("/embeddings", {"model": "text-embedding-3-small", "input": "hello"})


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        RESPONSE,
        "a plain string",
        ["list", 1, 2.5, None, True],
        {"unicode": "Ünïcødé 東京 🚀", "lone": "\ud800 surrogate"},
        {"nan": math.inf},
        {"big": 2**70, "low": -(2**63) - 1, "top": 2**64 - 1, "f": 0.0001234567890123456},
    ],
)
def test_json_round_trip(store: Path, value: object) -> None:
    """A JSON answer put, flushed and read back (by a new cache object) is equal, integers
    past 64 bits included (orjson would make them floats)."""
    with ResponseCache(store) as cache:
        cache.put("k", value, model="gpt-4o-mini")
        assert cache.get("k") == value  # read from the buffer
        cache.flush()
        assert cache.get("k") == value
    with ResponseCache(store) as again:
        assert again.get("k") == value
        assert again.get("missing") is None


def test_vector_round_trip_is_float32_exact(store: Path) -> None:
    """Vectors come back bit for bit, from the buffer and from the file, lists included."""
    rng = np.random.default_rng(1)
    vectors = {f"v{i}": rng.standard_normal(1536).astype(np.float32) for i in range(50)}
    vectors["odd"] = np.array([1e-45, -0.0, np.inf, 3.4e38, np.nan], dtype=np.float32)
    as_list = [0.1, -0.25, 1 / 3]  # JSON floats of the API, float32 values read as float64
    with ResponseCache(store) as cache:
        for key, vector in vectors.items():
            cache.put_vector(key, vector, model="text-embedding-3-small")
        cache.put_vector("list", as_list)
        buffered = cache.get_vectors(list(vectors))
        cache.flush()
    with ResponseCache(store) as cache:
        stored = cache.get_vectors([*vectors, "list", "missing"])
        single = cache.get("v3")
    assert "missing" not in stored
    for got in (buffered, stored):
        for key, vector in vectors.items():
            assert got[key].dtype == np.float32
            assert got[key].tobytes() == vector.tobytes()
    assert stored["list"].tobytes() == np.asarray(as_list, dtype=np.float32).tobytes()
    assert single.tobytes() == vectors["v3"].tobytes()


def test_get_many_returns_only_hits(store: Path) -> None:
    """get_many answers the stored keys only, duplicates once, across several query chunks."""
    n = C.CACHE_QUERY_CHUNK * 2 + 7
    with ResponseCache(store) as cache:
        for i in range(n):
            cache.put(f"k{i}", {"i": i})
        cache.flush()
        cache.put("late", "buffered")
        keys = [f"k{i}" for i in range(0, n + 100)] + ["k1", "late", "nope"]
        got = cache.get_many(keys)
    assert got == {**{f"k{i}": {"i": i} for i in range(n)}, "late": "buffered"}


def test_get_vectors_skips_json_entries(store: Path) -> None:
    """get_vectors answers vectors only; get answers both kinds."""
    with ResponseCache(store) as cache:
        cache.put("json", {"a": 1})
        cache.put_vector("vec", np.ones(3, np.float32))
        assert set(cache.get_vectors(["json", "vec"])) == {"vec"}
        cache.flush()
        assert set(cache.get_vectors(["json", "vec"])) == {"vec"}
        assert cache.get("json") == {"a": 1}


def test_put_vector_refuses_a_matrix(store: Path) -> None:
    """Only 1-d vectors are stored."""
    with ResponseCache(store) as cache, pytest.raises(ConfigurationError, match="1-dimensional"):
        cache.put_vector("m", np.ones((2, 3)))


def test_later_put_of_a_key_wins(store: Path) -> None:
    """Putting a key again replaces its answer, in the buffer and in the file."""
    with ResponseCache(store) as cache:
        cache.put("k", "one")
        cache.put("k", "two")
        cache.flush()
        cache.put("k", "three")
        cache.flush()
        assert cache.get("k") == "three"
        assert cache.info()["entries"] == 1


# -- vectors in blocks ------------------------------------------------------------------------

DIMS = 24


def blocks_of(store: Path) -> list[tuple[int, str | None, int, int]]:
    """(id, model, dims, count) of each stored block."""
    with sqlite3.connect(store) as conn:
        return conn.execute(
            "SELECT id, model, dims, count FROM vector_blocks ORDER BY id"
        ).fetchall()


def keyed_block(tag: str, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    keys = [embedding_key("text-embedding-3-small", None, f"{tag} {i}") for i in range(n)]
    return keys, np.random.default_rng(seed).standard_normal((n, DIMS)).astype(np.float32)


def test_embedding_digests_are_the_raw_embedding_keys() -> None:
    """The batch digests are the bytes of embedding_key, whatever the text holds."""
    texts = ["hello", "", 'quote " and \\ slash', "tab\tnew\nline\x00", "Ünïcødé 東京 🚀", "\ud800"]
    for model, dims in (("text-embedding-3-small", None), ('m"odd', 256)):
        digests = embedding_digests(model, dims, texts)
        assert [d.hex() for d in digests] == [embedding_key(model, dims, t) for t in texts]


def test_put_vectors_round_trip_is_exact(store: Path) -> None:
    """Blocks come back bit for bit, from the buffer and from the file, by hex key or by raw
    digest, through get_vectors, get_vector_rows and get; each block is one row."""
    keys_a, a = keyed_block("a", 300, 1)
    keys_b, b = keyed_block("b", 5, 2)
    b[0, :5] = [1e-45, -0.0, np.inf, 3.4e38, np.nan]
    keys = keys_a + keys_b
    expected = np.concatenate([a, b])
    raw = [bytes.fromhex(k) for k in keys]
    with ResponseCache(store) as cache:
        cache.put_vectors(keys_a, a, model="emb")
        cache.put_vectors(raw[300:], b, model="emb")  # raw digests are keys too
        buffered_found, buffered = cache.get_vector_rows(keys)
        cache.flush()
    assert buffered_found.all() and buffered is not None
    assert buffered.tobytes() == expected.tobytes()
    assert [(model, dims, count) for _id, model, dims, count in blocks_of(store)] == [
        ("emb", DIMS, 300),
        ("emb", DIMS, 5),
    ]
    with ResponseCache(store) as cache:
        found, matrix = cache.get_vector_rows(raw)
        by_key = cache.get_vectors(keys)
        single = cache.get(keys[301])
    assert found.all() and matrix is not None and matrix.dtype == np.float32
    assert matrix.flags.writeable and matrix.tobytes() == expected.tobytes()
    assert list(by_key) == keys
    for i, key in enumerate(keys):
        assert by_key[key].dtype == np.float32
        assert by_key[key].tobytes() == expected[i].tobytes()
    assert single.tobytes() == expected[301].tobytes()


def test_get_vector_rows_partial_hits_across_blocks(store: Path) -> None:
    """Keys from several blocks (file and buffer), misses and repeats, in any order: found
    says which are stored, each found row is its vector, the others are zeros."""
    blocks = [
        keyed_block(tag, n, seed) for tag, n, seed in (("x", 40, 3), ("y", 7, 4), ("z", 9, 5))
    ]
    with ResponseCache(store) as cache:
        for keys, block in blocks[:2]:
            cache.put_vectors(keys, block, model="emb")
        cache.flush()
        cache.put_vectors(*blocks[2], model="emb")  # still buffered
        vector_of = {k: v for keys, block in blocks for k, v in zip(keys, block, strict=True)}
        wanted = [
            blocks[1][0][3],
            "not stored",
            blocks[0][0][39],
            blocks[2][0][0],
            embedding_key("text-embedding-3-small", None, "never put"),
            blocks[0][0][0],
            blocks[1][0][3],
        ]
        found, matrix = cache.get_vector_rows(wanted)
        assert found.tolist() == [True, False, True, True, False, True, True]
        assert matrix is not None and matrix.shape == (len(wanted), DIMS)
        for i, key in enumerate(wanted):
            want = vector_of[key] if found[i] else np.zeros(DIMS, np.float32)
            assert matrix[i].tobytes() == want.tobytes()
        assert set(cache.get_vectors(wanted)) == {
            k for k, f in zip(wanted, found, strict=True) if f
        }
        none_found, none = cache.get_vector_rows(["not stored", "nor this"])
        assert none is None and not none_found.any()


def test_vectors_put_again_win_and_old_blocks_are_collected(store: Path) -> None:
    """A key stored again answers with its newest vector (buffer, file, other processes); it
    counts once; clear() deletes a block every key of which was stored again later."""
    keys, first = keyed_block("k", 10, 6)
    second = first + 1
    with ResponseCache(store) as cache:
        cache.put_vectors(keys, first, model="emb")
        cache.flush()
        cache.put_vectors(keys[:4], second[:4], model="emb")
        assert cache.get_vector_rows(keys)[1][:4].tobytes() == second[:4].tobytes()
        cache.flush()
        cache.put_vectors(keys[4:], second[4:], model="emb")
        cache.put_vector(keys[0], second[0] + 1, model="emb")
        cache.flush()
        assert cache.info()["entries"] == 10
        assert repr(cache).endswith("entries=10>")
    with ResponseCache(store, readonly=True) as cache:
        found, matrix = cache.get_vector_rows(keys)
    assert found.all() and matrix is not None
    assert matrix[0].tobytes() == (second[0] + 1).tobytes()
    assert matrix[1:].tobytes() == second[1:].tobytes()
    assert len(blocks_of(store)) == 4
    with ResponseCache(store) as cache:
        assert cache.clear(model="other") == 0
        assert [count for *_, count in blocks_of(store)] == [4, 6, 1]  # the first block is gone
        assert cache.get_vector_rows(keys)[1].tobytes() == matrix.tobytes()


def test_put_vector_calls_share_a_block(store: Path) -> None:
    """Consecutive put_vector calls of one model and length are stored as one block; another
    model, another length or a put_vectors call in between starts a new one."""
    keys, block = keyed_block("v", 6, 7)
    with ResponseCache(store) as cache:
        for key, vector in zip(keys[:3], block[:3], strict=True):
            cache.put_vector(key, vector, model="emb")
        cache.put_vector(keys[3], block[3], model="other")
        cache.put_vector(keys[4], block[4, :8], model="other")
        cache.put_vectors(keys[5:], block[5:], model="emb")
    assert [(m, d, n) for _i, m, d, n in blocks_of(store)] == [
        ("emb", DIMS, 3),
        ("other", DIMS, 1),
        ("other", 8, 1),
        ("emb", DIMS, 1),
    ]
    with ResponseCache(store) as cache:
        got = cache.get_vectors(keys)
    assert got[keys[4]].tobytes() == block[4, :8].tobytes()
    assert all(got[k].tobytes() == block[i].tobytes() for i, k in enumerate(keys) if i != 4)


def test_put_vectors_checks_its_arguments(store: Path) -> None:
    """A block must be one row per key; an empty block stores nothing."""
    with ResponseCache(store) as cache:
        with pytest.raises(ConfigurationError, match="3 x dims matrix for 3 keys"):
            cache.put_vectors(["a", "b", "c"], np.ones((2, 4), np.float32))
        with pytest.raises(ConfigurationError, match="matrix"):
            cache.put_vectors(["a"], np.ones(4, np.float32))
        cache.put_vectors([], np.ones((0, 4), np.float32))
    assert blocks_of(store) == []


def _damage_block(store: Path, block_id: int, how: str) -> None:
    conn = sqlite3.connect(store)
    (offset,) = conn.execute(
        "SELECT offset FROM vector_blocks WHERE id = ?", (block_id,)
    ).fetchone()
    vectors = store.with_name(store.name + "-vectors")
    with conn:
        if how == "data":  # one float changed in the vectors file: the block's checksum fails
            with vectors.open("r+b") as f:
                f.seek(offset + 100)
                byte = f.read(1)[0]
                f.seek(offset + 100)
                f.write(bytes([byte ^ 0x40]))
        elif how == "keys":  # two rows' keys swapped: each key would find the other's vector
            keys = bytearray(
                conn.execute("SELECT keys FROM vector_blocks WHERE id = ?", (block_id,)).fetchone()[
                    0
                ]
            )
            keys[0:32], keys[32:64] = keys[32:64], keys[0:32]
            conn.execute("UPDATE vector_blocks SET keys = ? WHERE id = ?", (bytes(keys), block_id))
        elif how == "offset":  # pointing into the neighbouring block
            conn.execute("UPDATE vector_blocks SET offset = offset + 4 WHERE id = ?", (block_id,))
        elif how == "short":  # the file ends before the block does
            end = vectors.stat().st_size - 1000
            conn.execute("UPDATE vector_blocks SET offset = ? WHERE id = ?", (end, block_id))
        elif how == "shape":
            conn.execute(
                "UPDATE vector_blocks SET dims = dims / 2, count = count * 2 WHERE id = ?",
                (block_id,),
            )
    conn.close()


@pytest.mark.parametrize("how", ["data", "keys", "offset", "short", "shape"])
def test_damaged_block_misses_its_rows_only(
    store: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A block whose vectors, keys, length or shape changed is a miss for its rows only
    (never a wrong vector); the other blocks answer; a new put of its keys answers again."""
    blocks = [keyed_block(tag, 20, seed) for tag, seed in (("p", 8), ("q", 9), ("r", 10))]
    keys = [k for ks, _ in blocks for k in ks]
    expected = np.concatenate([b for _, b in blocks])
    with ResponseCache(store) as cache:
        for ks, block in blocks:
            cache.put_vectors(ks, block, model="emb")
    damaged_id = blocks_of(store)[1][0]
    _damage_block(store, damaged_id, how)
    with ResponseCache(store) as cache:
        found, matrix = cache.get_vector_rows(keys)
        by_key = cache.get_vectors(keys)
        assert found.tolist() == [True] * 20 + [False] * 20 + [True] * 20
        assert matrix is not None
        assert matrix[found].tobytes() == expected[found].tobytes()
        assert set(by_key) == {k for k, f in zip(keys, found, strict=True) if f}
        assert all(
            by_key[k].tobytes() == expected[i].tobytes() for i, k in enumerate(keys) if found[i]
        )
        cache.put_vectors(*blocks[1], model="emb")
        cache.flush()
        again, matrix = cache.get_vector_rows(keys)
    assert again.all() and matrix is not None and matrix.tobytes() == expected.tobytes()
    if how in ("data", "keys"):
        assert "damaged entries ignored" in caplog.text


def test_clear_removes_blocks_by_model_and_age(store: Path) -> None:
    """clear(model=) and clear(older_than=) delete whole blocks, count their keys, and give
    the space back; the other blocks keep answering."""
    wall = FakeClock(0.0)
    big = 2_000  # 2,000 x 24 float32 = 192 KB per block
    with ResponseCache(store, wall_clock=wall) as cache:
        kept_keys, kept = keyed_block("keep", big, 11)
        cache.put_vectors(kept_keys, kept, model="keep")
        for i in range(4):
            wall.now = float(i * 10)
            cache.put_vectors(*keyed_block(f"drop{i}", big, 12 + i), model="drop")
            cache.flush()
        full = cache.info()
        assert full["by_model"] == {"keep": big, "drop": 4 * big}
        wall.now = 35.0
        assert cache.clear(model="drop", older_than=20) == 2 * big  # created at t=0 and t=10
        assert cache.info()["by_model"] == {"keep": big, "drop": 2 * big}
        assert cache.clear(model="drop") == 2 * big
        assert [m for _i, m, _d, _n in blocks_of(store)] == ["keep"]
        assert cache.info()["bytes"] < full["bytes"] / 2
        found, matrix = cache.get_vector_rows(kept_keys)
        assert found.all() and matrix is not None and matrix.tobytes() == kept.tobytes()
        assert cache.clear() == big
        assert blocks_of(store) == []


def _vectors_file(store: Path) -> Path:
    return store.with_name(store.name + "-vectors")


def test_vectors_live_beside_the_database_and_clear_gives_their_space_back(store: Path) -> None:
    """Vectors are appended to <name>-vectors (a JSON-only store has none); a clear that leaves
    under half of it in use rewrites it, a full clear empties it, and another cache open on the
    same store meanwhile keeps answering right (it reopens the rewritten file)."""
    write_store(store, 3)
    assert not _vectors_file(store).exists()
    blocks = {tag: keyed_block(tag, 500, seed) for seed, tag in enumerate("abcd")}
    with ResponseCache(store) as writer, ResponseCache(store) as reader:
        for tag, (keys, block) in blocks.items():
            writer.put_vectors(keys, block, model="keep" if tag == "c" else "drop")
        writer.flush()
        size = _vectors_file(store).stat().st_size
        assert size == 4 * 500 * DIMS * 4
        found, _ = reader.get_vector_rows(blocks["c"][0])  # opens the file before the rewrite
        assert found.all()
        assert writer.clear(model="drop") == 3 * 500
        assert _vectors_file(store).stat().st_size == size // 4
        for cache in (reader, writer):
            found, matrix = cache.get_vector_rows(blocks["c"][0])
            assert found.all() and matrix is not None
            assert matrix.tobytes() == blocks["c"][1].tobytes()
        reader.put_vectors(*blocks["a"], model="drop")  # appended to the rewritten file
        reader.flush()
        found, matrix = writer.get_vector_rows(blocks["a"][0])
        assert found.all() and matrix is not None and matrix.tobytes() == blocks["a"][1].tobytes()
        writer.clear()
        assert _vectors_file(store).stat().st_size == 0
        assert not reader.get_vector_rows(blocks["c"][0])[0].any()


def test_a_deleted_vectors_file_is_a_miss_then_stored_again(store: Path) -> None:
    keys, block = keyed_block("v", 50, 3)
    with ResponseCache(store) as cache:
        cache.put_vectors(keys, block, model="m")
        cache.flush()
        _vectors_file(store).unlink()
        assert not cache.get_vector_rows(keys)[0].any()
        cache.put_vectors(keys, block, model="m")
        cache.flush()
    with ResponseCache(store, readonly=True) as again:
        found, matrix = again.get_vector_rows(keys)
    assert found.all() and matrix is not None and matrix.tobytes() == block.tobytes()


def test_the_vectors_file_is_set_aside_with_its_database(store: Path) -> None:
    keys, block = keyed_block("v", 50, 4)
    with ResponseCache(store) as cache:
        cache.put_vectors(keys, block, model="m")
    with open(store, "r+b") as f:
        f.truncate(store.stat().st_size // 2)
    with pytest.warns(RuntimeWarning, match="damaged"):
        cache = ResponseCache(store)
    assert not cache.get_vector_rows(keys)[0].any()
    cache.close()
    names = sorted(p.name for p in store.parent.iterdir())
    assert any(n.startswith("cache.sqlite.corrupt-") and n.endswith("-vectors") for n in names)
    assert "cache.sqlite-vectors" not in names


def test_format_2_store_is_set_aside(store: Path) -> None:
    """Format 2 kept the vectors in SQLite: moved to <name>.v2.bak, a new store built."""
    conn = sqlite3.connect(store)
    conn.execute(
        "CREATE TABLE entries (key TEXT PRIMARY KEY NOT NULL, model TEXT, created REAL NOT NULL,"
        " crc INTEGER NOT NULL, value BLOB NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE vector_blocks (id INTEGER PRIMARY KEY, model TEXT, dims INTEGER NOT NULL,"
        " count INTEGER NOT NULL, created REAL NOT NULL, crc INTEGER NOT NULL,"
        " keys BLOB NOT NULL, data BLOB NOT NULL)"
    )
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with pytest.warns(RuntimeWarning, match=r"older dfbatch \(format 2\).*\.v2\.bak"):
        ResponseCache(store).close()
    assert _set_aside(store, ".v2.bak")


def test_format_1_store_is_set_aside(store: Path) -> None:
    """A store of format 1 (one row per answer, vectors included) is an older schema: moved
    to <name>.v1.bak with a warning, never read; a new store takes its place."""
    conn = sqlite3.connect(store)
    conn.execute(
        "CREATE TABLE entries (key TEXT PRIMARY KEY NOT NULL, model TEXT, kind INTEGER NOT NULL,"
        " created REAL NOT NULL, crc INTEGER NOT NULL, value BLOB NOT NULL)"
    )
    key = embedding_key("text-embedding-3-small", None, "hi")
    value = np.ones(4, np.float32).tobytes()
    crc = zlib.crc32(value, zlib.crc32(f"1:{key}".encode()))
    conn.execute("INSERT INTO entries VALUES (?, 'e', 1, 0, ?, ?)", (key, crc, value))
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with pytest.warns(RuntimeWarning, match=r"older dfbatch \(format 1\).*cache\.sqlite\.v1\.bak"):
        cache = ResponseCache(store)
    assert cache.get_vectors([key]) == {} and cache.get(key) is None
    cache.put_vectors([key], np.full((1, 4), 2, np.float32))
    cache.close()
    assert _set_aside(store, ".v1.bak")
    with ResponseCache(store, readonly=True) as again:
        assert again.get_vectors([key])[key].tolist() == [2.0] * 4


# -- flushing ---------------------------------------------------------------------------------


def test_maybe_flush_honours_flush_interval(store: Path) -> None:
    """Answers are written once the oldest buffered one is flush_interval old, not before."""
    clock = FakeClock(100.0)
    cache = ResponseCache(store, flush_interval=0.2, clock=clock)
    reader = ResponseCache(store, readonly=True)
    assert cache.maybe_flush() is False  # nothing buffered
    cache.put("a", 1)
    clock.now = 100.1
    cache.put("b", 2)
    assert cache.maybe_flush() is False
    assert reader.get_many(["a", "b"]) == {}
    clock.now = 100.2
    assert cache.maybe_flush() is True
    assert reader.get_many(["a", "b"]) == {"a": 1, "b": 2}
    assert cache.maybe_flush() is False
    clock.now = 105.0
    cache.put("c", 3)  # the interval counts from the oldest unwritten answer
    clock.now = 105.19
    assert cache.maybe_flush() is False
    cache.close()
    assert reader.get("c") == 3
    reader.close()


def test_maybe_flush_writes_early_when_the_buffer_is_large(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A buffer past the item or byte limit is written before the interval is up."""
    monkeypatch.setattr(C, "CACHE_FLUSH_MAX_ITEMS", 10)
    monkeypatch.setattr(C, "CACHE_FLUSH_MAX_BYTES", 4 * 1536 * 3)
    clock = FakeClock()
    with ResponseCache(store, flush_interval=60, clock=clock) as cache:
        for i in range(9):
            cache.put(f"k{i}", i)
            assert cache.maybe_flush() is False
        cache.put("k9", 9)
        assert cache.maybe_flush() is True
        for i in range(2):
            cache.put_vector(f"v{i}", np.zeros(1536, np.float32))
            assert cache.maybe_flush() is False
        cache.put_vector("v2", np.zeros(1536, np.float32))
        assert cache.maybe_flush() is True


def test_dropped_cache_stores_its_buffer(store: Path) -> None:
    """A cache dropped without close() still writes what it buffered."""
    cache = ResponseCache(store, flush_interval=60)
    cache.put("k", "kept")
    del cache
    gc.collect()
    with ResponseCache(store) as again:
        assert again.get("k") == "kept"


def test_two_caches_on_one_file_in_one_process(store: Path) -> None:
    """Two cache objects on one file see each other's flushed answers."""
    with ResponseCache(store) as a, ResponseCache(store) as b:
        a.put("from-a", 1)
        b.put("from-b", 2)
        a.flush()
        b.flush()
        assert (
            a.get_many(["from-a", "from-b"])
            == b.get_many(["from-a", "from-b"])
            == {
                "from-a": 1,
                "from-b": 2,
            }
        )


def test_closed_cache_refuses_calls(store: Path) -> None:
    """After close, calls raise a clear error; closing twice is harmless."""
    cache = ResponseCache(store)
    cache.put("k", 1)
    cache.close()
    cache.close()
    assert "closed" in repr(cache)
    with pytest.raises(ConfigurationError, match="closed"):
        cache.get("k")


def test_repr_shows_path_and_entries(store: Path) -> None:
    """repr names the file and counts stored and buffered entries."""
    with ResponseCache(store) as cache:
        cache.put("a", 1)
        cache.flush()
        cache.put("a", 2)
        cache.put("b", 2)
        assert repr(cache) == f"<ResponseCache {str(store)!r} entries=2>"


# -- location and modes -----------------------------------------------------------------------


def test_default_path_honours_dfbatch_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DFBATCH_CACHE_DIR moves the store; its directories are created on first use."""
    monkeypatch.setenv("DFBATCH_CACHE_DIR", str(tmp_path / "a" / "b"))
    assert default_cache_path() == tmp_path / "a" / "b" / "cache.sqlite"
    with ResponseCache() as cache:
        cache.put("k", 1)
    assert (tmp_path / "a" / "b" / "cache.sqlite").is_file()


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="the Linux layout")
def test_default_path_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without DFBATCH_CACHE_DIR the store is under XDG_CACHE_HOME, or ~/.cache."""
    monkeypatch.delenv("DFBATCH_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_path() == tmp_path / "dfbatch" / "cache.sqlite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_path() == Path.home() / ".cache" / "dfbatch" / "cache.sqlite"


def test_readonly_never_writes(store: Path) -> None:
    """A read-only cache creates nothing, misses on a missing store, and refuses puts."""
    with ResponseCache(store, readonly=True) as cache:
        assert cache.get("k") is None
        assert cache.info()["entries"] == 0
        with pytest.raises(ConfigurationError, match="read-only"):
            cache.put("k", 1)
        with pytest.raises(ConfigurationError, match="read-only"):
            cache.clear()
    assert not store.exists()
    write_store(store, 3)
    with ResponseCache(store, readonly=True) as cache:
        assert cache.get("k2") == {"i": 2, "text": "x" * 400}


# -- safety -----------------------------------------------------------------------------------


def test_api_key_never_reaches_the_file(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file and its log hold answers and hashes, never the API key of the environment."""
    sentinel = "sk-SENTINEL-" + "7" * 40
    monkeypatch.setenv("OPENAI_API_KEY", sentinel)
    api = ApiConfig.resolve()
    assert sentinel in str(api.headers())  # the key is live in this process
    body = {**BODY, "user": "row-7", "metadata": {"run": "test"}}
    cache = ResponseCache(store)
    cache.put(request_key("/chat/completions", body), RESPONSE, model=body["model"])
    cache.put_vector(embedding_key("text-embedding-3-small", None, "hi"), np.ones(8, np.float32))
    cache.flush()
    assert cache.get(request_key("/chat/completions", body)) == RESPONSE
    files = [p for p in store.parent.iterdir() if p.name.startswith(store.name)]
    assert any(p.name.endswith("-wal") for p in files)  # the log is checked while it is live
    for path in files:
        assert sentinel.encode() not in path.read_bytes()
    cache.close()
    assert sentinel.encode() not in store.read_bytes()


def test_damaged_rows_are_misses_and_get_replaced(store: Path) -> None:
    """A JSON row whose bytes changed or whose JSON is broken reads as a miss (never a wrong
    value), and the next put replaces it."""
    with ResponseCache(store) as cache:
        cache.put("flipped", {"answer": 42})
        cache.put("broken", "fine")
    conn = sqlite3.connect(store)
    with conn:
        conn.execute("UPDATE entries SET value = ? WHERE key = 'flipped'", (b'{"answer":43}',))
        # A value that passes its checksum but cannot be decoded.
        value = b'{"a":'
        crc = zlib.crc32(value, zlib.crc32(b"0:broken"))
        conn.execute("UPDATE entries SET value = ?, crc = ? WHERE key = 'broken'", (value, crc))
    conn.close()
    with ResponseCache(store) as cache:
        assert cache.get_many(["flipped", "broken"]) == {}
        assert cache.get("flipped") is None
        cache.put("flipped", {"answer": 42})
        cache.flush()
        assert cache.get("flipped") == {"answer": 42}


def _set_aside(store: Path, marker: str) -> list[Path]:
    return sorted(p for p in store.parent.iterdir() if marker in p.name)


@pytest.mark.parametrize("keep", [0.5, 100, 0.1, 0.9, -4096, -1], ids=str)
def test_truncated_store_is_set_aside_and_rebuilt(store: Path, keep: float) -> None:
    """A store cut short (in half, to its header, by one page, by one byte) is moved to
    <name>.corrupt-<time> with a warning; its answers are asked again, never wrong."""
    write_store(store, 3_000)
    original = store.read_bytes()
    size = int(len(original) * keep) if 0 < keep < 1 else int(keep) % len(original)
    with open(store, "r+b") as f:
        f.truncate(size)
    with pytest.warns(RuntimeWarning, match=r"damaged.*moved to .*cache\.sqlite\.corrupt-"):
        cache = ResponseCache(store)
    (aside,) = _set_aside(store, ".corrupt-")
    assert aside.read_bytes() == original[:size]
    assert cache.get("k1") is None
    assert cache.info()["entries"] == 0
    cache.put("k1", "new")
    cache.close()
    assert ResponseCache(store, readonly=True).get("k1") == "new"


def test_random_bytes_file_is_set_aside(store: Path) -> None:
    """A file that is not a database at all is set aside and a store is built in its place."""
    store.write_bytes(np.random.default_rng(2).bytes(100_000))
    with pytest.warns(RuntimeWarning, match="damaged"):
        cache = ResponseCache(store)
    assert len(_set_aside(store, ".corrupt-")) == 1
    cache.put("k", 1)
    cache.flush()
    assert cache.get("k") == 1
    cache.close()


def test_readonly_refuses_a_damaged_store(store: Path) -> None:
    """A read-only cache does not move a damaged file: it raises a clear error."""
    store.write_bytes(b"not a database, just text" * 100)
    with pytest.raises(ConfigurationError, match="damaged"):
        ResponseCache(store, readonly=True)
    assert store.read_bytes().startswith(b"not a database")


def test_damage_found_while_open_never_gives_a_wrong_answer(store: Path) -> None:
    """Pages overwritten under an open cache: every answer read is right, and the damaged
    file is set aside so later puts land in a sound store."""
    write_store(store, 3_000)
    cache = ResponseCache(store)
    size = store.stat().st_size
    with open(store, "r+b") as f:  # garbage over the middle of the file, as a bad disk would
        f.seek(size // 4)
        f.write(np.random.default_rng(3).bytes(size // 2))
    keys = [f"k{i}" for i in range(3_000)]
    with pytest.warns(RuntimeWarning, match="damaged"):
        got = cache.get_many(keys)
    assert all(got[k] == {"i": int(k[1:]), "text": "x" * 400} for k in got)
    assert len(got) < 3_000
    cache.put("after", 1)
    cache.flush()
    assert cache.get("after") == 1
    cache.close()
    assert _set_aside(store, ".corrupt-")


def test_damage_under_open_vectors_never_gives_a_wrong_vector(store: Path) -> None:
    """Garbage over the middle of a store of blocks, under an open cache: every vector read is
    right (the rest are misses), and a file SQLite finds malformed is set aside."""
    blocks = [keyed_block(f"g{j}", 500, 20 + j) for j in range(8)]
    keys = [k for ks, _ in blocks for k in ks]
    expected = np.concatenate([b for _, b in blocks])
    with ResponseCache(store) as cache:
        for ks, block in blocks:
            cache.put_vectors(ks, block, model="emb")
    cache = ResponseCache(store)
    size = store.stat().st_size
    with open(store, "r+b") as f:
        f.seek(size // 3)
        f.write(np.random.default_rng(4).bytes(size // 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # set aside, if SQLite noticed
        found, matrix = cache.get_vector_rows(keys)
    assert not found.all()
    if found.any():
        assert matrix is not None and matrix[found].tobytes() == expected[found].tobytes()
    cache.put_vectors(keys[:3], expected[:3])
    cache.flush()
    assert cache.get_vector_rows(keys[:3])[0].all()
    cache.close()


def _hand_made(path: Path, *, version: int, app_id: int = 0, table: str = "entries") -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE {table} (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute(f"INSERT INTO {table} (key, value) VALUES ('k', 'old')")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute(f"PRAGMA application_id = {app_id}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("version", "app_id"),
    [(0, 0), (0, APPLICATION_ID), (SCHEMA_VERSION, APPLICATION_ID)],
    ids=["pre-release", "version-0", "missing-columns"],
)
def test_older_store_is_set_aside_and_rebuilt(store: Path, version: int, app_id: int) -> None:
    """An older table shape or schema version is moved to <name>.v<N>.bak with a warning
    naming it, and a current store is built; the old answer is never served."""
    _hand_made(store, version=version, app_id=app_id)
    with pytest.warns(RuntimeWarning, match=rf"older dfbatch.*cache\.sqlite\.v{version}\.bak"):
        cache = ResponseCache(store)
    assert cache.get("k") is None
    cache.put("k", "new")
    cache.close()
    (backup,) = _set_aside(store, f".v{version}.bak")
    assert sqlite3.connect(backup).execute("SELECT value FROM entries").fetchone() == ("old",)
    assert ResponseCache(store, readonly=True).get("k") == "new"


def test_newer_store_is_refused_untouched(store: Path) -> None:
    """A store from a newer dfbatch raises ConfigurationError and is left as it is."""
    write_store(store, 2)
    conn = sqlite3.connect(store)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = store.read_bytes()
    with pytest.raises(ConfigurationError, match=r"newer dfbatch.*upgrade dfbatch"):
        ResponseCache(store)
    assert store.read_bytes() == before


def test_foreign_database_is_refused_untouched(store: Path) -> None:
    """Another program's SQLite database is never renamed or rebuilt."""
    _hand_made(store, version=0, table="users")
    before = store.read_bytes()
    with pytest.raises(ConfigurationError, match="not a dfbatch cache"):
        ResponseCache(store)
    assert store.read_bytes() == before
    assert [p.name for p in store.parent.iterdir()] == [store.name]


# -- housekeeping -----------------------------------------------------------------------------


def test_info_counts_by_model(store: Path) -> None:
    """info() gives path, bytes, entries, by_model and the oldest and newest times."""
    wall = FakeClock(1_000.0)
    with ResponseCache(store, wall_clock=wall) as cache:
        empty = cache.info()
        assert (empty["entries"], empty["by_model"], empty["oldest"]) == (0, {}, None)
        for i in range(3):
            cache.put(f"a{i}", i, model="gpt-4o-mini")
        wall.now = 2_000.0
        cache.put_vector("e", np.ones(4, np.float32), model="text-embedding-3-small")
        cache.put("none", "no model")
        info = cache.info()
    assert info["path"] == str(store)
    assert info["bytes"] >= store.stat().st_size > 0
    assert info["entries"] == 5
    assert info["by_model"] == {"gpt-4o-mini": 3, "text-embedding-3-small": 1, None: 1}
    assert (info["oldest"], info["newest"]) == (1_000.0, 2_000.0)


def test_clear_by_model_and_age(store: Path) -> None:
    """clear() deletes one model's entries, or those older than an age, or all; it returns
    the count and gives the space back."""
    wall = FakeClock(0.0)
    with ResponseCache(store, wall_clock=wall) as cache:
        for i in range(200):
            wall.now = float(i)
            cache.put_vector(f"e{i}", np.ones(1536, np.float32), model="emb")
            cache.put(f"c{i}", {"i": i}, model="chat")
        cache.flush()
        wall.now = 250.0
        full = cache.info()["bytes"]
        assert cache.clear(model="chat", older_than=100) == 150  # created before t=150
        assert cache.info()["by_model"] == {"chat": 50, "emb": 200}
        assert cache.clear(model="emb") == 200
        assert cache.info()["bytes"] < full / 2
        assert cache.clear(older_than=parse_age("1m")) == 40  # created before t=190
        assert cache.clear() == 10
        assert cache.clear() == 0
        assert cache.get_many(["c199", "e0"]) == {}
        with pytest.raises(ConfigurationError):
            cache.clear(older_than=-1)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45s", 45.0),
        ("90m", 5_400.0),
        ("12h", 43_200.0),
        ("30d", 2_592_000.0),
        ("2w", 1_209_600.0),
        ("1.5h", 5_400.0),
        ("1d12h", 129_600.0),
        (" 7D ", 604_800.0),
        ("0s", 0.0),
    ],
)
def test_parse_age(text: str, seconds: float) -> None:
    """Ages as the command line takes them: a number and a unit, s m h d or w."""
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "7", "d", "-3d", "3y", "3 days", "1d-2h", "abc"])
def test_parse_age_refuses_bad_text(text: str) -> None:
    """Anything else is a ConfigurationError that shows the accepted form."""
    with pytest.raises(ConfigurationError, match=r"cannot read .* as an age.*30d"):
        parse_age(text)


# -- other processes --------------------------------------------------------------------------

WRITER = """
    import sys
    from dfbatch.cache.store import ResponseCache
    cache = ResponseCache(sys.argv[1], flush_interval=0.0)
    print("ready", flush=True)
    for i in range(int(sys.argv[2]), int(sys.argv[3])):
        cache.put(f"k{i}", {"i": i, "by": "child"})
        cache.maybe_flush()
    cache.close()
    print("done", flush=True)
"""


def test_two_processes_write_one_store_at_once(store: Path) -> None:
    """Two processes writing 2,000 answers each (1,000 keys in common), one flush per answer,
    end with every answer stored once and no 'database is locked' error."""
    proc = child(WRITER, str(store), "0", "2000")
    cache = ResponseCache(store, flush_interval=0.0)  # races the child to create the file
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for i in range(1_000, 3_000):
        cache.put(f"k{i}", {"i": i, "by": "parent"})
        cache.maybe_flush()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "done"
    got = cache.get_many([f"k{i}" for i in range(3_000)])
    assert len(got) == 3_000 and cache.info()["entries"] == 3_000
    assert all(got[f"k{i}"]["i"] == i for i in range(3_000))
    assert {got[f"k{i}"]["by"] for i in range(1_000)} == {"child"}
    cache.close()


KILLED = """
    import sys, time
    from dfbatch.cache.store import ResponseCache
    cache = ResponseCache(sys.argv[1], flush_interval=0.02)
    i = 0
    while True:
        cache.put(f"k{i}", {"i": i})
        i += 1
        if cache.maybe_flush():
            print(i, flush=True)  # answers 0..i-1 are committed
        time.sleep(0.0005)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_9_loses_at_most_the_last_flush_interval(store: Path) -> None:
    """A writer killed with SIGKILL keeps every answer it had reported flushed."""
    proc = child(KILLED, str(store))
    assert proc.stdout is not None
    seen = [int(proc.stdout.readline()) for _ in range(10)]
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    flushed = max([*seen, *(int(line) for line in rest.split())])
    with ResponseCache(store, readonly=True) as cache:
        got = cache.get_many([f"k{i}" for i in range(flushed)])
        assert len(got) == flushed
        assert all(got[f"k{i}"] == {"i": i} for i in range(flushed))
        assert cache.info()["entries"] >= flushed


def test_a_store_replaced_under_an_open_cache_is_reopened(store: Path) -> None:
    """If the file is deleted while a cache is open, the next flush writes to a new file."""
    with ResponseCache(store) as cache:
        cache.put("a", 1)
        cache.flush()
        for path in store.parent.iterdir():
            path.unlink()
        cache.put("b", 2)
        cache.flush()
    assert ResponseCache(store, readonly=True).get_many(["a", "b"]) == {"b": 2}


def test_writes_wait_for_another_writer(store: Path) -> None:
    """A flush waits while another connection holds the write lock, then succeeds."""
    with ResponseCache(store) as cache:
        blocker = sqlite3.connect(store, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        proc = child(
            """
            import sys, time
            from dfbatch.cache.store import ResponseCache
            with ResponseCache(sys.argv[1]) as c:
                print("ready", flush=True)
                t = time.monotonic(); c.put("k", 1); c.flush()
                print(round(time.monotonic() - t, 1))
            """,
            str(store),
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # a real lock held by a real connection: the child must wait
        blocker.execute("COMMIT")
        out, err = proc.communicate(timeout=30)
        blocker.close()
        assert proc.returncode == 0, err
        assert float(out) >= 0.2
        assert cache.get("k") == 1


def test_locked_store_keeps_answers_for_later(
    store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A store locked past busy_timeout makes maybe_flush log and keep its answers; the
    next flush once the lock is gone stores them."""
    monkeypatch.setattr(C, "CACHE_BUSY_TIMEOUT", 0.05)
    clock = FakeClock()
    cache = ResponseCache(store, flush_interval=0.2, clock=clock)
    blocker = sqlite3.connect(store, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    cache.put("k", "kept")
    clock.now = 1.0
    assert cache.maybe_flush() is False
    assert "not stored yet" in caplog.text
    assert cache.maybe_flush() is False  # retried one interval later, not on every call
    blocker.execute("COMMIT")
    blocker.close()
    clock.now = 1.25
    assert cache.maybe_flush() is True
    cache.close()
    assert ResponseCache(store, readonly=True).get("k") == "kept"


def test_json_value_is_stored_compactly(store: Path) -> None:
    """JSON answers are stored as compact UTF-8 text."""
    with ResponseCache(store) as cache:
        cache.put("k", {"a": "東京"})
    value = sqlite3.connect(store).execute("SELECT value FROM entries").fetchone()[0]
    assert value == json.dumps({"a": "東京"}, ensure_ascii=False, separators=(",", ":")).encode()


def test_an_unreadable_vectors_file_is_a_miss_not_a_crash(store: Path) -> None:
    keys, block = keyed_block("u", 10, 5)
    with ResponseCache(store) as cache:
        cache.put_vectors(keys, block, model="m")
    vectors = _vectors_file(store)
    vectors.unlink()
    vectors.mkdir()  # opening it now fails with an OSError
    with ResponseCache(store, readonly=True) as again:
        found, matrix = again.get_vector_rows(keys)
    assert not found.any() and matrix is None
