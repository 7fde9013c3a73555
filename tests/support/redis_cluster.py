"""A real Redis Cluster of embedded redis-server processes on loopback, for the cluster tests."""

from __future__ import annotations

import random
import socket
import subprocess
import time
from pathlib import Path

from lc_hybrid_memory.embedded import EmbeddedRedis


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randint(20000, 55000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class EmbeddedRedisCluster:
    """A real Redis Cluster of ``masters`` redis-server processes on loopback (no replicas)."""

    def __init__(self, data_dir: str | Path, *, masters: int = 3) -> None:
        self.data_dir = Path(data_dir)
        self.nodes = [
            EmbeddedRedis(
                self.data_dir / f"node{i}",
                port=free_cluster_port(),
                extra_args=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"],
            )
            for i in range(masters)
        ]

    @property
    def url(self) -> str:
        """A URL of one node; cluster clients discover the others."""
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> EmbeddedRedisCluster:
        """Start the nodes, assign the 16384 slots, and wait until the cluster is ok."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()  # never leave half a cluster running
            raise
        return self

    def _start(self, timeout: float) -> None:
        import redis

        for node in self.nodes:
            node.start()
        cli = str(Path(EmbeddedRedis.binary()).with_name("redis-cli"))
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            client = redis.Redis(port=node.port)
            try:
                while client.cluster("info").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        raise TimeoutError("the embedded Redis Cluster did not become ok")
                    time.sleep(0.1)
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
