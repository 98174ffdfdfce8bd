"""Summarise a bench/run.sh result directory: medians over repetitions (min-max) and ratios.

    .venv/bin/python bench/summary.py /tmp/fabwatch-bench/<run>
"""

import glob
import json
import os
import statistics
import sys
from collections.abc import Callable, Iterable

RECOUNT_EVERY = 10  # bench/run.sh: cycles.py --step 15 --reconcile 150
CYCLES_PER_RECOUNT = 240  # the default: reconcile 1 h, interval 15 s


def load(pattern: str) -> list[dict]:
    out = []
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            out.append(json.load(f))
    return out


def med(values: Iterable[float | None], fmt: str = "{:.2f}") -> tuple[float | None, str]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, "-"
    m = statistics.median(vals)
    text = fmt.format(m) if len(vals) == 1 else f"{fmt.format(m)} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"
    return m, text


def ratio(a: float | None, b: float | None, digits: int = 3) -> str:
    return "-" if a is None or not b else f"{a / b:.{digits}f}"


def per_rep_db(path: str) -> list[float]:
    """Median driver time per cycle (ms) of each onscrape process (cycle numbering restarts at 1)."""
    reps: list[list[float]] = []
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    for line in lines:
        d = json.loads(line)
        if d["cycle"] == 1:
            reps.append([])
        reps[-1].append(1000 * d["db_s"])
    return [statistics.median(r) for r in reps if r]


def size(run: str, db: str) -> dict[str, tuple[float | None, str]]:
    d = os.path.join(run, db)
    got: dict[str, tuple[float | None, str]] = {}
    for target in ("floor_pg", "qe_pg", "se_pg", "fabwatch_pg"):
        collect = load(f"{d}/{target}.collect.r*.json") + load(f"{d}/{target}.floor.r*.json")
        scrape = load(f"{d}/{target}.scrape.r*.json")
        got[f"{target}.collect_ms"] = med(c["collect_ms"] for c in collect)
        got[f"{target}.collect_cpu_ms"] = med(1000 * c.get("cpu_s_per_collect_schedstat", 0) for c in collect
                                              if "cpu_s_per_collect_schedstat" in c)
        got[f"{target}.p50"] = med(s["p50_ms"] for s in scrape)
        got[f"{target}.p99"] = med(s["p99_ms"] for s in scrape)
        got[f"{target}.cpu_ms"] = med((10 * s["cpu_s_per_100_schedstat"] for s in scrape), "{:.3f}")
        got[f"{target}.rss"] = med((s["peak_rss_mib"] for s in scrape), "{:.1f}")
        got[f"{target}.rss_collect"] = med((c["peak_rss_mib"] for c in collect if "peak_rss_mib" in c), "{:.1f}")
        got[f"{target}.bytes"] = med((s["bytes"] for s in scrape), "{:.0f}")
    ready: dict[str, list[float]] = {}
    if os.path.exists(f"{d}/ready.txt"):
        with open(f"{d}/ready.txt") as f:
            lines = f.read().splitlines()
        for line in lines:
            t, secs = line.split()
            ready.setdefault(t, []).append(float(secs))
    for target, vals in ready.items():
        got[f"{target}.ready"] = med(vals)
    got["fabwatch_pg.db_ms"] = med(per_rep_db(f"{d}/fabwatch_db.jsonl"))
    cycles = load(f"{d}/cycles.r*.json")
    got["cycles.first_ms"] = med(c.get("first_db_ms") for c in cycles)
    got["cycles.steady_ms"] = med(c.get("steady_db_ms") for c in cycles)
    recounts = [statistics.median(1000 * x["db_s"] for x in c["cycles"][1:] if x["i"] % RECOUNT_EVERY == 0)
                for c in cycles if len(c["cycles"]) > RECOUNT_EVERY]
    got["cycles.recount_ms"] = med(recounts)
    steady, recount = got["cycles.steady_ms"][0], got["cycles.recount_ms"][0]
    if steady is not None and recount is not None:
        amortized = ((CYCLES_PER_RECOUNT - 1) * steady + recount) / CYCLES_PER_RECOUNT
        got["cycles.amortized_ms"] = (amortized, f"{amortized:.2f}")
    return got


def table(rows: list[tuple[str, ...]]) -> None:
    for i, row in enumerate(rows):
        print("| " + " | ".join(row) + " |")
        if i == 0:
            print("|" + "---|" * len(row))


