"""Session fixtures: the recorder's real environment (vault, node key, migrated SQLite, recording store)."""

from tests.unit.recorder.conftest import env  # noqa: F401  (re-exported fixture)
