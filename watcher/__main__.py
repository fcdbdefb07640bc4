"""`python -m watcher` is the `backup-watcher` command."""

from watcher.cli import main

raise SystemExit(main())
