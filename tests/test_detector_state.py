"""Detector state: the distinct-destination count that escalation rests on."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from detectors.state import DistinctInWindow, widest_count


def most_in_one_interval(times: list[float], moment: float, width: float) -> int:
    """Count by the definition: every interval start from moment - width to moment."""
    starts = [t for t in times if moment - width <= t <= moment] + [moment]
    return max(sum(1 for t in times if s <= t <= s + width) for s in starts)


# Whole seconds: the definition and the bisections then agree exactly at edges.
seconds = st.integers(0, 300).map(float)


@given(st.lists(seconds, max_size=40), seconds, st.integers(0, 120).map(float))
def test_widest_count_is_the_most_times_in_one_interval_holding_the_moment(
    times: list[float], moment: float, width: float
) -> None:
    """Any order of arrival, repeats and edges included."""
    times.sort()
    assert widest_count(times, moment, width) == most_in_one_interval(
        times, moment, width
    )


@given(st.lists(st.tuples(st.integers(0, 30), seconds), max_size=80))
def test_distinct_in_window_counts_each_item_at_its_latest_moment(
    seen: list[tuple[int, float]],
) -> None:
    """Each add answers as a recount of everything kept so far would."""
    counters: Counter[str] = Counter()
    reached = DistinctInWindow(
        60.0, 120.0, max_keys=8, max_items=1000, counters=counters
    )
    latest: dict[str, float] = {}
    for number, moment in seen:
        item = f"192.0.2.{number}"
        latest[item] = max(latest.get(item, moment), moment)
        horizon = max(latest.values()) - 180.0
        latest = {k: v for k, v in latest.items() if v >= horizon}
        expected = most_in_one_interval(sorted(latest.values()), moment, 60.0)
        assert reached.add("10.0.0.1", item, moment) == expected


def test_a_scanner_past_the_item_cap_loses_its_longest_unseen_destinations() -> None:
    """The cap holds, the eviction is counted, and the newest still count."""
    counters: Counter[str] = Counter()
    reached = DistinctInWindow(
        60.0, 120.0, max_keys=8, max_items=256, counters=counters
    )
    counts = [
        reached.add("10.0.0.1", f"203.0.113.{n % 250}.{n}", 1000.0 + n / 1000)
        for n in range(100_000)
    ]
    assert counts[:3] == [1, 2, 3]
    assert counts[-1] == 256
    assert counters["items_evicted"] == 100_000 - 256
    # A destination seen again counts once, at its later moment.
    assert reached.add("10.0.0.1", "203.0.113.9.99999", 1100.0) == 256
