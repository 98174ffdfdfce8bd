"""Facts about another process for the benchmarks that load a server: its CPU time, its interpreter."""

import os
import subprocess
from pathlib import Path

_CALIBRATION = ("import sys, timeit; t = min(timeit.repeat('sum(range(1000))', number=2000, repeat=5)) / 2000; "
                "print(f'Python {sys.version.split()[0]} ({sys.executable}): sum(range(1000)) in {t * 1e6:.1f} µs')")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads; Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interpreter(python: str) -> str:
    """Which interpreter `python` is and how fast it runs plain Python (CPython builds differ up to twofold:
    a build without PGO and LTO, such as pyenv's default, is slower than a distribution's)."""
    done = subprocess.run([python, "-c", _CALIBRATION], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()
