"""Child processes die with their parent.

Why: a sweep's workers (``probe --procs N``) and a watch's probes write measurements to
files their parent reads. If the parent is killed (kill -9, OOM) and the children run on,
a restarted parent races them: records are doubled, or a round is judged while it is
still being written. Linux's parent-death signal ends a child the moment its parent dies,
whatever killed the parent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int | None = None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies.

    ``parent`` is the pid the caller expects as parent: if it already died before the
    request (a race at fork), exit now instead of running orphaned.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:  # pragma: no cover
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def preexec(parent: int) -> None:
    """For ``subprocess.Popen(preexec_fn=...)``: the child dies with ``parent``."""
    die_with_parent(parent)
