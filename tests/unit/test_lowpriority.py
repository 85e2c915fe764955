"""Post-session jobs run as background work: own session at autogroup nice 19, and gone with their parent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bastion.recorder import keyframes_job
from bastion.search import job as search_job

PROBE = """
import json, os
from bastion.lowpriority import lower_priority
taken = lower_priority()
try:
    autogroup = open("/proc/self/autogroup").read()
except OSError:
    autogroup = None
print(json.dumps({"taken": taken, "policy": os.sched_getscheduler(0), "nice": os.nice(0),
                  "own_session": os.getsid(0) == os.getpid(), "autogroup": autogroup}))
"""


def _autogroup(pid: int | str = "self") -> str | None:
    try:
        return Path(f"/proc/{pid}/autogroup").read_text()
    except OSError:
        return None


def test_a_job_lowers_itself_in_a_session_of_its_own_and_leaves_its_parent_as_it_was():
    before = (os.getsid(0), os.nice(0), os.sched_getscheduler(0), _autogroup())
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["policy"] == os.SCHED_OTHER  # not SCHED_IDLE: see lower_priority
    assert report["nice"] == 19
    assert report["own_session"] is True
    if before[3] is not None:  # a kernel with autogroups: the job's group is lowered, not ours
        assert report["autogroup"].rstrip().endswith("nice 19"), report
        # A process in the kernel's default group (one whose session began before autogroups, as
        # under some CI runners) reads the file as empty; the job's group is still its own.
        ours = before[3].split()[:1]
        assert report["autogroup"].split()[:1] != ours, (report, before[3])
    assert {"parent-death", "own-session", "nice"} <= set(report["taken"])
    # Nothing of it reached the parent (the gateway): same session, priority, policy and group nice.
    assert (os.getsid(0), os.nice(0), os.sched_getscheduler(0), _autogroup()) == before


ORPHAN = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import time; from bastion.lowpriority import lower_priority; lower_priority(); "
    "print('ready', flush=True); time.sleep(120)"],
    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
assert child.stdout.readline().strip() == b"ready"
print(child.pid, flush=True)
"""


def test_a_job_dies_with_its_parent():
    parent = subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True, text=True, timeout=60)
    assert parent.returncode == 0, parent.stderr
    pid = int(parent.stdout.strip())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return  # gone (and reaped by init)
        if state == "Z":
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the job outlived its parent")


@pytest.mark.parametrize("run", [
    lambda: keyframes_job.main(["/nonexistent-keys", "/nonexistent.bcast"]),
    lambda: search_job.main(["/nonexistent-keys", "/nonexistent.bcast", "s1", "shell", "00" * 32]),
], ids=["keyframes", "search"])
def test_both_post_session_jobs_lower_themselves_before_any_work(monkeypatch, run):
    calls: list[str] = []

    class Stop(Exception):
        pass

    def lowered() -> list[str]:
        calls.append("idle")
        raise Stop  # the work after it is not what this test is about

    monkeypatch.setattr(keyframes_job, "lower_priority", lowered)
    monkeypatch.setattr(search_job, "lower_priority", lowered)
    with pytest.raises(Stop):
        run()
    assert calls == ["idle"]
