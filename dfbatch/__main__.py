"""``python -m dfbatch``: the same as the ``dfbatch`` command."""

from ._cli import main

raise SystemExit(main())
