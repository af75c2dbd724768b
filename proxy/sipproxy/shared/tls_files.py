"""TLS contexts built from PEM files and built again when the files change, so that a rotated certificate is
used by the next connection without a restart. Used by the proxy's MI server and by the operator's MI client.

Kubernetes updates a mounted Secret (cert-manager renewing a certificate, `kubectl apply` of a new one) by
writing a new directory and swapping a symlink, so every file of the Secret changes at once and a path
resolves either to the old files or to the new ones. A change is noticed by `os.stat` of each path (it
follows the symlinks): device, inode, size and modification time. The check costs a few `stat` calls and runs
when a context is asked for, i.e. once per TLS connection, which the MI's rate of calls makes negligible.

Files that do not make a context (a key that does not match its certificate while a careless writer is
half-way through, an empty file) leave the previous context in use; the failure is logged once per change
and the files are tried again when they change again.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable, Sequence

log = logging.getLogger("sipproxy.tls")

Signature = tuple[tuple[int, int, int, int], ...]


def files_signature(paths: Sequence[str]) -> Signature:
    """What identifies the files' current contents without reading them; OSError when one is missing."""
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class ReloadingContext:
    """`current()` is the context built from the files as they are now (or the last one that could be built).

    The first build happens in the constructor and its error (OSError, ssl.SSLError, ValueError) is raised to
    the caller: a start-up with unusable files must fail and say why."""

    def __init__(self, paths: Sequence[str], build: Callable[[], ssl.SSLContext], what: str) -> None:
        self.paths = tuple(paths)
        self.what = what
        self._build = build
        self._signature = files_signature(self.paths)
        self._context = build()
        self._refused: Signature | None = None
        self.reloads = 0

    def current(self) -> ssl.SSLContext:
        try:
            signature = files_signature(self.paths)
        except OSError as exc:
            if self._refused is None:
                log.warning("%s: keeping the loaded certificate: %s", self.what, exc)
                self._refused = ()
            return self._context
        if signature in (self._signature, self._refused):
            return self._context
        try:
            context = self._build()
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("%s: the changed files do not load, keeping the previous ones: %s", self.what, exc)
            self._refused = signature
            return self._context
        self._context, self._signature, self._refused = context, signature, None
        self.reloads += 1
        log.info("%s: certificate files changed, new connections use them", self.what)
        return context
