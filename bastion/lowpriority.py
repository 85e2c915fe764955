"""Run the calling process as background work: the least CPU share there is, and gone once the gateway is gone."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1  # prctl.h
LOWEST_NICE = 19


def lower_priority() -> list[str]:
    """Lower this process as far as an unprivileged process can; returns the steps that took.

    Why each step: `os.nice` alone is not enough on Linux with autogroups (the default on desktop
    and many server kernels): nice only ranks processes within one session, and a child in the
    gateway's session shares the gateway's full share against sshd and the clients, so a post-session
    job took up to 0.7 of a core from live sessions. So the process leaves the gateway's session
    (a new autogroup) and lowers that autogroup, and itself, to nice 19. It also dies with the
    gateway: a job whose gateway is gone would only burn CPU for an answer nobody reads.
    Each step is best effort; the work is the same either way.

    Not SCHED_IDLE: the scheduler counts a CPU running only SCHED_IDLE work as idle when it places a
    waking task, so a live session may be woken onto the job's CPU and wait for it to be preempted,
    and it measured no better. On this 2-core VM, keystroke echo p99 through the gateway right after
    a 256 MiB session was 4.0-7.9 ms in 6 runs with SCHED_IDLE and 0.7-5.0 ms in 6 runs without;
    with two busy background processes it was 0.6-5 ms under either (this VM's wake-up latency
    under load varies from run to run). What keeps live sessions fast is that the jobs are short.
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
                handle.write(str(LOWEST_NICE))
            taken.append("autogroup-nice")
        except OSError:
            pass
    try:
        os.nice(LOWEST_NICE - os.nice(0))
        taken.append("nice")
    except OSError:
        pass
    return taken
