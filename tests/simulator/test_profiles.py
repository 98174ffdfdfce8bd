import random

import pytest

from simulator.planners import lognormal
from simulator.profiles import PROCESSES, PROFILES, Shares, calibrated_median


def test_eight_processes_with_their_tables():
    assert PROCESSES == ("problem", "order", "interface", "qos_sla", "retention", "invoice", "payments", "bill_inquiry")
    assert PROFILES["problem"].table == "trouble_ticket"
    assert PROFILES["payments"].open_statuses == ("open", "partiallyPaid", "inDunning")


def test_open_and_final_statuses_are_disjoint():
    for profile in PROFILES.values():
        assert not set(profile.open_statuses) & set(profile.final_statuses), profile.process
        assert set(profile.paused_statuses) <= set(profile.open_statuses)


def test_shares_pick_in_proportion():
    shares = Shares.of(a=0.7, b=0.2, c=0.1)
    rng = random.Random(3)
    picks = [shares.pick(rng) for _ in range(20000)]
    assert picks.count("a") / len(picks) == pytest.approx(0.7, abs=0.02)
    assert picks.count("c") / len(picks) == pytest.approx(0.1, abs=0.01)
    assert shares.share("b") == pytest.approx(0.2)


def test_calibrated_median_gives_the_on_time_share():
    rng = random.Random(5)
    median = calibrated_median(3600.0, 0.9, 0.8)
    draws = [lognormal(rng, median, 0.8) for _ in range(20000)]
    assert sum(d <= 3600.0 for d in draws) / len(draws) == pytest.approx(0.9, abs=0.01)
