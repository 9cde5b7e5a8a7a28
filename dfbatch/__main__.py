"""``python -m dfbatch``: the same as the ``dfbatch`` command."""

from .cli.main import main

raise SystemExit(main())
