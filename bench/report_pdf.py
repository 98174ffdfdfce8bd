"""Cost of the monthly report's PDF beside the four other formats, in one run.

On a state file whose rollups cover the month (the demo's, once it has written its report), each
round measures side by side the wall time of the report in the four default formats (read the
rollups, summarize, render HTML, Markdown, JSON, CSV) and of its PDF (render the HTML, lay it out
with WeasyPrint); the import of WeasyPrint, paid once a process, is measured apart. Prints JSON with
the medians and the ratio of the PDF to the four formats, per round and of the medians.

    .venv/bin/python bench/report_pdf.py --state .fabwatch-demo/state.db --month 2026-11 --rounds 5
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collector.inventory.load import load_inventory  # noqa: E402
from collector.rollups import RollupStore  # noqa: E402
from reports.render import RENDERERS, render_html  # noqa: E402
from reports.summary import Month, read_rollups, read_states, summarize  # noqa: E402


def measure(args: argparse.Namespace) -> dict[str, object]:
    inventory = load_inventory([ROOT / "examples" / "operator.yaml"], {"FABWATCH_DEMO_DSN": "sqlite+aiosqlite:///unused"})
    store = RollupStore(args.state)
    month = Month.parse(args.month)
    started = time.perf_counter()
    import weasyprint  # noqa: F401  (what the first PDF of a process pays)

    from reports.pdf import render_pdf

    imported = time.perf_counter() - started
    four, pdf = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        rollups, states = read_rollups(store, inventory, month), read_states(store, inventory, month)
        report = summarize(inventory, rollups, month, states)
        for render in RENDERERS.values():
            render(report)
        four.append(time.perf_counter() - started)
        started = time.perf_counter()
        render_pdf(render_html(report))
        pdf.append(time.perf_counter() - started)
    store.close()
    return {"month": str(month), "rounds": args.rounds, "import_weasyprint_s": round(imported, 3),
            "four_formats_s": [round(x, 3) for x in four], "pdf_s": [round(x, 3) for x in pdf],
            "four_formats_median_s": round(statistics.median(four), 3),
            "pdf_median_s": round(statistics.median(pdf), 3),
            "ratio_per_round": [round(p / f, 1) for p, f in zip(pdf, four, strict=True)],
            "ratio_of_medians": round(statistics.median(pdf) / statistics.median(four), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", required=True, help="state file whose rollups cover the month")
    parser.add_argument("--month", required=True, help="YYYY-MM")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each measuring both (default: 5)")
    print(json.dumps(measure(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
