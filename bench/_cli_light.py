"""Launch ``dfbatch`` without pandas: what the console script does once ``dfbatch/__init__.py``
stops importing the DataFrame accessor (and with it pandas and pyarrow, ~95 MB of resident
memory) in the command line's process, as proposed in the CLI's closing note.

``dfbatch run`` never touches a DataFrame. This launcher stands in a placeholder for the
accessor module before the package is imported, then calls the real ``dfbatch._cli.main``:
every line of the command's own code runs unchanged. Used by ``bench/cli_bench.py`` only.

    python bench/_cli_light.py run requests.jsonl -o out.jsonl ...
"""

from __future__ import annotations

import sys
import types

sys.modules["dfbatch._accessor"] = types.ModuleType("dfbatch._accessor")

from dfbatch._cli import main  # noqa: E402

if __name__ == "__main__":
    status = main()
    if "pandas" in sys.modules:
        print("_cli_light: pandas was imported after all", file=sys.stderr)
    raise SystemExit(status)
