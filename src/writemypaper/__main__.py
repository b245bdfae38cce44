"""`python -m writemypaper` is the same as the `writemypaper` command."""

from writemypaper.cli import main

raise SystemExit(main())
