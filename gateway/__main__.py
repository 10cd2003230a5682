"""``python -m gateway`` is the ``mailgate`` command."""

from gateway.cli.main import main

raise SystemExit(main())
