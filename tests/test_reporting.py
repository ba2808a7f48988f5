"""hf_dpkd.reporting: the numbers, intervals, epsilons and markdown tables every report writes."""

import math

import numpy as np
import pytest

from hf_dpkd.reporting import (
    epsilon_cell,
    epsilon_number,
    markdown_table,
    mean_std,
    number,
    significant,
    thousands,
    with_interval,
)


def test_number_writes_floats_to_four_decimals_and_large_ones_to_three_significant_digits():
    assert number(0.65) == "0.6500"
    assert number(-0.5) == "-0.5000"
    assert number(9999.5) == "9999.5000"
    assert number(123456.789) == "1.23e+05"
    assert number(np.float64(0.25)) == "0.2500"  # a float subclass
    assert number(math.inf) == "inf" and number(math.nan) == "nan"
    assert [number(x) for x in (3, True, None, "x", np.float32(0.5))] == ["3", "True", "None", "x", "0.5"]


def test_number_with_digits_is_fixed_point_for_any_number():
    assert number(0.6888, 3) == "0.689"
    assert number(2, 2) == "2.00"
    assert number(math.nan, 2) == "nan"


def test_significant_keeps_the_digits_that_matter_at_any_scale():
    assert significant(44.15, 6) == "44.15" and significant(1.0, 6) == "1"
    assert significant(1234567.0, 6) == "1.23457e+06" and significant(0.000012345678, 6) == "1.23457e-05"
    assert significant(math.inf, 6) == "inf"


def test_with_interval_shows_the_interval_only_when_there_is_one():
    assert with_interval(0.65, [0.5712, 0.72634]) == "0.6500 [0.5712, 0.7263]"
    assert with_interval(0.65, (0.611, 0.6888), 3) == "0.650 [0.611, 0.689]"
    assert with_interval(0.65, np.array([0.6, 0.7]), 2) == "0.65 [0.60, 0.70]"
    assert with_interval(0.25, None) == with_interval(0.25, []) == "0.2500"
    assert with_interval(0.25, None, 3) == "0.250"
    assert with_interval(7, [5, 9]) == "7 [5, 9]"


def test_mean_std_and_thousands():
    assert mean_std(12.0, 2.0) == "12.00 ± 2.00"
    assert mean_std(152.0444, 0.7999, digits=1) == "152.0 ± 0.8"
    assert thousands(940800) == "940,800" and thousands(12) == "12"


def test_epsilon_number_and_cell_say_inf_and_zero_in_words():
    assert epsilon_number(1.999) == "2.00" and epsilon_number(0.5, 3) == "0.500"
    assert epsilon_number(math.inf) == "inf" and epsilon_number(math.nan) == "inf"
    assert epsilon_cell(math.inf) == "inf (not private)"
    assert epsilon_cell(0) == epsilon_cell(0.0) == "0 (no private data)"
    assert epsilon_cell(1.23456) == "1.235" and epsilon_cell(8) == "8.000"


def test_markdown_table_header_alignment_and_rows():
    lines = markdown_table(["Method", "epsilon", "n"], [["DP", 1.5, 3], ["none", "", None]], align="lrr")
    assert lines == [
        "| Method | epsilon | n |",
        "|---|---:|---:|",
        "| DP | 1.5000 | 3 |",
        "| none |  | None |",
    ]
    assert markdown_table(["key", "value"], []) == ["| key | value |", "|---|---|"]


def test_markdown_table_refuses_an_alignment_that_does_not_fit_the_header():
    with pytest.raises(
        ValueError, match=r"align='lr' must have one letter per column \(3: \['a', 'b', 'c'\]\)"
    ):
        markdown_table(["a", "b", "c"], [], align="lr")
    with pytest.raises(ValueError, match=r"align='lc' must have one letter per column .* each 'l' or 'r'"):
        markdown_table(["a", "b"], [], align="lc")
