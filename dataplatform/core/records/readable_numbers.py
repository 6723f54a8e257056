"""Numbers rounded for a reader: review sheets, dataset cards and asset metadata.

A raw float (``-0.09459219872951508``, ``3.754666666666667e-09``) hides its magnitude in
digits nobody reads. Three significant digits keep what a reviewer compares; a cosine keeps
four decimals, because thresholds such as 0.95 and 0.999 differ past the third digit and a
similarity must never print equal to a threshold it is below. Stored values (Parquet, JSON)
keep full precision; only what is shown is rounded.
"""

from __future__ import annotations

import math

SIGNIFICANT_DIGITS = 3
COSINE_DECIMALS = 4


def round_significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (0, NaN and infinities unchanged)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def format_number(value: float | int | None, digits: int = SIGNIFICANT_DIGITS) -> str:
    """``value`` as a reader wants it: integers whole, floats to ``digits`` significant digits.

    Plain notation between 1e-4 and 1e6 (``0.0946``, ``19.6``, ``0.3``, ``12300``), without
    trailing zeros; scientific outside (``3.75e-09``); None is an en dash.
    """
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e15):
        return f"{int(value)}"
    x = round_significant(float(value), digits)
    if not math.isfinite(x):
        return str(x)
    if 1e-4 <= abs(x) < 1e6:
        decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
        text = f"{x:.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{x:.{digits - 1}e}"


def format_cosine(value: float | None) -> str:
    """A cosine similarity (or a similarity threshold) to ``COSINE_DECIMALS`` fixed decimals."""
    return "–" if value is None else f"{value:.{COSINE_DECIMALS}f}"


def format_share(value: float | None) -> str:
    """A fraction as a percentage to three significant digits (``0.0375%``, ``3.75e-07%``)."""
    return "–" if value is None else f"{format_number(value * 100)}%"
