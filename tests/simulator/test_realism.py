"""Shares and rates of a 30-day backfill are roughly what the profiles configure."""

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from simulator.profiles import PROFILES
from tests.simulator.helpers import NOW, backfill, query, scalar

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("realism")]  # one 30-day backfill for the module, one worker
DAYS = 30
START = NOW - DAYS * 86400


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("realism") / "operator.db"
    rows = backfill(path, DAYS)
    assert 80_000 < rows < 100_000  # ~3,000 items a day
    return path


def share(db, table, predicate, where="1=1"):
    return scalar(db, f"SELECT AVG(CASE WHEN {predicate} THEN 1.0 ELSE 0 END) FROM {table} WHERE {where}")


def test_every_process_has_rows(db):
    for profile in PROFILES.values():
        assert scalar(db, f"SELECT COUNT(*) FROM {profile.table}") > 100, profile.process


def test_problem_sla_compliance_near_objective(db):
    assert 0.85 <= share(db, "trouble_ticket", "completed_at <= due_at", "completed_at IS NOT NULL") <= 0.95


def test_problem_reopen_and_priority_shares(db):
    assert share(db, "trouble_ticket", "reopened = 1", "completed_at IS NOT NULL") == pytest.approx(0.04, abs=0.01)
    assert share(db, "trouble_ticket", "priority = 'medium'") == pytest.approx(0.5, abs=0.03)
    assert share(db, "trouble_ticket", "channel = 'phone'") == pytest.approx(0.4, abs=0.03)
    due = query(db, "SELECT DISTINCT priority, due_at - created_at FROM trouble_ticket")
    assert {p: round(d) for p, d in due} == {"critical": 14400, "high": 28800, "medium": 86400, "low": 259200}


def test_order_fallout_share(db):
    assert 0.025 <= share(db, "product_order", "fallout = 1", "completed_at IS NOT NULL") <= 0.05
    slow = scalar(db, "SELECT AVG(completed_at - created_at) FROM product_order WHERE fallout = 1")
    normal = scalar(db, "SELECT AVG(completed_at - created_at) FROM product_order WHERE fallout = 0")
    assert slow > 1.8 * normal


def test_interface_service_level_abandonment_fcr(db):
    answered = "completed_at IS NOT NULL AND abandoned = 0"
    assert share(db, "party_interaction", "wait_seconds < 20", answered) == pytest.approx(0.8, abs=0.02)
    assert 0.025 <= share(db, "party_interaction", "abandoned = 1", "completed_at IS NOT NULL") <= 0.045
    assert share(db, "party_interaction", "first_contact_resolved = 1", answered) == pytest.approx(0.72, abs=0.02)
    assert 6 <= scalar(db, f"SELECT AVG(handling_minutes) FROM party_interaction WHERE {answered}") <= 8
    assert scalar(db, "SELECT DISTINCT outcome FROM party_interaction WHERE abandoned = 1") == "abandoned"


def test_billing_processes(db):
    assert share(db, "customer_bill", "completed_at <= due_at", "completed_at IS NOT NULL") >= 0.99
    assert share(db, "customer_bill", "ebill = 1") == pytest.approx(0.6, abs=0.02)
    assert share(db, "customer_bill", "adjusted = 1") == pytest.approx(0.02, abs=0.006)
    assert share(db, "retention_case", "saved = 1", "completed_at IS NOT NULL") == pytest.approx(0.37, abs=0.05)
    assert share(db, "bill_inquiry", "adjusted = 1", "completed_at IS NOT NULL") == pytest.approx(0.3, abs=0.05)
    assert share(db, "bill_inquiry", "first_contact_resolved = 1", "completed_at IS NOT NULL") == pytest.approx(
        0.65, abs=0.05
    )
    assert share(db, "sla_case", "segment = 'business'") > 0.75
    assert scalar(db, "SELECT COUNT(*) FROM payment WHERE written_off = 1 AND outcome = 'writtenOff'") > 0


def test_payments_follow_bills(db):
    assert scalar(db, "SELECT COUNT(*) FROM payment") <= scalar(db, "SELECT COUNT(*) FROM customer_bill")
    bills = {i.split("-", 1)[1] for (i,) in query(db, "SELECT id FROM customer_bill")}
    payments = {i.split("-", 1)[1] for (i,) in query(db, "SELECT id FROM payment")}
    assert payments <= bills
    assert share(db, "payment", "status IN ('open', 'partiallyPaid', 'inDunning')") > 0.1


def test_weekend_and_night_volumes_are_lower(db):
    zone = ZoneInfo("Europe/Berlin")
    per_day: dict[int, int] = {}
    per_hour: dict[int, int] = {}
    sql = "SELECT created_at FROM party_interaction UNION ALL SELECT created_at FROM trouble_ticket"
    for (created,) in query(db, sql):
        local = datetime.fromtimestamp(created, zone)
        per_day[local.weekday()] = per_day.get(local.weekday(), 0) + 1
        per_hour[local.hour] = per_hour.get(local.hour, 0) + 1
    weekday = sum(per_day[d] for d in range(5)) / 5
    weekend = (per_day[5] + per_day[6]) / 2
    assert weekend < 0.7 * weekday
    assert per_hour[3] < 0.2 * per_hour[10]


def test_rows_are_consistent(db):
    for profile in PROFILES.values():
        t = profile.table
        final = ", ".join(f"'{s}'" for s in profile.final_statuses)
        bad = [
            f"(completed_at IS NULL) = (status IN ({final}))",
            "updated_at < created_at",
            "completed_at < created_at",
            "paused_seconds > completed_at - created_at",
            "completed_at IS NOT NULL AND outcome IS NULL",
            f"created_at < {START} OR created_at > {NOW} OR updated_at > {NOW}",
        ]
        for predicate in bad:
            assert scalar(db, f"SELECT COUNT(*) FROM {t} WHERE {predicate}") == 0, (t, predicate)
