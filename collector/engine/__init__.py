"""The KPI engine: sample one SQL source incrementally and turn the sums into metric families.

Each sample reads, per process, only the rows whose creation or completion time moved past the
last watermark (entering the windows) and the rows leaving each window, in one statement per
edge; and the open items that were created or completed since the previous sample (the backlog
is recounted in full from the status index at start and every `reconcile` period). Counters
accumulate the entering rows; window sums add the entering rows and subtract the leaving ones
(recomputed in full every `reconcile` period, which also heals rows changed after they were
counted). So the rows a sample reads follow the rows that changed, not the size of the table.
Everything a sample changes is saved in one transaction of the state store before it is
published, so restarts neither lose nor double-count rows.

The modules, by what a reader looks for:

- `sampler`: `SourceSampler`, the orchestration of one sample (connect, read, save, publish);
- `edges`: reading the rows that crossed the created and completed edges, and counting them;
- `late`: the ledger of what the counters took, and the rows that came after the watermark;
- `windows`: the KPI windows' sums, moved at each sample and summed again every `reconcile`;
- `backlog`: the open items, overdue items and the oldest open item's age;
- `cost`: fixed, monthly (`monthly_from`) and per-item costs;
- `families`: the metric families and KPI readings published from the state;
- `sums`: the group sums every other module adds up, and the cap on dimension sets.
"""

from collector.engine.cost import MonthlyLookup
from collector.engine.sampler import SourceSampler
from collector.engine.sums import OTHER
from collector.engine.windows import DEFAULT_LOOKBACK

__all__ = ["DEFAULT_LOOKBACK", "OTHER", "MonthlyLookup", "SourceSampler"]
