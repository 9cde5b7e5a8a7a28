"""The simulator for ``bench/cli_bench.py``: ``python -m dfbatch.testing``, under this name.

A process of its own, as in the other benchmarks; started through this file so that its
command line is the CLI benchmark's own (a clean-up of other benchmarks' simulators by name
leaves it running mid-measurement).

    python bench/_cli_sim.py --port 0 --rpm 1500 --tpm 6250000
"""

from __future__ import annotations

from dfbatch.testing.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
