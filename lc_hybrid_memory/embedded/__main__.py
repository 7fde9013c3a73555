"""``python -m lc_hybrid_memory.embedded stop DIR``: stop the embedded servers of ``DIR`` unless a
process still uses them (``make reset`` runs it before erasing ``.data``)."""

from __future__ import annotations

import sys

from .shared import EmbeddedServers, ServersInUseError


def main(argv: list[str] | None = None) -> int:
    """``python -m lc_hybrid_memory.embedded stop DIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "stop":
        print("usage: python -m lc_hybrid_memory.embedded stop DATA_DIR", file=sys.stderr)
        return 2
    try:
        stopped = EmbeddedServers.stop_unused(args[1])
    except ServersInUseError:
        print(
            f"The embedded servers under {args[1]} are in use (make run, make chat, "
            "hybrid-memory ...): stop those processes first (Ctrl-C).",
            file=sys.stderr,
        )
        return 1
    print(f"stopped the embedded servers under {args[1]}" if stopped else "no server running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
