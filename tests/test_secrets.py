"""The API key never reaches a log line, an exception, a repr, the cache or a result."""

from __future__ import annotations

import logging
import traceback

import pandas as pd
import pytest

import dfbatch
from dfbatch import AuthenticationError, QuotaExceededError
from dfbatch.jobs.run import RunOptions
from dfbatch.testing import Faults, Simulator

KEY = "sk-proj-SENTINEL0123456789abcdefSECRET"


def test_key_absent_from_logs_errors_reprs_and_files(tmp_path, caplog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """At DEBUG, through retries, a 401 and a quota stop, the key appears nowhere."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)  # every logger, aiohttp's included
    seen: list[str] = []
    cache = tmp_path / "cache.sqlite"
    df = pd.DataFrame({"text": [f"row {i}" for i in range(60)]})
    faults = Faults(error_5xx=0.2, reset=0.05, non_json=0.05)
    with Simulator(api_key=KEY, faults=faults, seed=3) as sim:
        opts = {"base_url": sim.base_url, "cache": cache, "progress": False}
        out = df.llm.embed("text", batch_size=4, **opts).llm.complete("Say {text}", **opts)
        seen += [out.to_string(), repr(out.attrs), repr(RunOptions.build(**opts))]
        seen += [repr(RunOptions.build(**opts).engine()), repr(RunOptions.build(**opts).api)]
        assert out["completion_error"].isna().all()
    with Simulator(api_key="sk-the-right-one") as sim:  # our key is refused
        with pytest.raises(AuthenticationError) as refused:
            df.llm.complete("Say {text}", base_url=sim.base_url, cache=False, progress=False)
        seen += [str(refused.value), repr(refused.value), repr(refused.value.error)]
        seen += traceback.format_exception(refused.value)
    with Simulator(quota_exhausted=True) as sim:
        with pytest.raises(QuotaExceededError) as quota:
            df.llm.embed("text", base_url=sim.base_url, api_key=KEY, cache=False, progress=False)
        seen += [str(quota.value), repr(quota.value), *traceback.format_exception(quota.value)]
    seen += [r.getMessage() for r in caplog.records]
    seen += [caplog.text]
    assert any("retrying" in r.getMessage() for r in caplog.records)  # DEBUG lines were there
    for text in seen:
        assert KEY not in text
        assert KEY[8:30] not in text  # not even a fragment
    for path in tmp_path.iterdir():
        assert KEY.encode() not in path.read_bytes(), path.name


def test_secret_does_not_print_or_pickle() -> None:
    """ApiConfig keeps the key in a Secret that neither prints nor pickles."""
    import pickle

    api = dfbatch.ApiConfig.resolve(base_url="http://127.0.0.1:1/v1", api_key=KEY)
    assert KEY not in repr(api) and KEY not in str(api.api_key) and KEY not in f"{api!r}"
    with pytest.raises(TypeError):
        pickle.dumps(api.api_key)


def test_base_url_credentials_are_redacted() -> None:
    """user:password@ in a base URL is refused, and the refusal never shows the password."""
    with pytest.raises(dfbatch.ConfigurationError, match="credentials") as caught:
        dfbatch.ApiConfig.resolve(base_url="https://user:hunter2@proxy.example/v1")
    assert "hunter2" not in str(caught.value)
