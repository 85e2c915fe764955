"""Browser tests: Debian's Chromium through Playwright against pages served over TLS."""
