"""Numbers for reading: three significant digits, cosines to four decimals."""

import math

from dataplatform.core.records.readable_numbers import (
    format_cosine,
    format_number,
    format_share,
    round_significant,
)


def test_floats_keep_three_significant_digits_and_integers_stay_whole():
    assert format_number(-0.09459219872951508) == "-0.0946"
    assert format_number(19.556271128518848) == "19.6"
    assert format_number(3.754666666666667e-9) == "3.75e-09"
    assert format_number(0.1) == "0.1" and format_number(9.996) == "10"
    assert format_number(12345) == "12345" and format_number(8.0) == "8"
    assert format_number(1234567.8) == "1.23e+06" and format_number(None) == "–"
    assert round_significant(-0.09459219872951508) == -0.0946
    assert round_significant(0.0) == 0.0 and math.isnan(round_significant(math.nan))


def test_cosines_keep_four_decimals_and_shares_read_as_percentages():
    # 0.9994 must not read as the 0.999 threshold it is above.
    assert format_cosine(0.99943) == "0.9994" and format_cosine(0.999) == "0.9990"
    assert format_share(0.123456) == "12.3%" and format_share(3.754666666666667e-9) == "3.75e-07%"
