"""Per-process parameters of the simulated operator: volumes, shares, statuses, durations."""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import cache
from statistics import NormalDist

HOUR = 3600.0
DAY = 86400.0

# Share of the daily volume arriving in each local hour (business hours peak, nights low).
DIURNAL = (
    0.20, 0.12, 0.08, 0.07, 0.08, 0.15, 0.35, 0.75, 1.35, 1.75, 1.85, 1.80,
    1.60, 1.70, 1.75, 1.65, 1.50, 1.35, 1.20, 1.05, 0.90, 0.70, 0.50, 0.32,
)  # fmt: skip


@dataclass(frozen=True)
class Shares:
    """Fixed shares of the values of one dimension, drawn with one random number."""

    values: tuple[str, ...]
    cumulative: tuple[float, ...]

    @classmethod
    def of(cls, **shares: float) -> Shares:
        """Build from keyword shares (need not sum to 1; order is kept)."""
        total, cumulative = 0.0, []
        for share in shares.values():
            total += share
            cumulative.append(total)
        return cls(tuple(shares), tuple(cumulative))

    def pick(self, rng: random.Random) -> str:
        """Draw one value."""
        index = bisect_right(self.cumulative, rng.random() * self.cumulative[-1])
        return self.values[min(index, len(self.values) - 1)]

    def share(self, value: str) -> float:
        """Return the configured share of one value."""
        index = self.values.index(value)
        low = self.cumulative[index - 1] if index else 0.0
        return (self.cumulative[index] - low) / self.cumulative[-1]


@cache
def calibrated_median(due: float, on_time: float, sigma: float) -> float:
    """Return the lognormal median giving P(duration <= due) == on_time."""
    return due * math.exp(-NormalDist().inv_cdf(on_time) * sigma)


@dataclass(frozen=True, kw_only=True)
class Profile:
    """What every process shares: volume, dimensions, statuses, arrival pattern, effort."""

    process: str
    table: str
    prefix: str
    per_day: float
    priorities: Shares
    channels: Shares
    segments: Shares
    open_statuses: tuple[str, ...]
    final_statuses: tuple[str, ...]
    paused_statuses: tuple[str, ...] = ()
    fallout_statuses: tuple[str, ...] = ()
    diurnal_strength: float = 1.0
    weekend: tuple[float, float] = (0.5, 0.35)
    on_time: float = 0.9
    sigma: float = 0.8
    handling_median: float = 10.0
    handling_sigma: float = 0.5


@dataclass(frozen=True, kw_only=True)
class ProblemProfile(Profile):
    """Trouble tickets (TMF621): restore by priority, pauses, reopens, cancellations."""

    due_hours: dict[str, float] = field(
        default_factory=lambda: {"critical": 4.0, "high": 8.0, "medium": 24.0, "low": 72.0}
    )
    cancel_share: float = 0.03
    reopen_share: float = 0.04
    pause_share: float = 0.25
    held_share: float = 0.06
    close_after_hours: float = 24.0


@dataclass(frozen=True, kw_only=True)
class OrderProfile(Profile):
    """Product orders (TMF622): delivery by priority, fallout, cancellations."""

    due_days: dict[str, float] = field(
        default_factory=lambda: {"critical": 1.0, "high": 3.0, "medium": 5.0, "low": 10.0}
    )
    cancel_share: float = 0.04
    fallout_share: float = 0.035
    fallout_slowdown: float = 2.5
    pause_share: float = 0.25
    value_median: float = 60.0


@dataclass(frozen=True, kw_only=True)
class InterfaceProfile(Profile):
    """Customer contacts (TMF683): answer within 20 s, abandonment, first-contact resolution."""

    answer_target: float = 20.0
    answered_in_target: float = 0.8
    wait_sigma: float = 1.0
    abandon_share: float = 0.035
    abandon_wait_median: float = 45.0
    fcr_share: float = 0.72


@dataclass(frozen=True, kw_only=True)
class QosSlaProfile(Profile):
    """SLA-affecting service problems of business customers: restore objective, credits."""

    due_hours: dict[str, float] = field(default_factory=lambda: {"critical": 4.0, "high": 8.0, "medium": 24.0})
    pause_share: float = 0.2
    credit_median: float = 120.0


@dataclass(frozen=True, kw_only=True)
class RetentionProfile(Profile):
    """Churn requests handled by the retention desk: saved or churned."""

    due_days: float = 3.0
    save_share: float = 0.37
    pause_share: float = 0.4
    offer_median: float = 60.0


@dataclass(frozen=True, kw_only=True)
class InvoiceProfile(Profile):
    """Customer bills (TMF678), created by a daily bill run at period end."""

    due_days: float = 2.0
    run_every: float = DAY
    median_hours: float = 5.0
    adjusted_share: float = 0.02
    adjusted_slowdown: float = 3.0
    ebill_share: float = 0.6
    amount_median: dict[str, float] = field(default_factory=lambda: {"consumer": 38.0, "business": 220.0})


@dataclass(frozen=True, kw_only=True)
class PaymentsProfile(Profile):
    """Receivables (TMF676), one per bill sent: settled, dunned, written off."""

    due_days: dict[str, float] = field(default_factory=lambda: {"consumer": 14.0, "business": 30.0})
    on_time_by_channel: dict[str, float] = field(
        default_factory=lambda: {"directDebit": 0.98, "card": 0.95, "bankTransfer": 0.85, "shop": 0.85}
    )
    partial_share: float = 0.06
    writeoff_share: float = 0.01
    dunning_after_days: float = 5.0
    writeoff_after_days: float = 21.0


