"""MCMC convergence diagnostics in NumPy: effective sample size, split R-hat, MCSE, summaries.

All functions take draws of shape (chains, draws) or (chains, draws, ...) (NumPy arrays, or any
backend's arrays, which are copied to the host) and work on each trailing coordinate separately.
They follow Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), as Stan and ArviZ compute
them:

- chains are **split** in halves (the middle draw of an odd-length chain is dropped), so that a
  chain that drifts looks like two chains that disagree;
- **rank normalisation**: draws are replaced by normal scores of their pooled ranks,
  ``ndtri((rank - 3/8) / (S + 1/4))``, which makes the diagnostics work for heavy tails;
- the **effective sample size** of ``M`` chains of ``N`` draws is ``M N / tau`` with the
  integrated autocorrelation time ``tau = -1 + 2 sum_t rho_t`` estimated from the
  multi-chain autocorrelations ``rho_t = 1 - (W - mean_chain acov_t) / var_plus``, truncated by
  Geyer's initial positive sequence and made monotone (Geyer's initial monotone sequence);
- **bulk** ESS is the ESS of the rank-normalised split chains; **tail** ESS the smaller ESS of
  the indicators of being below the 5% and above the 95% quantiles;
- **R-hat** is the larger of the rank-normalised split R-hat of the draws and of their
  distances from the median (the folded draws).

References
----------
Vehtari, Gelman, Simpson, Carpenter and Buerkner (2021), "Rank-normalization, folding, and
localization: an improved R-hat for assessing convergence of MCMC", Bayesian Analysis 16(2).
Geyer (1992), "Practical Markov chain Monte Carlo", Statistical Science 7(4) (initial monotone
sequence estimator).
Gelman and Rubin (1992), "Inference from iterative simulation using multiple sequences",
Statistical Science 7(4).
Stan Development Team, Stan Reference Manual, "Effective sample size" and "Potential scale
reduction".
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = [
    "autocorrelation", "effective_sample_size", "format_summary", "mcse", "print_summary",
    "split_gelman_rubin", "summary",
]


def _host(x) -> np.ndarray:
    """``x`` as a float64 NumPy array (backend arrays are copied to the host)."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float64, copy=False)
    if hasattr(x, "detach"):           # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _check(x, name="x") -> np.ndarray:
    x = _host(x)
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (chains, draws) or (chains, draws, ...), got "
                         f"shape {x.shape} (add a chain axis with x[None] for one chain)")
    return x


def _per_coordinate(fn, x) -> np.ndarray | float:
    """Apply ``fn((chains, draws)) -> float`` to every trailing coordinate of ``x``."""
    chains, draws = x.shape[:2]
    rest = x.shape[2:]
    flat = x.reshape(chains, draws, -1)
    out = np.array([fn(flat[:, :, j]) for j in range(flat.shape[-1])], dtype=np.float64)
    return float(out[0]) if not rest else out.reshape(rest)


def _split(x: np.ndarray) -> np.ndarray:
    """(M, N) -> (2M, N // 2): each chain cut into halves (the middle draw of odd N dropped)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half:]], axis=0)


def _rank_normalise(x: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled (average) ranks: ``ndtri((r - 3/8) / (S + 1/4))``."""
    from scipy import special, stats  # loaded on first use: importing agvi stays light
    ranks = stats.rankdata(x, method="average").reshape(x.shape)
    return special.ndtri((ranks - 0.375) / (x.size + 0.25))


