from simulator.plans import ROW_DEFAULTS, Plan, row_at

TICKET = Plan(
    "TT-1",
    "problem",
    [(0.0, "acknowledged"), (10.0, "inProgress"), (20.0, "pending"), (50.0, "inProgress"),
     (100.0, "resolved"), (130.0, "inProgress"), (160.0, "resolved"), (300.0, "closed")],
    {"priority": "high", "channel": "web", "segment": "consumer", "due_at": 120.0},
    {"outcome": "resolved", "handling_minutes": 12.5},
)  # fmt: skip


def test_open_row_shows_current_status_and_no_final_fields():
    row = row_at(TICKET, 30.0)
    assert row["status"] == "pending"
    assert row["updated_at"] == 20.0
    assert row["completed_at"] is None
    assert row["outcome"] is None
    assert row["paused_seconds"] == 0.0  # the pause counts once it has ended
    assert row["priority"] == "high"
    assert set(row) == {*ROW_DEFAULTS, "id", "created_at", "updated_at", "status"}


def test_completed_row_has_final_fields_and_pause():
    row = row_at(TICKET, 110.0)
    assert (row["status"], row["completed_at"], row["outcome"]) == ("resolved", 100.0, "resolved")
    assert row["paused_seconds"] == 30.0
    assert row["handling_minutes"] == 12.5
    assert row["reopened"] == 0


def test_reopen_clears_completion_then_completes_again():
    reopened = row_at(TICKET, 140.0)
    assert (reopened["status"], reopened["completed_at"], reopened["reopened"]) == ("inProgress", None, 1)
    closed = row_at(TICKET, 400.0)
    assert (closed["status"], closed["completed_at"], closed["reopened"]) == ("closed", 160.0, 1)
    assert closed["updated_at"] == 300.0


def test_fallout_flag_from_fallout_status():
    order = Plan(
        "PO-1",
        "order",
        [(0.0, "acknowledged"), (5.0, "inProgress"), (10.0, "held"), (20.0, "inProgress"), (30.0, "completed")],
        {"due_at": 25.0},
        {"outcome": "completed"},
    )
    assert row_at(order, 9.0)["fallout"] == 0
    assert row_at(order, 10.0)["fallout"] == 1
    assert row_at(order, 40.0)["completed_at"] == 30.0


def test_json_round_trip_is_exact():
    again = Plan.from_json(TICKET.id, TICKET.to_json())
    assert again == TICKET
    assert TICKET.next_event(100.0) == 130.0
    assert TICKET.next_event(300.0) is None
