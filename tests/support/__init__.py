"""Test support: databases, a real sshd target, the gateway in a subprocess, and client helpers."""
