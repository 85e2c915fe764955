"""Benchmarks of the gateway against OpenSSH (make bench)."""

import bastion  # noqa: F401  (first: its filter for asyncssh's DSA warning holds before a bench imports asyncssh)
