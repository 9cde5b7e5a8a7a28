"""What ``import dfbatch`` loads: the accessor whatever the import order, no pandas for `run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dfbatch.testing import Simulator


def python(code: str, tmp_path: Path) -> str:
    env = {**os.environ, "DFBATCH_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_accessor_registered_when_pandas_is_imported_after_dfbatch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = python(
        "import sys, dfbatch\n"
        "print('pandas' in sys.modules)\n"
        "import pandas as pd\n"
        "print(type(pd.DataFrame({'a': [1]}).llm).__name__, type(pd.Series([1]).llm).__name__)\n"
        "print(sum(getattr(f, 'name', None) == 'pandas' for f in sys.meta_path))\n",
        tmp_path,
    )
    assert out.splitlines() == ["False", "LlmFrameAccessor LlmSeriesAccessor", "0"]


def test_accessor_registered_when_pandas_came_first(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = python(
        "import pandas as pd, dfbatch, sys\n"
        "print(type(pd.DataFrame({'a': [1]}).llm).__name__)\n"
        "print(sum(getattr(f, 'name', None) == 'pandas' for f in sys.meta_path))\n",
        tmp_path,
    )
    assert out.splitlines() == ["LlmFrameAccessor", "0"]


def test_dfbatch_run_never_loads_pandas_or_pyarrow(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """pandas+pyarrow cost ~95 MB; a million-line `dfbatch run` must stay under 150 MB."""
    requests = tmp_path / "in.jsonl"
    lines = [{"model": "text-embedding-3-small", "input": f"row {x}"} for x in range(30)]
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    with Simulator() as sim:
        printed = python(
            "import sys\n"
            "from dfbatch.cli.main import main\n"
            f"rc = main(['run', {str(requests)!r}, '-o', {str(out)!r}, '--no-progress',"
            f" '--url', {sim.base_url + '/embeddings'!r}])\n"
            "print(rc, [m for m in ('pandas', 'pyarrow') if m in sys.modules])\n",
            tmp_path,
        )
    assert printed == "0 []"
    assert len(out.read_text().splitlines()) == 30
