"""Plan the whole life of one arriving work item per process (pure, driven by one Random).

Timestamps are compressed by `speed` (and stretched by `slow` incidents); attribute columns
(wait_seconds, handling_minutes, amount) keep their real-world values so ratio KPIs stay stable.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from simulator.incidents import Knobs
from simulator.plans import Plan, Row
from simulator.profiles import (
    BILL_INQUIRY,
    DAY,
    HOUR,
    INTERFACE,
    INVOICE,
    ORDER,
    PAYMENTS,
    PROBLEM,
    QOS_SLA,
    RETENTION,
    Profile,
    calibrated_median,
)

Planner = Callable[[random.Random, float, Knobs], list[Plan]]
Events = list[tuple[float, str]]


def lognormal(rng: random.Random, median: float, sigma: float) -> float:
    """Draw a lognormal value with the given median."""
    return median * math.exp(rng.gauss(0.0, sigma))


def chance(rng: random.Random, share: float) -> bool:
    """Return True with probability share (always when share >= 1)."""
    return rng.random() < share


def _ident(profile: Profile, rng: random.Random, t: float) -> str:
    """Return a unique, deterministic id."""
    return f"{profile.prefix}-{int(t * 1000)}-{rng.getrandbits(40):010x}"


def _dims(profile: Profile, rng: random.Random) -> Row:
    """Draw priority, channel and segment."""
    return {
        "priority": profile.priorities.pick(rng),
        "channel": profile.channels.pick(rng),
        "segment": profile.segments.pick(rng),
    }


def _handling(profile: Profile, rng: random.Random, factor: float = 1.0) -> float:
    """Draw the handling minutes."""
    return round(lognormal(rng, profile.handling_median, profile.handling_sigma) * factor, 2)


def _work(events: Events, rng: random.Random, end: float, share: float, status: str) -> None:
    """Maybe insert a pause/hold segment inside the last open segment, before end."""
    if not chance(rng, share):
        return
    start = events[-1][0]
    a = start + (end - start) * rng.uniform(0.2, 0.5)
    b = a + (end - start) * rng.uniform(0.1, 0.4)
    events += [(a, status), (b, "inProgress")]


def plan_problem(rng: random.Random, t: float, knobs: Knobs) -> list[Plan]:
    """Plan a trouble ticket: ack, work (pauses, holds), resolve, maybe reopen, close."""
    p, dims = PROBLEM, _dims(PROBLEM, rng)
    due = p.due_hours[dims["priority"]] * HOUR
    stretch = knobs.factor(p.process, "slow", t) / knobs.speed
    static = {**dims, "due_at": t + due / knobs.speed}
    ident, handling = _ident(p, rng, t), _handling(p, rng)
    if chance(rng, p.cancel_share):
        end = t + lognormal(rng, 2 * HOUR, 0.8) * stretch
        final = {"outcome": "cancelled", "handling_minutes": round(handling * 0.3, 2)}
        return [Plan(ident, p.process, [(t, "acknowledged"), (end, "cancelled")], static, final)]
    total = lognormal(rng, calibrated_median(due, p.on_time, p.sigma), p.sigma) * stretch
    events: Events = [(t, "acknowledged")]
    events.append((t + min(total * 0.1, lognormal(rng, 15 * 60, 0.7) * stretch), "inProgress"))
    end = t + total
    _work(events, rng, end, p.pause_share, "pending")
    _work(events, rng, end, p.held_share, "held")
    events.append((end, "resolved"))
    if chance(rng, p.reopen_share * knobs.factor(p.process, "fallout", t)):
        again = end + lognormal(rng, 4 * HOUR, 0.8) / knobs.speed
        events += [(again, "inProgress")]
        events += [(again + lognormal(rng, due * 0.4, 0.8) * stretch, "resolved")]
        handling = round(handling * 1.6, 2)
    close = events[-1][0] + lognormal(rng, p.close_after_hours * HOUR, 0.4) / knobs.speed
    events.append((close, "closed"))
    final = {"outcome": "resolved", "handling_minutes": handling}
    return [Plan(ident, p.process, events, static, final)]


def plan_order(rng: random.Random, t: float, knobs: Knobs) -> list[Plan]:
    """Plan a product order: normal delivery, fallout (held, partial, failed) or cancellation."""
    p, dims = ORDER, _dims(ORDER, rng)
    due = p.due_days[dims["priority"]] * DAY
    stretch = knobs.factor(p.process, "slow", t) / knobs.speed
    static = {**dims, "due_at": t + due / knobs.speed, "amount": round(lognormal(rng, p.value_median, 0.8), 2)}
    ident, handling = _ident(p, rng, t), _handling(p, rng)
    total = lognormal(rng, calibrated_median(due, p.on_time, p.sigma), p.sigma) * stretch
    events: Events = [(t, "acknowledged")]
    events.append((t + min(total * 0.05, lognormal(rng, 10 * 60, 0.7) * stretch), "inProgress"))
    if chance(rng, p.cancel_share):
        ask = events[-1][0] + (t + total - events[-1][0]) * rng.uniform(0.1, 0.6)
        done = ask + lognormal(rng, 4 * HOUR, 0.6) * stretch
        events += [(ask, "assessingCancellation"), (done, "cancelled")]
        final = {"outcome": "cancelled", "handling_minutes": handling}
        return [Plan(ident, p.process, events, static, final)]
    if chance(rng, p.fallout_share * knobs.factor(p.process, "fallout", t)):
        return [_order_fallout(rng, t, total, ident, events, static, handling)]
    _work(events, rng, t + total, p.pause_share, "pending")
    events.append((t + total, "completed"))
    return [Plan(ident, p.process, events, static, {"outcome": "completed", "handling_minutes": handling})]


def _order_fallout(
    rng: random.Random, t: float, total: float, ident: str, events: Events, static: Row, handling: float
) -> Plan:
    """Plan a fallout order: held for manual repair, then completed, partial or failed."""
    span = total * lognormal(rng, ORDER.fallout_slowdown, 0.3)
    start = events[-1][0]
    events += [(start + (t + span - start) * 0.3, "held"), (start + (t + span - start) * 0.75, "inProgress")]
    end = rng.choices(("completed", "partial", "failed"), weights=(0.6, 0.15, 0.25))[0]
    events.append((t + span, end))
    handling = round(handling + lognormal(rng, 40.0, 0.5), 2)
    outcome = "completed" if end == "completed" else "failed"
    return Plan(ident, ORDER.process, events, static, {"outcome": outcome, "handling_minutes": handling})


def plan_interface(rng: random.Random, t: float, knobs: Knobs) -> list[Plan]:
    """Plan a contact: queue, answer (or abandon), handle."""
    p, dims = INTERFACE, _dims(INTERFACE, rng)
    slow = knobs.factor(p.process, "slow", t)
    static = {**dims, "due_at": t + p.answer_target / knobs.speed}
    ident = _ident(p, rng, t)
    if chance(rng, p.abandon_share * knobs.factor(p.process, "fallout", t)):
        wait = lognormal(rng, p.abandon_wait_median, 0.7) * slow
        final = {"outcome": "abandoned", "abandoned": 1, "wait_seconds": round(wait, 2)}
        events = [(t, "queued"), (t + wait / knobs.speed, "abandoned")]
        return [Plan(ident, p.process, events, static, final)]
    median = calibrated_median(p.answer_target, p.answered_in_target, p.wait_sigma)
    wait = lognormal(rng, median, p.wait_sigma) * slow
    handling = _handling(p, rng, slow)
    fcr = int(chance(rng, p.fcr_share))
    answered = t + wait / knobs.speed
    events = [(t, "queued"), (answered, "inProgress"), (answered + handling * 60 / knobs.speed, "completed")]
    final = {
        "outcome": "resolved" if fcr else "followUp", "first_contact_resolved": fcr,
        "wait_seconds": round(wait, 2), "handling_minutes": handling,
    }  # fmt: skip
    return [Plan(ident, p.process, events, static, final)]


def plan_qos_sla(rng: random.Random, t: float, knobs: Knobs) -> list[Plan]:
    """Plan an SLA case: restore within the objective, credit when late."""
    p, dims = QOS_SLA, _dims(QOS_SLA, rng)
    due = p.due_hours[dims["priority"]] * HOUR
    stretch = knobs.factor(p.process, "slow", t) / knobs.speed
    static = {**dims, "due_at": t + due / knobs.speed}
    ident, handling = _ident(p, rng, t), _handling(p, rng)
    total = lognormal(rng, calibrated_median(due, p.on_time, p.sigma), p.sigma) * stretch
    events: Events = [(t, "acknowledged"), (t + min(total * 0.1, 10 * 60 * stretch), "inProgress")]
    _work(events, rng, t + total, p.pause_share, "pending")
    events.append((t + total, "resolved"))
    events.append((t + total + lognormal(rng, 12 * HOUR, 0.4) / knobs.speed, "closed"))
    late = total * knobs.speed - due
    credit = round(lognormal(rng, p.credit_median, 0.5) * (1 + late / due), 2) if late > 0 else 0.0
    final = {"outcome": "restored", "handling_minutes": handling, "amount": credit}
    return [Plan(ident, p.process, events, static, final)]


def plan_retention(rng: random.Random, t: float, knobs: Knobs) -> list[Plan]:
    """Plan a retention case: negotiate (offer pending), then saved or churned."""
    p, dims = RETENTION, _dims(RETENTION, rng)
    due = p.due_days * DAY
    stretch = knobs.factor(p.process, "slow", t) / knobs.speed
    static = {**dims, "due_at": t + due / knobs.speed}
    ident, handling = _ident(p, rng, t), _handling(p, rng)
    total = lognormal(rng, calibrated_median(due, p.on_time, p.sigma), p.sigma) * stretch
    events: Events = [(t, "acknowledged"), (t + min(total * 0.1, HOUR * stretch), "inProgress")]
    _work(events, rng, t + total, p.pause_share, "pending")
    events.append((t + total, "closed"))
    churn = (1 - p.save_share) * knobs.factor(p.process, "fallout", t)
    saved = int(not chance(rng, churn))
    offer = round(lognormal(rng, p.offer_median, 0.6), 2) if saved else 0.0
    final = {"outcome": "saved" if saved else "churned", "saved": saved, "amount": offer}
    return [Plan(ident, p.process, events, static, {**final, "handling_minutes": handling})]


def plan_invoice(rng: random.Random, t: float, knobs: Knobs) -> list[Plan]:
    """Plan a bill of a bill run (created at period end, sent) and the receivable it opens."""
    p = INVOICE
    segment = p.segments.pick(rng)
    ebill = int(chance(rng, p.ebill_share))
    static = {
        "priority": "medium", "channel": "ebill" if ebill else "paper", "segment": segment,
        "ebill": ebill, "due_at": t + p.due_days * DAY / knobs.speed,
        "amount": round(lognormal(rng, p.amount_median[segment], 0.6), 2),
    }  # fmt: skip
    ident = _ident(p, rng, t)
    stretch = knobs.factor(p.process, "slow", t) / knobs.speed
    total = lognormal(rng, p.median_hours * HOUR, p.sigma) * stretch
    events: Events = [(t, "new")]
    adjusted = int(chance(rng, p.adjusted_share * knobs.factor(p.process, "fallout", t)))
    if adjusted:
        total *= p.adjusted_slowdown
        events.append((t + total * 0.2, "onHold"))
    events += [(t + total * 0.8, "validated"), (t + total, "sent")]
    final = {"outcome": "sent", "adjusted": adjusted, "handling_minutes": _handling(p, rng)}
    bill = Plan(ident, p.process, events, static, final)
    return [bill, _payment(rng, t + total, bill, knobs)]


def _payment(rng: random.Random, t: float, bill: Plan, knobs: Knobs) -> Plan:
    """Plan the receivable of a bill sent at t: settled (maybe partly first, maybe dunned) or written off."""
    p, segment = PAYMENTS, bill.static["segment"]
    due = p.due_days[segment] * DAY
    channel = p.channels.pick(rng)
    static = {
        "priority": "medium", "channel": channel, "segment": segment,
        "due_at": t + due / knobs.speed, "amount": bill.static["amount"],
    }  # fmt: skip
    ident = f"{p.prefix}-{bill.id.split('-', 1)[1]}"
    stretch = knobs.factor(p.process, "slow", t) / knobs.speed
    worse = knobs.factor(p.process, "fallout", t)
    dunning = t + (due + p.dunning_after_days * DAY) / knobs.speed
    events: Events = [(t, "open")]
    if chance(rng, p.writeoff_share * worse):
        off = t + (due + lognormal(rng, p.writeoff_after_days * DAY, 0.3)) / knobs.speed
        events += [(dunning, "inDunning"), (off, "writtenOff")]
        final = {"outcome": "writtenOff", "written_off": 1, "handling_minutes": _handling(p, rng, 3)}
        return Plan(ident, p.process, events, static, final)
    on_time = 1 - (1 - p.on_time_by_channel[channel]) * worse
    settle = t + lognormal(rng, calibrated_median(due, max(on_time, 0.01), p.sigma), p.sigma) * stretch
    if chance(rng, p.partial_share):
        events.append((t + (settle - t) * 0.5, "partiallyPaid"))
    if settle > dunning:
        events.append((dunning, "inDunning"))
    events.append((settle, "settled"))
    events.sort()
    handling = _handling(p, rng) if settle > dunning else 0.0
    return Plan(ident, p.process, events, static, {"outcome": "paid", "handling_minutes": handling})


def plan_bill_inquiry(rng: random.Random, t: float, knobs: Knobs) -> list[Plan]:
    """Plan a bill inquiry: answered at first contact or worked (maybe paused), maybe adjusted."""
    p, dims = BILL_INQUIRY, _dims(BILL_INQUIRY, rng)
    due = p.due_hours * HOUR
    stretch = knobs.factor(p.process, "slow", t) / knobs.speed
    static = {**dims, "due_at": t + due / knobs.speed}
    ident, handling = _ident(p, rng, t), _handling(p, rng)
    fcr = int(not chance(rng, (1 - p.fcr_share) * knobs.factor(p.process, "fallout", t)))
    events: Events = [(t, "acknowledged")]
    if fcr:
        end = t + handling * 60 * stretch
    else:
        end = t + lognormal(rng, calibrated_median(due, p.on_time, p.sigma), p.sigma) * stretch
        events.append((t + min((end - t) * 0.1, HOUR * stretch), "inProgress"))
        _work(events, rng, end, p.pause_share, "pending")
        handling = round(handling * 2.5, 2)
    events.append((end, "resolved"))
    events.append((end + lognormal(rng, p.close_after_hours * HOUR, 0.4) / knobs.speed, "closed"))
    adjusted = int(chance(rng, p.adjusted_share))
    amount = round(lognormal(rng, p.adjustment_median, 0.9), 2) if adjusted else 0.0
    final = {
        "outcome": "resolved", "first_contact_resolved": fcr, "adjusted": adjusted,
        "amount": amount, "handling_minutes": handling,
    }  # fmt: skip
    return [Plan(ident, p.process, events, static, final)]


PLANNERS: dict[str, Planner] = {
    "problem": plan_problem,
    "order": plan_order,
    "interface": plan_interface,
    "qos_sla": plan_qos_sla,
    "retention": plan_retention,
    "invoice": plan_invoice,
    "bill_inquiry": plan_bill_inquiry,
}
"""Payments have no planner of their own: each bill plans its receivable."""
