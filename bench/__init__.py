"""Benchmarks of lc-hybrid-memory against the other LangChain chat histories (``make bench``).

Run ``python -m bench`` (full, < 15 min on 2 cores) or ``python -m bench --quick`` (a few minutes).
See bench/README.md for what is measured; the numbers are in docs/performance.md.
"""
