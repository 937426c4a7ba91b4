"""Settings checks shared by the classifier methods (numpy-free, torch-free: the closed-form
methods run without importing torch)."""

from __future__ import annotations

import numbers

from ltpipe.utils import LtpipeError


def check_number(settings: dict, key: str, method: str, lo: float | None = None,
                 hi: float | None = None, integer: bool = False,
                 lo_open: bool = False) -> None:
    """Raise ``LtpipeError`` unless ``settings[key]`` is a number (integer) in [lo, hi]."""
    v = settings[key]
    kind = "an integer" if integer else "a number"
    ok = isinstance(v, numbers.Integral if integer else numbers.Real) and not isinstance(v, bool)
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v <= hi
    if not ok:
        lo_s = "-inf" if lo is None else str(lo)
        hi_s = "inf" if hi is None else str(hi)
        interval = f"{'(' if lo_open else '['}{lo_s}, {hi_s}]"
        raise LtpipeError(f"{method}: setting {key}={v!r} is invalid; expected {kind} in "
                          f"{interval}; fix it in the method's settings")


def check_choice(settings: dict, key: str, method: str, choices: tuple) -> None:
    """Raise ``LtpipeError`` unless ``settings[key]`` is one of ``choices``."""
    if settings[key] not in choices:
        raise LtpipeError(f"{method}: setting {key}={settings[key]!r} is invalid; expected one "
                          f"of {list(choices)}")