def autocorrelation(x, axis: int = -1) -> np.ndarray:
    """Autocorrelation of each series along ``axis`` (biased estimator, by FFT).

    Parameters
    ----------
    x : array_like
        Series along ``axis``, e.g. shape (chains, draws).

    Returns
    -------
    numpy.ndarray, the shape of ``x``
        ``rho_t = acov_t / acov_0`` with ``acov_t = sum_{i < n - t} (x_i - m)(x_{i+t} - m) / n``
        (NaN for a constant series).
    """
    acov = _autocovariance(np.moveaxis(_host(x), axis, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.moveaxis(acov / acov[..., :1], -1, axis)


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariance along the last axis (zero-padded FFT: exact linear lags)."""
    n = x.shape[-1]
    centred = x - x.mean(axis=-1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(centred, n=size, axis=-1)
    acov = np.fft.irfft(spectrum * np.conjugate(spectrum), n=size, axis=-1)[..., :n]
    return acov / n


def _ess(x: np.ndarray) -> float:
    """ESS of (M, N) chains (not split, not normalised here) by Geyer's initial monotone
    sequence on the multi-chain autocorrelations (Stan's estimator)."""
    chains, n = x.shape
    if n < 4 or not np.all(np.isfinite(x)):
        return math.nan
    if np.all(x == x.flat[0]):
        return math.nan
    acov = _autocovariance(x)
    mean_acov = acov.mean(axis=0)
    within = mean_acov[0] * n / (n - 1.0)              # mean of the chains' sample variances
    var_plus = within * (n - 1.0) / n
    if chains > 1:
        var_plus += np.var(x.mean(axis=1), ddof=1)
    rho = np.zeros(n)
    rho[0] = 1.0
    rho_even, rho_odd = 1.0, 1.0 - (within - mean_acov[1]) / var_plus
    rho[1] = rho_odd
    # initial positive sequence: sum pairs (rho_{2k} + rho_{2k+1}) while positive
    t = 1
    while t < n - 3 and rho_even + rho_odd > 0.0:
        rho_even = 1.0 - (within - mean_acov[t + 1]) / var_plus
        rho_odd = 1.0 - (within - mean_acov[t + 2]) / var_plus
        if rho_even + rho_odd >= 0.0:
            rho[t + 1], rho[t + 2] = rho_even, rho_odd
        t += 2
    last = t - 2
    if rho_even > 0.0:                                # keep a positive even lag that ended it
        rho[last + 1] = rho_even
    # initial monotone sequence: pair sums must not increase
    t = 1
    while t <= last - 2:
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = 0.5 * (rho[t - 1] + rho[t])
        t += 2
    total = chains * n
    tau = -1.0 + 2.0 * np.sum(rho[:last + 1]) + rho[last + 1]
    # a lower bound for antithetic chains, as Stan: ESS <= S log10(S)
    tau = max(tau, 1.0 / math.log10(total))
    return total / tau


def effective_sample_size(x, method: str = "bulk") -> np.ndarray | float:
    """Effective sample size of MCMC draws (rank-normalised split-chain estimate by default).

    Parameters
    ----------
    x : array_like, shape (chains, draws) or (chains, draws, ...)
        The draws, chains first (at least 4 draws per split half for a finite value).
    method : {"bulk", "tail", "mean"}
        ``"bulk"``: ESS of the rank-normalised split chains (for means and medians);
        ``"tail"``: the smaller ESS of the indicators ``x <= q05`` and ``x <= q95`` on split
        chains (for 5% and 95% quantiles); ``"mean"``: ESS of the split chains without rank
        normalisation (the one behind the MCSE of the mean).

    Returns
    -------
    float or numpy.ndarray of shape ``x.shape[2:]``
        NaN for a coordinate with non-finite draws, constant draws, or too few draws.

    Raises
    ------
    ValueError
        If ``x`` has fewer than two axes or ``method`` is unknown.

    References
    ----------
    Vehtari et al. (2021), Bayesian Analysis 16(2), sections 3.2-3.3 and appendix A; Geyer
    (1992), Statistical Science 7(4).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(4, 1000))
    >>> 3000 < effective_sample_size(x) < 5000
    True
    """
    x = _check(x)
    if method == "bulk":
        return _per_coordinate(lambda c: _ess(_rank_normalise(_split(c))), x)
    if method == "tail":
        return _per_coordinate(_ess_tail, x)
    if method == "mean":
        return _per_coordinate(lambda c: _ess(_split(c)), x)
    raise ValueError(f"method must be 'bulk', 'tail' or 'mean', got {method!r}")


def _ess_tail(c: np.ndarray) -> float:
    if not np.all(np.isfinite(c)):
        return math.nan
    values = []
    for prob in (0.05, 0.95):
        below = (c <= np.quantile(c, prob)).astype(np.float64)
        values.append(_ess(_split(below)))
    return min(values)


def _rhat(x: np.ndarray) -> float:
    """Classic R-hat of (M, N) chains."""
    n = x.shape[1]
    between = n * np.var(x.mean(axis=1), ddof=1)
    within = np.mean(np.var(x, axis=1, ddof=1))
    return math.sqrt((between / within + n - 1.0) / n)


def _rank_rhat(c: np.ndarray) -> float:
    if c.shape[1] < 4 or not np.all(np.isfinite(c)) or np.all(c == c.flat[0]):
        return math.nan
    bulk = _rhat(_rank_normalise(_split(c)))
    folded = np.abs(c - np.median(c))
    tail = _rhat(_rank_normalise(_split(folded)))
    return max(bulk, tail)


def split_gelman_rubin(x) -> np.ndarray | float:
    """Rank-normalised split R-hat: the larger of the bulk and the folded (tail) R-hat.

    Parameters
    ----------
    x : array_like, shape (chains, draws) or (chains, draws, ...)
        The draws (one chain works too: its two halves are compared).

    Returns
    -------
    float or numpy.ndarray of shape ``x.shape[2:]``
        Values near 1 mean the chains agree; above 1.01 (Vehtari et al.) or 1.05 (a looser
        common rule) is a warning. NaN for non-finite, constant or too few draws.

    Raises
    ------
    ValueError
        If ``x`` has fewer than two axes.

    References
    ----------
    Vehtari et al. (2021), Bayesian Analysis 16(2), section 4 (equations 4.1-4.3);
    Gelman and Rubin (1992), Statistical Science 7(4).
    """
    return _per_coordinate(_rank_rhat, _check(x))


def mcse(x) -> np.ndarray | float:
    """Monte Carlo standard error of the posterior mean: ``sd / sqrt(ESS_mean)``.

    Parameters
    ----------
    x : array_like, shape (chains, draws) or (chains, draws, ...)

    Returns
    -------
    float or numpy.ndarray of shape ``x.shape[2:]``
        ``sd`` is the standard deviation of all draws (``ddof=1``), ``ESS_mean`` the
        split-chain ESS without rank normalisation (``effective_sample_size(x, "mean")``).

    Raises
    ------
    ValueError
        If ``x`` has fewer than two axes.

    References
    ----------
    Vehtari et al. (2021), Bayesian Analysis 16(2), section 4.4.
    """
    x = _check(x)

    def one(c):
        ess = _ess(_split(c))
        return float(np.std(c, ddof=1) / math.sqrt(ess)) if ess > 0 else math.nan

    return _per_coordinate(one, x)


_COLUMNS = ("mean", "sd", "q5", "q50", "q95", "mcse", "ess_bulk", "ess_tail", "r_hat")


def _named(samples) -> dict:
    """{name: (chains, draws, ...) array} from a mapping or a single array."""
    if isinstance(samples, Mapping):
        return {str(k): _check(v, f"samples[{k!r}]") for k, v in samples.items()}
    return {"x": _check(samples, "samples")}


def summary(samples, prob: float = 0.9) -> dict:
    """Posterior summaries and diagnostics for every coordinate.

    Parameters
    ----------
    samples : array_like of shape (chains, draws, ...) or a mapping {name: such an array}
        Draws grouped by chain.
    prob : float
        Central probability of the reported interval: with the default 0.9 the quantiles are
        5% and 95% (the keys are still ``"q5"`` and ``"q95"``, holding the
        ``(1 - prob) / 2`` and ``(1 + prob) / 2`` quantiles).

    Returns
    -------
    dict
        ``{row name: {"mean", "sd", "q5", "q50", "q95", "mcse", "ess_bulk", "ess_tail",
        "r_hat"}}`` with one row per scalar coordinate, named ``name`` for a scalar site and
        ``name[i,j]`` for element ``(i, j)`` of an array site. Values are Python floats.

    Raises
    ------
    ValueError
        If an array has fewer than two axes or ``prob`` is not in (0, 1).
    """
    if not 0.0 < prob < 1.0:
        raise ValueError(f"prob must lie in (0, 1), got {prob!r}")
    lo, hi = (1.0 - prob) / 2.0, (1.0 + prob) / 2.0
    rows = {}
    for name, x in _named(samples).items():
        chains, draws = x.shape[:2]
        shape = x.shape[2:]
        flat = x.reshape(chains, draws, -1)
        for j in range(flat.shape[-1]):
            c = flat[:, :, j]
            index = np.unravel_index(j, shape) if shape else ()
            label = name if not shape else f"{name}[{','.join(str(i) for i in index)}]"
            pooled = c.reshape(-1)
            q = np.quantile(pooled, [lo, 0.5, hi]) if pooled.size else [math.nan] * 3
            rows[label] = {
                "mean": float(np.mean(pooled)) if pooled.size else math.nan,
                "sd": float(np.std(pooled, ddof=1)) if pooled.size > 1 else math.nan,
                "q5": float(q[0]), "q50": float(q[1]), "q95": float(q[2]),
                "mcse": mcse(c[:, :, None])[0] if draws else math.nan,
                "ess_bulk": effective_sample_size(c[:, :, None], "bulk")[0] if draws
                else math.nan,
                "ess_tail": effective_sample_size(c[:, :, None], "tail")[0] if draws
                else math.nan,
                "r_hat": split_gelman_rubin(c[:, :, None])[0] if draws else math.nan,
            }
            rows[label] = {k: float(v) for k, v in rows[label].items()}
    return rows


def format_summary(samples, prob: float = 0.9) -> str:
    """The :func:`summary` of ``samples`` as a text table (one row per coordinate)."""
    rows = summary(samples, prob=prob)
    width = max([len(r) for r in rows] + [4])
    lo, hi = 100 * (1 - prob) / 2, 100 * (1 + prob) / 2
    headers = ("mean", "sd", f"{lo:g}%", "50%", f"{hi:g}%", "mcse", "ess_bulk", "ess_tail",
               "r_hat")
    lines = [" " * width + "".join(f"{h:>10}" for h in headers)]
    for label, r in rows.items():
        cells = [f"{r[k]:>10.3g}" if k in ("mean", "sd", "q5", "q50", "q95", "mcse")
                 else f"{r[k]:>10.2f}" for k in _COLUMNS]
        lines.append(f"{label:>{width}}" + "".join(cells))
    return "\n".join(lines)


def print_summary(samples, prob: float = 0.9) -> None:
    """Print :func:`format_summary` of ``samples``."""
    print(format_summary(samples, prob=prob))
