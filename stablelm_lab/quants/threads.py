"""The numpy decoder's threads: numpy lets go of the GIL inside its loops, so a tensor splits over cores."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

#: Threads the numpy decoder splits a tensor over: the cores this process may run on, as torch's default.
#: Set it to 1 (``threads.THREADS = 1``) for a single thread.
THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def in_threads(work: Callable[[int, int], None], n: int, step: int) -> None:
    """``work(start, stop)`` over [0, n), split into THREADS contiguous parts (whole steps each) that run
    in parallel; the calling thread takes the first part."""
    parts = max(1, min(THREADS, -(-n // step)))
    cuts = [n * i // parts // step * step for i in range(parts)] + [n]
    if parts == 1:
        work(0, n)
        return
    key = (os.getpid(), parts - 1)  # a forked child has none of its parent's pool threads
    pool = _pools.get(key) or _pools.setdefault(key, ThreadPoolExecutor(parts - 1))
    futures = [pool.submit(work, cuts[i], cuts[i + 1]) for i in range(1, parts)]
    work(cuts[0], cuts[1])
    for future in futures:
        future.result()
