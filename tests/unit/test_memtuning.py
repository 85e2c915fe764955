"""Process memory settings: start-up objects frozen out of the collector, fewer young collections."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json
from bastion.memtuning import GC_THRESHOLDS, tune_process
before = (gc.get_threshold(), gc.get_freeze_count())
allocator = tune_process()
print(json.dumps({"before": before, "after": [gc.get_threshold(), gc.get_freeze_count()],
                  "wanted": GC_THRESHOLDS, "allocator": allocator}))
"""


def test_tuning_freezes_what_start_up_made_and_raises_the_young_threshold():
    # In a child: the settings are process-wide and must not leak into the test run.
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["before"][1] == 0
    assert report["after"][0] == report["wanted"] != report["before"][0]
    assert report["after"][1] > 1000  # the imported modules' objects are never scanned again
    assert report["allocator"] is True  # glibc took the malloc thresholds (this is a glibc system)
