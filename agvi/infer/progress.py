"""The progress bar shared by SVI, GVI and MCMC (tqdm, a dependency, imported on first use)."""

from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, enabled: bool = True, *, leave: bool = False,
                 interactive_only: bool = False):
    """A ``tqdm`` bar of ``total`` steps labelled ``desc``, or None.

    Parameters
    ----------
    total : int
        Number of steps; no bar for ``total <= 0``.
    desc : str
    enabled : bool
        False gives None (the caller's ``progress_bar=False``).
    leave : bool
        Keep the finished bar on screen.
    interactive_only : bool
        No bar unless stderr is a terminal or a Jupyter kernel (MCMC's long runs in logs).

    Returns
    -------
    tqdm.tqdm or None
        None when disabled, not interactive (if asked), or tqdm cannot be imported.
    """
    if not enabled or total <= 0:
        return None
    if interactive_only and not (sys.stderr.isatty() or "ipykernel" in sys.modules):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is optional
        return None
    return tqdm(total=total, desc=desc, leave=leave)
