"""The delivery ledger: which batches are new, how far each gateway is receipted, and gaps."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from coldchain.messages import Quantity, Reading, TelemetryBatch
from hub.ledger import Cursor, DeliveryLedger, Gap

BOOT = "0123456789abcdef0123456789abcdef"
TS = 1_700_000_000_000


def batch(seq: int, oldest: int = 1, gateway_id: str = "gw-1", boot_id: str = BOOT) -> TelemetryBatch:
    return TelemetryBatch(
        gateway_id=gateway_id,
        boot_id=boot_id,
        seq=seq,
        oldest_held_seq=oldest,
        readings=[Reading("probe-1", Quantity.TEMPERATURE, TS + seq, 4.0)],
    )


def commit(ledger: DeliveryLedger, *batches: TelemetryBatch):
    plan = ledger.plan(batches)
    ledger.apply(plan)
    return plan


def seqs(plan) -> list[int]:
    return [b.seq for b in plan.new_batches]


def test_unknown_gateway_has_acked_zero():
    assert DeliveryLedger().acked_seq("never-seen") == 0


def test_in_order_batches_advance_acked_seq():
    ledger = DeliveryLedger()
    for seq in range(1, 6):
        plan = commit(ledger, batch(seq))
        assert seqs(plan) == [seq]
        assert plan.duplicates == 0
        assert plan.gaps == []
        assert ledger.acked_seq("gw-1") == seq
        assert plan.cursors["gw-1"].acked_seq == seq
        assert plan.cursors["gw-1"].committed_above == set()


def test_several_batches_in_one_plan():
    ledger = DeliveryLedger()
    plan = commit(ledger, batch(1), batch(2), batch(3))
    assert seqs(plan) == [1, 2, 3]
    assert ledger.acked_seq("gw-1") == 3


def test_duplicate_at_or_below_acked_is_counted_not_new():
    ledger = DeliveryLedger()
    commit(ledger, batch(1), batch(2), batch(3))
    plan = commit(ledger, batch(2), batch(3), batch(1))
    assert seqs(plan) == []
    assert plan.duplicates == 3
    assert ledger.acked_seq("gw-1") == 3


def test_duplicate_of_a_seq_committed_above_acked():
    ledger = DeliveryLedger()
    commit(ledger, batch(1), batch(3))
    assert ledger.acked_seq("gw-1") == 1
    plan = commit(ledger, batch(3))
    assert seqs(plan) == []
    assert plan.duplicates == 1
    assert plan.cursors["gw-1"] == Cursor(1, {3})


def test_duplicate_within_one_plan():
    ledger = DeliveryLedger()
    plan = ledger.plan([batch(1), batch(1), batch(4), batch(4), batch(2), batch(2)])
    assert seqs(plan) == [1, 4, 2]
    assert plan.duplicates == 3
    assert plan.cursors["gw-1"] == Cursor(2, {4})


def test_out_of_order_arrival_ends_at_highest_contiguous_seq():
    ledger = DeliveryLedger()
    plan = commit(ledger, batch(3))
    assert seqs(plan) == [3]
    assert ledger.acked_seq("gw-1") == 0
    plan = commit(ledger, batch(1))
    assert seqs(plan) == [1]
    assert ledger.acked_seq("gw-1") == 1
    plan = commit(ledger, batch(2))
    assert seqs(plan) == [2]
    assert ledger.acked_seq("gw-1") == 3
    assert plan.cursors["gw-1"].committed_above == set()


def test_out_of_order_within_one_plan():
    ledger = DeliveryLedger()
    plan = commit(ledger, batch(3), batch(1), batch(2))
    assert seqs(plan) == [3, 1, 2]
    assert ledger.acked_seq("gw-1") == 3


def test_gateways_are_independent():
    ledger = DeliveryLedger()
    plan = commit(ledger, batch(1, gateway_id="a"), batch(1, gateway_id="b"), batch(2, gateway_id="b"))
    assert seqs(plan) == [1, 1, 2]
    assert plan.duplicates == 0
    assert ledger.acked_seq("a") == 1
    assert ledger.acked_seq("b") == 2
    assert set(plan.cursors) == {"a", "b"}
    plan = commit(ledger, batch(2, gateway_id="a"))
    assert set(plan.cursors) == {"a"}
    assert ledger.acked_seq("b") == 2


def test_released_seqs_become_a_gap_and_the_cursor_moves_past_them():
    ledger = DeliveryLedger()
    commit(ledger, batch(1), batch(2))
    plan = commit(ledger, batch(7, oldest=6, boot_id="f" * 32))
    assert seqs(plan) == [7]
    assert plan.gaps == [Gap("gw-1", 3, 5, "f" * 32)]
    # 6 is still held by the gateway: the cursor waits for it
    assert plan.cursors["gw-1"] == Cursor(5, {7})
    plan = commit(ledger, batch(6, oldest=6))
    assert plan.gaps == []
    assert ledger.acked_seq("gw-1") == 7


def test_a_new_gateways_first_batch_sets_its_start_without_a_gap():
    ledger = DeliveryLedger()
    plan = commit(ledger, batch(5, oldest=5))
    assert plan.gaps == []
    assert ledger.acked_seq("gw-1") == 5


def test_a_new_gateway_with_a_backlog_starts_at_its_oldest_held_batch():
    ledger = DeliveryLedger()
    commit(ledger, batch(7, oldest=3))
    assert ledger.acked_seq("gw-1") == 2
    commit(ledger, batch(3, oldest=3), batch(4, oldest=3), batch(5, oldest=3), batch(6, oldest=3))
    assert ledger.acked_seq("gw-1") == 7


def test_gap_skips_seqs_already_committed_above():
    ledger = DeliveryLedger()
    commit(ledger, batch(1), batch(4), batch(7))
    assert ledger.acked_seq("gw-1") == 1
    plan = commit(ledger, batch(10, oldest=10))
    assert plan.gaps == [Gap("gw-1", 2, 3, BOOT), Gap("gw-1", 5, 6, BOOT), Gap("gw-1", 8, 9, BOOT)]
    assert ledger.acked_seq("gw-1") == 10
    assert plan.cursors["gw-1"].committed_above == set()


def test_gap_keeps_seqs_committed_above_the_new_floor():
    ledger = DeliveryLedger()
    commit(ledger, batch(1), batch(6), batch(9))
    plan = commit(ledger, batch(5, oldest=4))
    # 2..3 released; 4 is still held, so the cursor stops at 3 and waits; 5 and 6 follow on from 4
    assert plan.gaps == [Gap("gw-1", 2, 3, BOOT)]
    assert plan.cursors["gw-1"] == Cursor(3, {5, 6, 9})
    plan = commit(ledger, batch(4, oldest=4))
    assert plan.gaps == []
    assert plan.cursors["gw-1"] == Cursor(6, {9})


def test_gap_ending_right_below_a_committed_seq():
    ledger = DeliveryLedger()
    commit(ledger, batch(1), batch(4))
    plan = commit(ledger, batch(5, oldest=5))
    assert plan.gaps == [Gap("gw-1", 2, 3, BOOT)]
    assert ledger.acked_seq("gw-1") == 5


def test_oldest_held_at_or_below_acked_plus_one_records_no_gap():
    ledger = DeliveryLedger()
    commit(ledger, batch(1), batch(2))
    plan = commit(ledger, batch(3, oldest=3), batch(4, oldest=1), batch(6, oldest=4))
    assert plan.gaps == []
    assert plan.cursors["gw-1"] == Cursor(4, {6})


def test_duplicate_batch_still_moves_the_cursor_past_released_seqs():
    ledger = DeliveryLedger()
    commit(ledger, batch(1), batch(5))
    plan = commit(ledger, batch(5, oldest=5))
    assert plan.duplicates == 1
    assert seqs(plan) == []
    assert plan.gaps == [Gap("gw-1", 2, 4, BOOT)]
    assert ledger.acked_seq("gw-1") == 5


def test_gaps_are_not_repeated_on_resend():
    ledger = DeliveryLedger()
    commit(ledger, batch(1))
    first = commit(ledger, batch(5, oldest=5))
    again = commit(ledger, batch(5, oldest=5))
    assert first.gaps == [Gap("gw-1", 2, 4, BOOT)]
    assert again.gaps == []
    assert again.duplicates == 1


def test_plan_does_not_change_the_ledger_until_apply():
    ledger = DeliveryLedger()
    commit(ledger, batch(1), batch(3))
    plan = ledger.plan([batch(2), batch(4), batch(9, oldest=8)])
    assert ledger.acked_seq("gw-1") == 1
    # planning the same batches again gives the same answer: nothing was adopted
    again = ledger.plan([batch(2), batch(4), batch(9, oldest=8)])
    assert seqs(again) == seqs(plan) == [2, 4, 9]
    assert again.gaps == plan.gaps == [Gap("gw-1", 5, 7, BOOT)]
    assert ledger.acked_seq("gw-1") == 1
    ledger.apply(plan)
    assert plan.cursors["gw-1"] == Cursor(7, {9})
    assert ledger.acked_seq("gw-1") == 7
    assert seqs(ledger.plan([batch(2), batch(4), batch(9)])) == []


def test_a_discarded_plan_leaves_the_initial_cursors_untouched():
    initial = {"gw-1": Cursor(2, {4})}
    ledger = DeliveryLedger(initial)
    ledger.plan([batch(3), batch(5)])
    assert initial["gw-1"] == Cursor(2, {4})
    plan = ledger.plan([batch(3)])
    assert plan.cursors["gw-1"] == Cursor(4)


def test_ledger_starts_from_loaded_cursors():
    ledger = DeliveryLedger({"gw-1": Cursor(10, {12})})
    plan = ledger.plan([batch(12), batch(10), batch(11)])
    assert seqs(plan) == [11]
    assert plan.duplicates == 2
    assert plan.cursors["gw-1"] == Cursor(12)


@settings(max_examples=200)
@given(
    st.integers(1, 40).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.permutations(range(1, n + 1)),
            st.lists(st.integers(1, n), max_size=2 * n),
            st.randoms(use_true_random=False),
            st.lists(st.integers(1, 8), min_size=1, max_size=20),
        )
    )
)
def test_any_order_with_duplicates_stores_each_seq_once(args):
    n, permutation, extra, rnd, group_sizes = args
    arrivals = list(permutation) + extra
    rnd.shuffle(arrivals)
    ledger = DeliveryLedger()
    stored: list[int] = []
    duplicates = 0
    position = 0
    size_index = 0
    while position < len(arrivals):
        size = group_sizes[size_index % len(group_sizes)]
        size_index += 1
        plan = commit(ledger, *(batch(seq) for seq in arrivals[position : position + size]))
        position += size
        assert plan.gaps == []
        stored.extend(seqs(plan))
        duplicates += plan.duplicates
        # acked never passes a seq that was not stored yet
        assert set(range(1, ledger.acked_seq("gw-1") + 1)) <= set(stored)
    assert sorted(stored) == list(range(1, n + 1))
    assert duplicates == len(extra)
    assert ledger.acked_seq("gw-1") == n
