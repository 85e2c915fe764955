"""Audit: typed events, the hash-chained log, and its verification."""