@dataclass(frozen=True, kw_only=True)
class BillInquiryProfile(Profile):
    """Bill inquiries and disputes: first-contact resolution, adjustments."""

    due_hours: float = 48.0
    fcr_share: float = 0.65
    adjusted_share: float = 0.3
    pause_share: float = 0.3
    adjustment_median: float = 15.0
    close_after_hours: float = 24.0


_TICKET_OPEN = ("acknowledged", "inProgress", "pending", "held")

PROBLEM = ProblemProfile(
    process="problem", table="trouble_ticket", prefix="TT", per_day=260.0,
    priorities=Shares.of(critical=0.05, high=0.20, medium=0.50, low=0.25),
    channels=Shares.of(phone=0.40, web=0.20, app=0.20, email=0.10, shop=0.10),
    segments=Shares.of(consumer=0.80, business=0.20),
    open_statuses=_TICKET_OPEN, final_statuses=("resolved", "closed", "cancelled"),
    paused_statuses=("pending",), weekend=(0.6, 0.45), on_time=0.92, sigma=0.9,
    handling_median=18.0, handling_sigma=0.6,
)  # fmt: skip

ORDER = OrderProfile(
    process="order", table="product_order", prefix="PO", per_day=220.0,
    priorities=Shares.of(critical=0.03, high=0.17, medium=0.55, low=0.25),
    channels=Shares.of(web=0.35, app=0.25, shop=0.25, phone=0.15),
    segments=Shares.of(consumer=0.75, business=0.25),
    open_statuses=(*_TICKET_OPEN, "assessingCancellation"),
    final_statuses=("completed", "failed", "partial", "cancelled"),
    paused_statuses=("pending",), fallout_statuses=("held", "failed", "partial"),
    weekend=(0.55, 0.3), on_time=0.93, sigma=0.7, handling_median=12.0,
)  # fmt: skip

INTERFACE = InterfaceProfile(
    process="interface", table="party_interaction", prefix="PI", per_day=1000.0,
    priorities=Shares.of(high=0.12, medium=0.88),
    channels=Shares.of(phone=0.45, chat=0.20, email=0.12, app=0.15, shop=0.08),
    segments=Shares.of(consumer=0.80, business=0.20),
    open_statuses=("queued", "inProgress"), final_statuses=("completed", "abandoned"),
    weekend=(0.5, 0.3), handling_median=6.5, handling_sigma=0.5,
)  # fmt: skip

QOS_SLA = QosSlaProfile(
    process="qos_sla", table="sla_case", prefix="SC", per_day=20.0,
    priorities=Shares.of(critical=0.20, high=0.40, medium=0.40),
    channels=Shares.of(monitoring=0.45, phone=0.30, portal=0.15, email=0.10),
    segments=Shares.of(business=0.85, wholesale=0.15),
    open_statuses=_TICKET_OPEN, final_statuses=("resolved", "closed"),
    paused_statuses=("pending",), diurnal_strength=0.4, weekend=(0.8, 0.75),
    on_time=0.93, sigma=0.8, handling_median=45.0,
)  # fmt: skip

RETENTION = RetentionProfile(
    process="retention", table="retention_case", prefix="RC", per_day=25.0,
    priorities=Shares.of(high=0.30, medium=0.70),
    channels=Shares.of(phone=0.55, shop=0.20, chat=0.15, email=0.10),
    segments=Shares.of(consumer=0.85, business=0.15),
    open_statuses=("acknowledged", "inProgress", "pending"), final_statuses=("closed",),
    paused_statuses=("pending",), weekend=(0.5, 0.2), on_time=0.9, sigma=0.8,
    handling_median=15.0,
)  # fmt: skip

INVOICE = InvoiceProfile(
    process="invoice", table="customer_bill", prefix="CB", per_day=700.0,
    priorities=Shares.of(medium=1.0), channels=Shares.of(ebill=0.6, paper=0.4),
    segments=Shares.of(consumer=0.85, business=0.15),
    open_statuses=("new", "onHold", "validated"), final_statuses=("sent",),
    handling_median=0.2, handling_sigma=0.3,
)  # fmt: skip

PAYMENTS = PaymentsProfile(
    process="payments", table="payment", prefix="PAY", per_day=0.0,
    priorities=Shares.of(medium=1.0),
    channels=Shares.of(directDebit=0.55, card=0.20, bankTransfer=0.20, shop=0.05),
    segments=INVOICE.segments,
    open_statuses=("open", "partiallyPaid", "inDunning"), final_statuses=("settled", "writtenOff"),
    sigma=0.5, handling_median=8.0,
)  # fmt: skip

BILL_INQUIRY = BillInquiryProfile(
    process="bill_inquiry", table="bill_inquiry", prefix="BI", per_day=45.0,
    priorities=Shares.of(high=0.15, medium=0.85),
    channels=Shares.of(phone=0.50, app=0.15, web=0.15, email=0.15, shop=0.05),
    segments=Shares.of(consumer=0.85, business=0.15),
    open_statuses=_TICKET_OPEN, final_statuses=("resolved", "closed", "cancelled"),
    paused_statuses=("pending",), weekend=(0.5, 0.3), on_time=0.88, sigma=0.8,
    handling_median=9.0,
)  # fmt: skip

PROFILES: dict[str, Profile] = {
    p.process: p for p in (PROBLEM, ORDER, INTERFACE, QOS_SLA, RETENTION, INVOICE, PAYMENTS, BILL_INQUIRY)
}
PROCESSES: tuple[str, ...] = tuple(PROFILES)
