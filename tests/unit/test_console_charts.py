"""The console's server-made SVG charts and its change diffs."""

from __future__ import annotations

from decimal import Decimal
from xml.etree import ElementTree

from api.console.board import diff_rows
from api.console.charts import _nice_max, bar_chart, line_chart


def test_a_line_chart_draws_one_polyline_per_series_with_escaped_labels():
    svg = line_chart("Cost <per> outcome", {"triage": [("2026-11-02", Decimal("0.0021")), ("2026-11-09", Decimal("0.0034"))],
                                           "a&b": [("2026-11-02", Decimal("0.001")), ("2026-11-09", None)]}, "$")
    root = ElementTree.fromstring(str(svg))
    ns = "{http://www.w3.org/2000/svg}"
    assert root.get("aria-label") == "Cost <per> outcome"
    assert len(root.findall(f"{ns}polyline") + root.findall("polyline")) == 1  # a&b has one point only
    texts = [t.text for t in root.iter() if t.tag.endswith("text")]
    assert "a&b" in texts and "$0.0050" in texts  # axis max rounds 0.0034 up to 0.005


def test_a_bar_chart_scales_bars_to_the_largest_value_and_skips_missing_ones():
    root = ElementTree.fromstring(str(bar_chart("Breaches", [("x", 4), ("y", 2), ("z", None)])))
    widths = [float(r.get("width")) for r in root.iter() if r.tag.endswith("rect")]
    assert len(widths) == 2 and widths[0] == 2 * widths[1]


def test_an_empty_chart_says_there_is_no_data():
    assert "no data yet" in str(line_chart("t", {}))
    assert "no data yet" in str(bar_chart("t", [("a", None)]))


def test_axis_maxima_are_round_numbers_at_or_above_the_data():
    assert [_nice_max(v) for v in (0.0031, 0.7, 3, 7, 12, 1000)] == [0.005, 1.0, 5.0, 10.0, 20.0, 1000.0]


def test_a_change_diff_lists_changed_fields_first_with_nested_keys_flattened():
    rows = diff_rows({"limit": 500, "tier": "silver", "owner": {"id": 1}},
                     {"limit": 2500, "tier": "silver", "owner": {"id": 2}, "note": "x"})
    assert rows[:3] == [("limit", 500, 2500, True), ("note", None, "x", True), ("owner.id", 1, 2, True)]
    assert rows[3] == ("tier", "silver", "silver", False)
