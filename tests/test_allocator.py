"""Freed memory kept in the process while timing: counted in page faults, not seconds."""
import os
import subprocess
import sys
import textwrap

import pytest

from cait_cli.pipeline.measuring import allocator

# Allocates and frees a 64 MiB tensor five times and prints the page faults that cost, before and
# after keep_freed_memory() (in a child, so the test process keeps its own malloc settings).
CHILD = textwrap.dedent("""
    import resource, torch
    from cait_cli.pipeline.measuring.allocator import keep_freed_memory

    def faults():
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            block = torch.ones(16 * 2**20)
            del block
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    faults()
    before = faults()
    kept = keep_freed_memory()
    faults()
    print(before, kept, faults())
""")


def child(env=None):
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, env=env)
    before, kept, after = out.stdout.split()
    return int(before), kept == "True", int(after)


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc's malloc only")
def test_kept_memory_is_not_faulted_in_again():
    before, kept, after = child()
    assert kept
    assert before > 5 * 10_000  # 64 MiB is 16,384 pages: glibc faulted them in on every allocation
    assert after < before / 100


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc's malloc only")
def test_system_malloc_can_be_kept():
    before, kept, after = child({**os.environ, "CAIT_SYSTEM_MALLOC": "1"})
    assert not kept
    assert after > before / 2
