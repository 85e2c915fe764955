"""Where sslyze is: its own venv (`make sslyze`), since it pins an older cryptography than ours."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SSLYZE_VENV = ROOT / ".venv-sslyze"


def sslyze_command() -> list[str] | None:
    """The argv prefix that runs sslyze, or None when `make sslyze` has not been run."""
    executable = SSLYZE_VENV / "bin" / "sslyze"
    if not os.access(executable, os.X_OK):
        return None
    # Through the venv's python rather than the console script, so a moved checkout (stale
    # shebang) still works.
    return [str(SSLYZE_VENV / "bin" / "python"), "-m", "sslyze"]
