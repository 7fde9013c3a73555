"""Interleaved timing (A B A B …, rotating the order each round) and round-trip counting."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field

import numpy as np

from .impls import Runner
from .proxy import CountingProxy


@dataclass
class Budget:
    calls: int  # rounds at most
    seconds: float  # wall time per implementation and cell (after min_calls)
    min_calls: int
    warmup: int


@dataclass
class Cell:
    scenario: str
    length: int
    impl: str
    n: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    memory_p50_ms: float | None = None  # turn: time spent in the history object
    memory_p99_ms: float | None = None
    cpu_p50_ms: float | None = None  # CPU time of the calling thread (not wall)
    cpu_mean_ms: float | None = None
    samples: list[float] = field(default_factory=list, repr=False)  # seconds, in round order
    cpu_samples: list[float] = field(default_factory=list, repr=False)


def _stats(values: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.mean())


def _min_calls(budget: Budget, runner: Runner, length: int) -> int:
    """Calls at least: a few more for whole-history reads up to 5 000 messages."""
    if runner.heavy and length <= 5000:
        return budget.min_calls + 4
    return budget.min_calls


def time_cell(scenario: str, length: int, runners: dict[str, Runner], budget: Budget) -> list[Cell]:
    """Time every runner of one (scenario, length), interleaved."""
    for runner in runners.values():
        for _ in range(budget.warmup if not runner.heavy else 1):
            runner.before()
            runner.call()
            runner.after()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    memory: dict[str, list[float]] = {name: [] for name in runners}
    wall = dict.fromkeys(runners, 0.0)
    active = list(runners)
    gc.collect()
    rounds = 0
    while active and rounds < budget.calls:
        shift = rounds % len(active)
        for name in active[shift:] + active[:shift]:
            runner = runners[name]
            w0 = time.perf_counter()
            runner.before()
            c0 = time.thread_time()
            t0 = time.perf_counter()
            runner.call()
            t1 = time.perf_counter()
            c1 = time.thread_time()
            runner.after()
            wall[name] += time.perf_counter() - w0
            samples[name].append(t1 - t0)
            cpu[name].append(c1 - c0)
            memory[name].append(runner.clock[0])
        rounds += 1
        active = [
            name
            for name in active
            if len(samples[name]) < _min_calls(budget, runners[name], length)
            or wall[name] < budget.seconds
        ]
    cells = []
    for name, values in samples.items():
        p50, p99, mean = _stats(values)
        cell = Cell(scenario, length, name, len(values), p50, p99, mean, samples=values)
        cell.cpu_p50_ms, _, cell.cpu_mean_ms = _stats(cpu[name])
        cell.cpu_samples = cpu[name]
        if scenario == "turn" and any(memory[name]):
            cell.memory_p50_ms, cell.memory_p99_ms, _ = _stats(memory[name])
        cells.append(cell)
    return cells


@dataclass
class RoundTrips:
    scenario: str
    length: int
    impl: str
    calls: int
    redis: float
    sql: float
    connections: float


def count_cell(
    scenario: str,
    length: int,
    runners: dict[str, Runner],
    redis_proxy: CountingProxy,
    pg_proxy: CountingProxy,
    calls: int,
) -> list[RoundTrips]:
    """Round trips per call of each runner (its clients go through the proxies)."""
    out = []
    for name, runner in runners.items():
        n = 2 if runner.heavy else calls
        for _ in range(2):  # connect, load scripts, prepare: steady state only
            runner.before()
            runner.call()
            runner.after()
        r0, p0 = redis_proxy.snapshot(), pg_proxy.snapshot()
        for _ in range(n):
            runner.before()
            runner.call()
            runner.after()
        time.sleep(0.02)  # let the pump threads see the last replies
        r1, p1 = redis_proxy.snapshot(), pg_proxy.snapshot()
        out.append(
            RoundTrips(
                scenario,
                length,
                name,
                n,
                (r1.round_trips - r0.round_trips) / n,
                (p1.round_trips - p0.round_trips) / n,
                (r1.connections - r0.connections + p1.connections - p0.connections) / n,
            )
        )
    return out
