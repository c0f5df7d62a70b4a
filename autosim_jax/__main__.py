"""``python -m autosim_jax`` is the ``autosim`` command."""

from .cli import main

raise SystemExit(main())
