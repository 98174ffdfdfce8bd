"""The CPU OTLP export adds to fabwatch's steady sampling: two `fabwatch serve`, side by side in one run.

Both serve the bundled operator inventory (examples/operator.yaml) on the same simulated SQLite
database (backfilled `--days`, written live by the simulator during the run), sampling every
`--interval` seconds; one also pushes over OTLP (switched on by the standard `OTEL_*` variables
alone) every `--export-interval` seconds to a receiver on loopback that decodes each request with
the official protobuf messages. After `--warmup` seconds (the first, full-window samples), the CPU
time of each process (user + system, every thread, /proc) is read over `--rounds` windows of
`--seconds`, with the number of sampling cycles each ran; both run at the same time, so machine noise
hits both alike. Reports JSON: CPU seconds, cycles, CPU per cycle for each, the ratio on/off over
all rounds (goal: at most 1.10) and each round's (their spread shows the noise: /proc counts 10 ms ticks).

    .venv/bin/python bench/otlp.py --seconds 60 --out /tmp/otlp.json
"""

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from proc import cpu_seconds, interpreter  # noqa: E402

from tests.exporters.otlp_receiver import Receiver, metrics_of  # noqa: E402
from tests.servers import free_port  # noqa: E402

FABWATCH = [sys.executable, "-m", "app.cli"]
INVENTORY = ROOT / "examples" / "operator.yaml"
CYCLES = 'fab_source_sample_duration_seconds_count{source="operator"}'


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def cycles(port: int) -> float:
    """Sampling cycles run so far, read from the service's own /metrics."""
    _, text = get(f"http://127.0.0.1:{port}/metrics")
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(CYCLES))


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"fabwatch on port {port} not ready (exit code {proc.poll()})")
        time.sleep(0.2)


def start_serve(tmp: Path, name: str, env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    out = log.open("wb")
    proc = subprocess.Popen([*FABWATCH, "serve", "-c", str(INVENTORY), "--listen", f"127.0.0.1:{port}",
                             "--state", str(tmp / f"{name}-state.db")], cwd=ROOT, env={**os.environ, **env},
                            stdout=out, stderr=subprocess.STDOUT)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def measure(a: argparse.Namespace, tmp: Path, receiver: Receiver) -> dict[str, Any]:
    dsn = f"sqlite+aiosqlite:///{tmp / 'operator.db'}"
    subprocess.run([*FABWATCH, "simulate", "--dsn", dsn, "--days", str(a.days)], cwd=ROOT, check=True,
                   capture_output=True, timeout=600)
    base = {"FABWATCH_DEMO_DSN": dsn, "FABWATCH_INTERVAL": f"{a.interval}s", "FABWATCH_LOG_LEVEL": "warning"}
    otel = {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_METRIC_EXPORT_INTERVAL": str(int(a.export_interval * 1000))}
    live = subprocess.Popen([*FABWATCH, "simulate", "--dsn", dsn, "--live",
                             "--duration", str(a.warmup + a.seconds * a.rounds + 120)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = {"off": start_serve(tmp, "off", base, tmp / "off.log"),
             "on": start_serve(tmp, "on", {**base, **otel}, tmp / "on.log")}
    try:
        for proc, port in procs.values():
            wait_ready(port, proc, 180)
        time.sleep(a.warmup)
        marks = [({k: (cpu_seconds(p.pid), cycles(port)) for k, (p, port) in procs.items()}, len(receiver.received))]
        for _ in range(a.rounds):
            time.sleep(a.seconds)
            marks.append(({k: (cpu_seconds(p.pid), cycles(port)) for k, (p, port) in procs.items()},
                          len(receiver.received)))
    finally:
        for proc, _ in procs.values():
            stop(proc)
        stop(live)
    (before, exports_before), (after, exports_after) = marks[0], marks[-1]
    exports = exports_after - exports_before
    result: dict[str, Any] = {}
    for key in procs:
        cpu, ran = after[key][0] - before[key][0], after[key][1] - before[key][1]
        result[key] = {"cpu_seconds": round(cpu, 3), "cycles": ran,
                       "cpu_ms_per_cycle": round(1000 * cpu / ran, 2) if ran else None}
    result["rounds_on_off"] = [round((b[0]["on"][0] - a_[0]["on"][0]) / (b[0]["off"][0] - a_[0]["off"][0]), 3)
                               for a_, b in itertools.pairwise(marks)]
    last = metrics_of(receiver.received[-1].request) if receiver.received else {}
    result["on"].update(exports=exports, metrics_per_export=len(last),
                        points_per_export=sum(len(getattr(m, m.WhichOneof("data")).data_points) for m in last.values()))
    result["cpu_ratio_on_off"] = round(result["on"]["cpu_seconds"] / result["off"]["cpu_seconds"], 3)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=float, default=30.0, help="days of simulated history to backfill")
    ap.add_argument("--interval", type=float, default=5.0, help="sampling interval, seconds")
    ap.add_argument("--export-interval", type=float, default=5.0,
                    help="OTLP export interval, seconds (OTel's default is 60: this is the heavy case)")
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--seconds", type=float, default=60.0, help="measured time of a round (bounded: at most 600)")
    ap.add_argument("--rounds", type=int, default=1, help="measured rounds, one after the other (at most 10)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    a.seconds, a.rounds = min(a.seconds, 600.0), max(1, min(a.rounds, 10))
    receiver = Receiver()
    receiver.start()
    try:
        with tempfile.TemporaryDirectory(prefix="fabwatch-otlp-bench-") as tmp:
            result = measure(a, Path(tmp), receiver)
    finally:
        receiver.stop()
    result["settings"] = {k: v for k, v in vars(a).items() if k != "out"}
    result["python"] = interpreter(sys.executable)
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
