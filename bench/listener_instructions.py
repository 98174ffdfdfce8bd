"""Instructions fabwatch executes per TMF event, counted by callgrind: a steady A/B of two versions.

Wall-clock and CPU-time figures on a shared machine move by a third from one minute to the next
(`sum(range(1000))` has taken 16 to 27 µs here), which hides a change of 10 %. This counts the
instructions of `bench/listener_floor.py`'s `pipeline` mode (the events port's protocol objects
fed requests in-process, 128 at a time, each group committed to a real record store with
`synchronous=FULL`: all of fabwatch's work for an event but the kernel's and libuv's) under
`valgrind --tool=callgrind`, at two event counts; the difference divided by the difference of
counts is the cost of one event, start-up and imports cancelled out. The requests are made
beforehand and read from a file, so making them costs nothing per event in the process counted.
The same count twice differs by well under 0.1 %. Each `--tree` (a checkout, e.g. a `git worktree`
of the base commit) is counted in turn, with this script's interpreter.

Instructions are not time: cache misses, branch mispredictions and the kernel's work (the
socket's, the fsync's) are not in them. Use them to compare versions of the code, and
`bench/listener_floor.py` and `bench/tmf_listener.py` for rates.

    git worktree add /tmp/base HEAD~1
    .venv/bin/python bench/listener_instructions.py --tree . --tree /tmp/base
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOOR = ROOT / "bench" / "listener_floor.py"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from listener_floor import TREE_VARIABLE, requests_file  # noqa: E402


def instructions(tree: str, events: int, requests: Path, connections: int) -> int:
    """Instructions of one `pipeline` run of `events` events with `tree`'s fabwatch code."""
    with tempfile.TemporaryDirectory(prefix="fabwatch-bench-instructions-") as directory:
        out = Path(directory) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, str(FLOOR),
                   "--pipeline", "--events", str(events), "--connections", str(connections),
                   "--requests", str(requests), "--dir", directory]
        env = {"PATH": "/usr/bin:/bin", TREE_VARIABLE: str(Path(tree).resolve()), "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        for line in out.read_text().splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit(f"callgrind wrote no total for {tree}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", dest="trees", help="checkout to count (repeat; default: this one)")
    parser.add_argument("--events", type=int, nargs=2, default=[2_000, 6_000], metavar=("FEW", "MANY"))
    parser.add_argument("--connections", type=int, default=128)
    a = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian package valgrind)")
    trees = a.trees or [str(ROOT)]
    few, many = a.events
    per_event: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="fabwatch-bench-instructions-") as directory:
        requests = Path(directory) / "requests"
        requests_file(requests, many)
        for tree in trees:
            instructions(tree, 10, requests, a.connections)  # warm-up: the first run compiles what changed
            counts = [instructions(tree, n, requests, a.connections) for n in (few, many)]
            per_event[tree] = (counts[1] - counts[0]) / (many - few)
            print(f"{tree}: {counts[0]:,} instructions for {few:,} events, {counts[1]:,} for {many:,}", flush=True)
    print(f"\ncommand: .venv/bin/python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    print("\n| tree | instructions per event | against tree 1 |\n|---|---|---|")
    first = per_event[trees[0]]
    for tree in trees:
        print(f"| {tree} | {per_event[tree]:,.0f} | {per_event[tree] / first:.3f} |")


if __name__ == "__main__":
    main()
