"""Bastion: a zero-trust bastion gateway (one port, recorded sessions, multi-level admission)."""

import warnings

__version__ = "0.1.0"

# cryptography 51 deprecates DSA, and asyncssh names cryptography's DSA classes as it is imported, so
# every command printed five warning lines ahead of its one line of output or error. The gateway never
# offers or accepts DSA keys (bastion/ssh_algorithms.py); only that warning, from asyncssh, is silenced.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")
