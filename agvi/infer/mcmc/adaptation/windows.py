"""Stan's windowed warmup schedule, built in plain Python.

Warmup is split into a fast initial buffer (step size only), a sequence of slow windows of
doubling length (step size and mass matrix: the draws of each window estimate the inverse mass
matrix used from the next window on) and a fast terminal buffer (step size only, with the final
mass matrix). The defaults are Stan's: an initial buffer of 75 transitions, a first slow window
of 25 and a terminal buffer of 50; the last slow window is stretched to meet the terminal
buffer. When those do not fit in ``num_warmup``, the buffers become 15% and 10% of warmup and
the first slow window the remaining 75%; below 20 warmup transitions only the step size is
adapted.

References
----------
Stan Development Team, Stan Reference Manual, "HMC algorithm parameters: automatic parameter
tuning" (adaptation windows), and ``stan/mcmc/windowed_adaptation.hpp``.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

__all__ = ["AdaptationWindow", "schedule_arrays", "windowed_schedule"]


class AdaptationWindow(NamedTuple):
    """A run of warmup transitions ``start .. end`` (inclusive, 0-based).

    Attributes
    ----------
    start, end : int
    slow : bool
        Whether the mass matrix is estimated from the window's draws (and updated, with the
        step size re-initialised, at its end).
    """

    start: int
    end: int
    slow: bool


def windowed_schedule(num_warmup: int, initial_buffer: int = 75, first_window: int = 25,
                      terminal_buffer: int = 50) -> list[AdaptationWindow]:
    """Stan's warmup windows.

    Parameters
    ----------
    num_warmup : int
        Number of warmup transitions (>= 0).
    initial_buffer, first_window, terminal_buffer : int
        Stan's ``init_buffer``, ``window`` and ``term_buffer`` (75, 25, 50).

    Returns
    -------
    list of AdaptationWindow
        Contiguous windows covering ``0 .. num_warmup - 1``: a fast initial buffer, slow
        windows of doubling size, a fast terminal buffer (empty windows are left out). Fewer
        than 20 transitions give one fast window (a warning says that the mass matrix is not
        adapted); none for ``num_warmup == 0``.

    Raises
    ------
    ValueError
        If ``num_warmup`` or a buffer size is negative, or ``first_window`` is not positive.

    Examples
    --------
    >>> [(w.start, w.end, w.slow) for w in windowed_schedule(1000)][:3]
    [(0, 74, False), (75, 99, True), (100, 149, True)]
    >>> [(w.start, w.end) for w in windowed_schedule(1000)][-2:]
    [(450, 949), (950, 999)]
    """
    for name, value in (("num_warmup", num_warmup), ("initial_buffer", initial_buffer),
                        ("terminal_buffer", terminal_buffer)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if int(first_window) != first_window or first_window < 1:
        raise ValueError(f"first_window must be a positive int, got {first_window!r}")
    n = int(num_warmup)
    if n == 0:
        return []
    if n < 20:
        warnings.warn(f"num_warmup={n} < 20: only the step size is adapted (Stan's rule); the "
                      "mass matrix keeps its initial value", UserWarning, stacklevel=3)
        return [AdaptationWindow(0, n - 1, False)]
    if initial_buffer + first_window + terminal_buffer > n:
        # Stan's rule for short warmups: 15% / 75% / 10%
        initial_buffer = int(0.15 * n)
        terminal_buffer = int(0.1 * n)
        first_window = n - initial_buffer - terminal_buffer
    windows = []
    if initial_buffer > 0:
        windows.append(AdaptationWindow(0, initial_buffer - 1, False))
    slow_end = n - terminal_buffer          # first transition of the terminal buffer
    start, size, first = initial_buffer, first_window, True
    while start < slow_end:
        end = min(start + size, slow_end)
        # stretch a later window to the terminal buffer when the next (twice as long) would
        # not fit before it (Stan never stretches the first one)
        if not first and end + 2 * size > slow_end:
            end = slow_end
        first = False
        windows.append(AdaptationWindow(start, end - 1, True))
        start, size = end, 2 * size
    if terminal_buffer > 0:
        windows.append(AdaptationWindow(slow_end, n - 1, False))
    return windows


def schedule_arrays(windows: list[AdaptationWindow], num_warmup: int) -> dict:
    """Per-transition flags of a schedule, for a compiled warmup loop.

    Parameters
    ----------
    windows : list of AdaptationWindow
        From :func:`windowed_schedule` (or any contiguous cover of ``0 .. num_warmup - 1``).
    num_warmup : int

    Returns
    -------
    dict of numpy arrays, each of shape (num_warmup,)
        ``"slow"`` (bool): the transition's draw enters the mass-matrix estimate;
        ``"window_end"`` (bool): after the transition the mass matrix is updated and the step
        size re-initialised (the last transition of a slow window).

    Raises
    ------
    ValueError
        If the windows do not cover ``0 .. num_warmup - 1`` contiguously.
    """
    slow = np.zeros(num_warmup, dtype=bool)
    window_end = np.zeros(num_warmup, dtype=bool)
    expected = 0
    for w in windows:
        if w.start != expected or w.end < w.start:
            raise ValueError(f"windows must cover 0..{num_warmup - 1} contiguously; got {windows}")
        if w.slow:
            slow[w.start:w.end + 1] = True
            window_end[w.end] = True
        expected = w.end + 1
    if expected != num_warmup:
        raise ValueError(f"windows must cover 0..{num_warmup - 1} contiguously; got {windows}")
    return {"slow": slow, "window_end": window_end}