def main(run: str) -> int:
    dbs = sorted((os.path.basename(p) for p in glob.glob(f"{run}/kpi_*") if os.path.isdir(p)),
                 key=lambda n: len(n))
    sizes = {db: size(run, db) for db in dbs}
    print(f"Run: {run}. Medians over repetitions (min-max). DB time = time inside the driver's execute "
          "calls (round trips included) for fabwatch; collection wall time for the peers.\n")
    for db, g in sizes.items():
        v: Callable[[str], str] = lambda k, g=g: g.get(k, (None, "-"))[1]  # noqa: E731
        n: Callable[[str], float | None] = lambda k, g=g: g.get(k, (None, "-"))[0]  # noqa: E731
        print(f"### {db}\n")
        table([
            ("", "floor (psycopg)", "query-exporter", "prometheus-sql-exporter", "fabwatch", "fabwatch / peer"),
            ("database time per sampling cycle, ms", v("floor_pg.collect_ms"), v("qe_pg.collect_ms"),
             v("se_pg.collect_ms"), v("fabwatch_pg.db_ms"),
             f"{ratio(n('fabwatch_pg.db_ms'), n('qe_pg.collect_ms'))} of qe (goal ≤ 0.1)"),
            ("whole cycle incl. render + HTTP (on-scrape run), ms", "-", v("qe_pg.collect_ms"), "-",
             v("fabwatch_pg.collect_ms"), f"{ratio(n('fabwatch_pg.collect_ms'), n('qe_pg.collect_ms'))} of qe"),
            ("CPU per cycle (on-scrape run), ms", "-", v("qe_pg.collect_cpu_ms"), v("se_pg.collect_cpu_ms"),
             v("fabwatch_pg.collect_cpu_ms"), "-"),
            ("engine alone: first sample (full windows), ms", "-", "-", "-", v("cycles.first_ms"), "-"),
            ("engine alone: steady cycle / recount cycle / amortized (1 recount per 240), ms", "-", "-", "-",
             f"{v('cycles.steady_ms')} / {v('cycles.recount_ms')} / {v('cycles.amortized_ms')}",
             f"{ratio(n('cycles.amortized_ms'), n('qe_pg.collect_ms'))} of qe (amortized)"),
            ("CPU per scrape, ms (schedstat)", "-", v("qe_pg.cpu_ms"), v("se_pg.cpu_ms"), v("fabwatch_pg.cpu_ms"),
             f"{ratio(n('fabwatch_pg.cpu_ms'), n('se_pg.cpu_ms'))} of se (goal ≤ 0.333)"),
            ("scrape p50 / p99, ms", "-", f"{v('qe_pg.p50')} / {v('qe_pg.p99')}",
             f"{v('se_pg.p50')} / {v('se_pg.p99')}", f"{v('fabwatch_pg.p50')} / {v('fabwatch_pg.p99')}", "-"),
            ("peak RSS, MiB: serving run (collection run)", "-",
             f"{v('qe_pg.rss')} ({v('qe_pg.rss_collect')})", f"{v('se_pg.rss')} ({v('se_pg.rss_collect')})",
             f"{v('fabwatch_pg.rss')} ({v('fabwatch_pg.rss_collect')})",
             f"{ratio(n('fabwatch_pg.rss'), n('qe_pg.rss'), 2)} of qe (goal ≤ 1)"),
            ("start → all KPIs exposed, s", "-", v("qe_pg.ready"), v("se_pg.ready"), v("fabwatch_pg.ready"), "-"),
            ("body bytes", "-", v("qe_pg.bytes"), v("se_pg.bytes"), v("fabwatch_pg.bytes"), "-"),
        ])
        print()
    if len(sizes) >= 2:
        small, big = sizes[dbs[0]], sizes[dbs[-1]]
        print(f"### growth {dbs[0]} → {dbs[-1]} (goal for fabwatch ≤ 1.5x)\n")
        table([("", "query-exporter", "prometheus-sql-exporter", "fabwatch (DB per cycle)",
                "fabwatch engine amortized"),
               ("10M / 1M", ratio(big["qe_pg.collect_ms"][0], small["qe_pg.collect_ms"][0], 2),
                ratio(big["se_pg.collect_ms"][0], small["se_pg.collect_ms"][0], 2),
                ratio(big["fabwatch_pg.db_ms"][0], small["fabwatch_pg.db_ms"][0], 2),
                ratio(big.get("cycles.amortized_ms", (None,))[0], small.get("cycles.amortized_ms", (None,))[0], 2))])
        print()
    expo = os.path.join(run, "exposition")
    if os.path.isdir(expo):
        scrape = load(f"{expo}/fabwatch_100k.scrape.r*.json")
        cpu = med((10 * s["cpu_s_per_100_schedstat"] for s in scrape), "{:.2f}")
        p50, p99 = med(s["p50_ms"] for s in scrape), med(s["p99_ms"] for s in scrape)
        pc = load(f"{expo}/prometheus_client.json")
        gl = {r["case"]: 1000 * r["median_s"] for d in pc for r in d["results"] if r["series"] == 100000}
        render = load(f"{expo}/render.json")
        print("### exposition at 100,000 series\n")
        table([("", "ms"),
               ("prometheus-client generate_latest, labelled Gauge", f"{gl.get('registry', 0):.1f}"),
               ("prometheus-client generate_latest, custom collector", f"{gl.get('collector', 0):.1f}"),
               ("fabwatch render once per sample: text / OpenMetrics / text+gzip",
                " / ".join(f"{render[0][k]:.0f}" for k in ("text_ms", "openmetrics_ms", "text_gzip_ms"))
                if render else "-"),
               ("fabwatch CPU per scrape (served from cache)", cpu[1]),
               ("fabwatch scrape p50 / p99", f"{p50[1]} / {p99[1]}"),
               ("generate_latest (custom collector) / fabwatch CPU per scrape (goal ≥ 50)",
                ratio(gl.get("collector"), cpu[0], 0))])
    fresh = os.path.join(run, "freshness.json")
    if os.path.exists(fresh):
        with open(fresh) as f:
            d = json.load(f)["summary"]
        print(f"\n### freshness (interval {d['interval_s']:g} s, settle {d['settle_s']:g} s; "
              f"goal: within interval + 1 s = {d['goal_s']:g} s)\n")
        table([("new open row visible in", "median s", "max s"),
               ("fab_backlog_items (read every sample)", f"{d['backlog_median_s']:.2f}", f"{d['backlog_max_s']:.2f}"),
               ("fab_items_created_total (read up to now - settle)", f"{d['created_median_s']:.2f}",
                f"{d['created_max_s']:.2f}")])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
