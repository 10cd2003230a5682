"""``python -m gateway`` is the ``mailgate`` command."""

from gateway.cli import main

raise SystemExit(main())
