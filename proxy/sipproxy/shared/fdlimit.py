"""The open-files limit of a process, raised at start by the supervisor and by every worker."""

from __future__ import annotations

import resource


def raise_fd_limit() -> None:
    """Each worker holds every UDP socket (and the TCP pool every listener): allow as many as permitted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
