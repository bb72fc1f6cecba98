"""How CPU training uses the machine: how many threads, when to back off, and memory reuse.

Three measurements on 2-vCPU VMs (BENCHMARKS.md, "Training throughput") shaped this module:
- OpenMP threads that sleep between parallel regions (`OMP_WAIT_POLICY=PASSIVE`) must be woken for
  each of the thousands of mid-sized operations of a training step; in a VM every wake-up is an
  inter-processor interrupt, and a stage-2 epoch ran about 1.4x slower than with libgomp's default
  short spin. Spinning threads, though, are a disaster next to another busy process: a 2-thread
  training beside one busy loop ran 7x slower than alone, one thread ran at full speed. So training
  spins (libgomp's default), and `ThreadGovernor` drops to one thread while other work competes for
  the cores, and back once a core is free again.
- A training step allocates and frees gigabytes of activations. glibc hands large blocks back to
  the kernel (mmap / trim), so the next step faults every page in again, zeroed: 1.5M page faults
  and a quarter of the CPU time in the kernel for 60 documents. `retain_freed_memory` keeps freed
  memory in the process for reuse.
- `available_cpus`: the cores this process may actually use (affinity, cgroup quota), not the host's.
"""
from __future__ import annotations

import ctypes
import functools
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch


def available_cpus() -> int:
    """CPUs this process may actually use: its affinity mask, capped by a cgroup CPU quota.

    `os.cpu_count()` is the host's count; a container limited by `cpu.max` (cgroup v2) or
    `cpu.cfs_quota_us` (v1), or a process pinned by taskset, gets less, and torch's default of one
    thread per host core then oversubscribes the cores it has."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = None
    try:
        fields = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if fields and fields[0] != "max":
            quota = int(fields[0]) / int(fields[1])
    except (OSError, ValueError, IndexError):
        try:
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if q > 0 and p > 0:
                quota = q / p
        except (OSError, ValueError):
            pass
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def choose_threads(requested: int | None, local_world: int = 1, load: float | None = None) -> int:
    """Intra-op threads for one training process: `requested` if set, else its share of the
    available CPUs (`available_cpus` / processes on this node), less the CPUs other work already
    keeps busy (the 1-minute load average, `load`, measured before this process starts its own
    work), never below one. Work that starts later is `ThreadGovernor`'s concern."""
    if requested:
        return requested
    share = max(1, available_cpus() // max(1, local_world))
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:
            load = 0.0
    # a core counts as taken by other work once the load average per process is within 0.25 of it
    busy = math.floor(load / max(1, local_world) + 0.25)
    return max(1, share - busy)


# ------------------------------------------------------------------------------ contention
def run_queue_wait() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU, summed over its
    live threads (`/proc/self/task/*/schedstat`, second field); None where the kernel does not say."""
    total, seen = 0, False
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
                seen = True
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9 if seen else None


def idle_cpu_seconds() -> float | None:
    """Idle CPU-seconds of the machine since boot (`/proc/stat`: idle + iowait); None where absent.
    In a container this is the host's count."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class ThreadGovernor:
    """Intra-op threads for a training loop: `threads` while the cores are ours, one while other work
    competes for them.

    `tick()` runs once per training step and looks at the machine every `every` seconds:
    - with several threads, if this process's threads waited for a CPU more than `wait_limit`
      thread-seconds per second (another job holds a core our spinning threads need), it drops to
      one thread;
    - with one thread, once `idle_needed` x (threads - 1) CPUs stood idle over the last look (room
      for the threads it would add) and the current hold-off has passed, it goes back to `threads`.
      A return that meets contention again within two looks doubles the hold-off (from `hold` up
      to `max_hold` seconds), so a machine that stays busy is probed rarely.
    Where the kernel gives neither signal it never changes anything. The readers and the clock are
    parameters so the decisions can be tested on made-up readings."""

    def __init__(self, threads: int, every: float = 2.0, wait_limit: float = 0.25, idle_needed: float = 0.75,
                 hold: float = 10.0, max_hold: float = 300.0,
                 waiting: Callable[[], float | None] = run_queue_wait,
                 idle: Callable[[], float | None] = idle_cpu_seconds,
                 clock: Callable[[], float] = time.monotonic,
                 set_threads: Callable[[int], None] = torch.set_num_threads):
        self.threads, self.current = threads, threads
        self.every, self.wait_limit, self.idle_needed = every, wait_limit, idle_needed
        self.base_hold, self.hold, self.max_hold = hold, hold, max_hold
        self.waiting, self.idle, self.clock, self.set_threads = waiting, idle, clock, set_threads
        self.changes: list[tuple[float, int]] = []  # (seconds since start, threads) at each change
        self.t0 = self.last = clock()
        self.last_wait, self.last_idle = waiting(), idle()
        self.demoted_at = self.promoted_at = None

    def tick(self) -> int | None:
        """Look at the machine if it is time; returns the new thread count when it changed it."""
        now = self.clock()
        dt = now - self.last
        if dt <= 0 or dt < self.every or self.threads <= 1:
            return None
        wait, idle = self.waiting(), self.idle()
        wait_rate = (wait - self.last_wait) / dt if wait is not None and self.last_wait is not None else None
        idle_rate = (idle - self.last_idle) / dt if idle is not None and self.last_idle is not None else None
        self.last, self.last_wait, self.last_idle = now, wait, idle
        if self.current > 1 and wait_rate is not None and wait_rate > self.wait_limit:
            recent = self.promoted_at is not None and now - self.promoted_at <= 2 * self.every + 1e-9
            self.hold = min(self.max_hold, self.hold * 2) if recent else self.base_hold
            self.demoted_at = now
            return self._set(1, now)
        if (self.current == 1 and idle_rate is not None and idle_rate >= self.idle_needed * (self.threads - 1)
                and now - self.demoted_at >= self.hold):
            self.promoted_at = now
            return self._set(self.threads, now)
        return None

    def _set(self, n: int, now: float) -> int:
        self.current = n
        self.set_threads(n)
        self.changes.append((round(now - self.t0, 1), n))
        return n

    def close(self) -> None:
        """Hand back the thread count the governor started with (the next stage starts from it)."""
        if self.current != self.threads:
            self.set_threads(self.threads)
            self.current = self.threads


# ------------------------------------------------------------------------------ memory
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


@functools.cache  # process-wide: once is enough
def retain_freed_memory() -> bool:
    """Keep memory the process frees for its own reuse instead of returning it to the kernel
    (glibc: no mmap for large blocks, no trimming of the heap's top). Training allocates the same
    activation sizes step after step; without this each step faults them in again. The process
    keeps its peak size until it exits, which a training process does anyway. Returns whether it
    applied (False on other C libraries)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # glibc only: mallopt's parameters are its own
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
