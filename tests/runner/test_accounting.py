"""What the kernel reports at exit is the command's only when it cannot be the runner's."""

from __future__ import annotations

import resource

from cronbus.runner.processes import TreeUsage


def _rusage(maxrss_kib: int, cpu_s: float = 0.5) -> resource.struct_rusage:
    fields = [0.0] * 16
    fields[0] = cpu_s
    fields[2] = maxrss_kib
    return resource.struct_rusage(fields)


def test_a_childs_maxrss_up_to_the_runners_own_peak_is_not_the_commands():
    runner_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    usage = TreeUsage(pid=1)
    usage.include(_rusage(runner_peak_kib))
    assert usage.peak_rss_bytes is None
    assert usage.cpu_ms == 500.0
    # A figure no process forked from the runner could start with is the command's own.
    usage.include(_rusage(runner_peak_kib + 50 * 1024))
    assert usage.peak_rss_bytes == (runner_peak_kib + 50 * 1024) * 1024
