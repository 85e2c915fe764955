"""Bastion: a zero-trust bastion gateway (one port, recorded sessions, multi-level admission)."""

__version__ = "0.1.0"
