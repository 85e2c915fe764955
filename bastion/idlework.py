"""Run the calling process as idle work: CPU no live session wants, and gone once the gateway is gone."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # prctl.h
IDLE_NICE = 19


def become_idle_work() -> list[str]:
    """Lower this process as far as an unprivileged process can; returns the steps that took.

    Why each step: `os.nice` alone is not enough on Linux with autogroups (the default on desktop
    and many server kernels): nice only ranks processes within one session, and a child in the
    gateway's session shares the gateway's full share against sshd and the clients, so a post-session
    job took up to 0.7 of a core from live sessions. So the process leaves the gateway's session
    (a new autogroup), lowers that autogroup to nice 19, and takes the SCHED_IDLE policy (it runs
    only when a CPU would otherwise idle, and a waking live task preempts it at once). It also dies
    with the gateway: a job whose gateway is gone would only burn CPU for an answer nobody reads.
    Each step is best effort; the work is the same either way.
    """
    taken: list[str] = []
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            taken.append("parent-death")
            if os.getppid() != parent:  # the parent died before the signal was armed
                os._exit(1)
    except (OSError, AttributeError):
        pass
    try:
        os.setsid()
    except OSError:
        pass  # already leading a process group (started with start_new_session)
    if os.getsid(0) == os.getpid():
        taken.append("own-session")
        try:
            # Only in a session of our own: in the gateway's, this would lower the gateway too.
            with open("/proc/self/autogroup", "w") as handle:
                handle.write(str(IDLE_NICE))
            taken.append("autogroup-nice")
        except OSError:
            pass
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        taken.append("sched-idle")
    except (OSError, AttributeError):
        pass
    try:
        os.nice(IDLE_NICE - os.nice(0))
        taken.append("nice")
    except OSError:
        pass
    return taken
