"""How training uses the CPU (docre.training.cpu): the thread governor's decisions on made-up readings,
its signals on this machine's kernel, under real contention, and memory retention."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from docre.training import cpu


class Machine:
    """Readings the governor sees: our threads' run-queue wait and the machine's idle CPU-seconds,
    advanced by `run(seconds, wait_rate, idle_rate)`."""

    def __init__(self):
        self.now, self.wait, self.idle, self.threads = 0.0, 0.0, 0.0, []

    def run(self, seconds: float, wait_rate: float, idle_rate: float) -> None:
        self.now += seconds
        self.wait += wait_rate * seconds
        self.idle += idle_rate * seconds

    def governor(self, threads: int = 2, **kw) -> cpu.ThreadGovernor:
        return cpu.ThreadGovernor(threads, waiting=lambda: self.wait, idle=lambda: self.idle,
                                  clock=lambda: self.now, set_threads=self.threads.append, **kw)


def test_contention_drops_to_one_thread_and_a_free_core_brings_the_threads_back():
    m = Machine()
    g = m.governor(2, every=2.0, hold=10.0)
    m.run(1.0, 0.9, 0.0)
    assert g.tick() is None and m.threads == []  # under `every` seconds since the last look: no look
    m.run(1.0, 0.0, 0.0)
    assert g.tick() == 1 and m.threads == [1]  # 0.9 thread-s waited over 2 s: 0.45 > 0.25
    for _ in range(6):  # the other job stays: no idle core, one thread
        m.run(2.0, 0.0, 0.05)
        assert g.tick() is None
    assert g.current == 1
    m.run(2.0, 0.0, 1.0)  # it left: a whole core idle, the 10 s hold-off long past
    assert g.tick() == 2 and m.threads == [1, 2]
    assert g.changes == [(2.0, 1), (16.0, 2)]


def test_a_quiet_machine_changes_nothing():
    m = Machine()
    g = m.governor(2)
    for _ in range(20):
        m.run(2.0, 0.05, 0.02)  # a little waiting (system daemons, our own Python threads)
        assert g.tick() is None
    assert m.threads == [] and g.current == 2


def test_the_hold_off_doubles_when_a_return_meets_contention_again_and_resets_after_a_stable_one():
    m = Machine()
    g = m.governor(2, every=2.0, hold=10.0, max_hold=30.0)
    m.run(2.0, 1.0, 0.0)
    assert g.tick() == 1  # t = 2, hold 10
    m.run(8.0, 0.0, 1.0)
    assert g.tick() is None  # t = 10: a core is idle, but only 8 s since the drop
    m.run(2.0, 0.0, 1.0)
    assert g.tick() == 2  # t = 12
    m.run(2.0, 1.0, 0.0)
    assert g.tick() == 1 and g.hold == 20.0  # t = 14: contention right after the return
    m.run(18.0, 0.0, 1.0)
    assert g.tick() is None  # t = 32: 18 s < 20 s
    m.run(2.0, 0.0, 1.0)
    assert g.tick() == 2  # t = 34
    m.run(2.0, 1.0, 0.0)
    assert g.tick() == 1 and g.hold == 30.0  # capped at max_hold
    m.run(30.0, 0.0, 1.0)
    assert g.tick() == 2  # t = 66
    for _ in range(3):  # a return that holds
        m.run(2.0, 0.0, 0.0)
        assert g.tick() is None
    m.run(2.0, 1.0, 0.0)
    assert g.tick() == 1 and g.hold == 10.0  # contention long after the return: a new episode


def test_a_return_needs_room_for_every_thread_it_adds():
    m = Machine()
    g = m.governor(4, every=2.0, hold=0.0)
    m.run(2.0, 2.0, 0.0)
    assert g.tick() == 1
    m.run(2.0, 0.0, 1.5)  # 1.5 idle CPUs: not room for 3 more threads
    assert g.tick() is None
    m.run(2.0, 0.0, 3.0)
    assert g.tick() == 4


def test_without_signals_or_with_one_thread_nothing_changes_and_close_restores():
    m = Machine()
    blind = cpu.ThreadGovernor(2, waiting=lambda: None, idle=lambda: None, clock=lambda: m.now,
                               set_threads=m.threads.append)
    single = m.governor(1)
    for _ in range(5):
        m.run(2.0, 5.0, 0.0)
        assert blind.tick() is None and single.tick() is None
    g = m.governor(2)
    m.run(2.0, 5.0, 0.0)
    assert g.tick() == 1
    g.close()
    assert m.threads == [1, 2] and g.current == 2


def test_the_kernel_signals_are_readable_and_count_up():
    wait, idle = cpu.run_queue_wait(), cpu.idle_cpu_seconds()
    if wait is None or idle is None:
        pytest.skip("no /proc/self/task/*/schedstat or /proc/stat here")
    time.sleep(0.3)
    assert cpu.run_queue_wait() >= wait and cpu.idle_cpu_seconds() >= idle
    assert cpu.idle_cpu_seconds() - idle > 0  # this test sleeps: some CPU was idle


@pytest.mark.skipif(cpu.run_queue_wait() is None or cpu.available_cpus() < 2, reason="needs schedstat, 2 CPUs")
def test_real_contention_is_seen_and_one_thread_taken():
    """Busy loops on every available CPU next to a 2-thread torch workload: our threads wait for a
    CPU, and the governor drops to one thread within a few looks."""
    n = cpu.available_cpus()
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = cpu.ThreadGovernor(2, every=0.5)
        a = torch.randn(256, 256)
        deadline = time.monotonic() + 20
        while g.current == 2 and time.monotonic() < deadline:
            for _ in range(20):
                a = torch.tanh(a @ a) * 0.5
            g.tick()
        assert g.current == 1 and torch.get_num_threads() == 1, g.changes
    finally:
        for p in loops:
            p.kill()
        torch.set_num_threads(before)


def test_retaining_freed_memory_applies_on_glibc():
    import platform
    applied = cpu.retain_freed_memory()
    assert applied == (platform.libc_ver()[0] == "glibc")
