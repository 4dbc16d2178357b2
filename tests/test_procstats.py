"""
Tests for L{portunus.procstats}.
"""

from __future__ import annotations

import os
import resource

from twisted.trial.unittest import SynchronousTestCase

from portunus.procstats import ProcessStats, read_process_stats


class ReadProcessStatsTests(SynchronousTestCase):
    def setUp(self) -> None:
        if not os.path.isdir("/proc/self/fd"):
            raise self.skipTest("needs Linux /proc")

    def test_fd_open_counts_descriptors_exactly(self) -> None:
        """Opening three descriptors raises fd_open by exactly three."""
        before = read_process_stats().fd_open
        opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
        try:
            during = read_process_stats().fd_open
        finally:
            for fd in opened:
                os.close(fd)
        after = read_process_stats().fd_open
        assert before is not None
        self.assertEqual((during, after), (before + 3, before))

    def test_fd_open_matches_fstat(self) -> None:
        """fd_open is the number of descriptors fstat finds open."""
        highest = max(int(name) for name in os.listdir("/proc/self/fd"))
        expected = 0
        for fd in range(highest + 1):
            try:
                os.fstat(fd)
            except OSError:
                continue
            expected += 1
        # The listing above opened (and closed) one descriptor of its own.
        self.assertEqual(read_process_stats().fd_open, expected)

    def test_rss_is_vmrss(self) -> None:
        """rss_bytes is VmRSS of /proc/self/status in bytes, and grows with memory used."""
        before = read_process_stats().rss_bytes
        ballast = bytearray(64 * 1024 * 1024)
        for i in range(0, len(ballast), 4096):
            ballast[i] = 1
        after = read_process_stats().rss_bytes
        del ballast
        assert before is not None and after is not None
        self.assertGreater(after - before, 60 * 1024 * 1024)

    def test_limit_and_cpu(self) -> None:
        """fd_limit is the soft NOFILE limit; CPU times are this process's."""
        stats = read_process_stats()
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertEqual(stats.fd_limit, soft)
        times = os.times()
        self.assertLessEqual(stats.cpu_user_secs, times.user)
        self.assertGreater(stats.cpu_user_secs + stats.cpu_system_secs, 0)


class NoProcTests(SynchronousTestCase):
    def test_missing_proc_gives_none(self) -> None:
        """Without /proc, memory and descriptors are None, not a guess."""
        stats = read_process_stats(proc=self.mktemp())
        self.assertIsInstance(stats, ProcessStats)
        self.assertIsNone(stats.rss_bytes)
        self.assertIsNone(stats.fd_open)

    def test_status_without_vmrss(self) -> None:
        """A status file without VmRSS (a kernel thread) gives rss None."""
        root = self.mktemp()
        os.makedirs(os.path.join(root, "fd"))
        with open(os.path.join(root, "status"), "w") as f:
            f.write("Name:\tkthreadd\nState:\tS (sleeping)\n")
        self.assertIsNone(read_process_stats(proc=root).rss_bytes)

    def test_status_rss_parsed_in_kib(self) -> None:
        """VmRSS is read in kB and reported in bytes."""
        root = self.mktemp()
        os.makedirs(os.path.join(root, "fd"))
        with open(os.path.join(root, "status"), "w") as f:
            f.write("Name:\tx\nVmRSS:\t    2048 kB\nThreads:\t1\n")
        self.assertEqual(read_process_stats(proc=root).rss_bytes, 2048 * 1024)
