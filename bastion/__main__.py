"""Allow `python -m bastion`."""

from bastion.cli import main

raise SystemExit(main())
