import math

import pytest

from simulator.incidents import Incident, Knobs


def test_parse_full_spec():
    incident = Incident.parse("problem:slow:3:-1h:7200", now=1000.0)
    assert incident == Incident("problem", "slow", 3.0, 1000.0 - 3600, 1000.0 - 3600 + 7200)


def test_parse_defaults_start_now_without_end():
    incident = Incident.parse("order:fallout:5", now=50.0)
    assert (incident.start, incident.end) == (50.0, math.inf)
    assert incident.active(50.0)
    assert incident.active(1e12)
    assert not incident.active(49.9)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("problem:slow", "expected process:kind:factor"),
        ("nope:slow:2", "unknown process 'nope'"),
        ("problem:fast:2", "unknown kind 'fast'"),
        ("problem:slow:x", "factor 'x' is not a number"),
        ("problem:slow:0", "factor must be a positive number"),
        ("problem:slow:2:soon", "start offset 'soon'"),
        ("problem:slow:2:0:-5", "duration '-5'"),
        ("qos_sla:fallout:2", "does not apply to qos_sla"),
        ("payments:surge:2", "does not apply to payments"),
    ],
)
def test_parse_errors_name_the_problem(spec, message):
    with pytest.raises(ValueError, match=message):
        Incident.parse(spec, now=0.0)


def test_knobs_multiply_active_incidents():
    knobs = Knobs.of(
        1.0,
        1.0,
        [Incident("problem", "surge", 2.0, 0, 100), Incident("problem", "surge", 3.0, 50, 200)],
    )
    assert knobs.factor("problem", "surge", 10) == 2.0
    assert knobs.factor("problem", "surge", 60) == 6.0
    assert knobs.factor("problem", "slow", 60) == 1.0
    assert knobs.factor("order", "surge", 60) == 1.0
    assert knobs.peak("problem", "surge") == 6.0


@pytest.mark.parametrize(("speed", "scale"), [(0, 1), (1, -1), (math.inf, 1)])
def test_knobs_reject_bad_speed_or_scale(speed, scale):
    with pytest.raises(ValueError, match="must be a positive number"):
        Knobs.of(speed, scale, ())
