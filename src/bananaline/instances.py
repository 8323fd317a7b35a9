"""Who holds a lease: a per-process instance id that another process can judge alive or gone.

Batch runs (job leases) and service workers (task leases) share one database with other
processes and hosts, so a process starting up must not take a live process's work for orphans.
An instance id is ``<machine>:<pid>:<random>``:

* ``machine`` is a short digest of the hostname, the boot id and the PID namespace, so two
  containers that share a hostname (``--network host``) never judge each other's PIDs;
* on the same machine, a PID that no longer exists means the process died (``kill -9``): its
  tasks are orphans at once, without waiting for their lease to run out;
* in this very process, only ids in :data:`LIVE_INSTANCES` are alive (tests and embedders run
  several apps in one process; an app whose lifespan never ended cleanly leaves its id behind);
* anywhere else, only the lease the owner renews can tell (``service.tasks``, ``batch.store``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from pathlib import Path

#: Instance ids of the apps alive in this process.
LIVE_INSTANCES: set[str] = set()


def _machine_tag() -> str:
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(Path(path).read_text().strip() if "boot_id" in path else os.readlink(path))
        except OSError:
            parts.append("-")
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=4).hexdigest()


MACHINE_TAG = _machine_tag()


def new_instance_id() -> str:
    """``<8 hex>:<pid>:<12 hex>``: at most 29 characters (the column holds 32)."""
    return f"{MACHINE_TAG}:{os.getpid()}:{secrets.token_hex(6)}"


def known_gone(instance_id: str) -> bool:
    """``True`` only when the owner is certainly dead; ``False`` when alive or unknowable here."""
    machine, _, rest = instance_id.partition(":")
    pid_text, _, _ = rest.partition(":")
    if machine != MACHINE_TAG or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return instance_id not in LIVE_INSTANCES
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
