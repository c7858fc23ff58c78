"""Implicit reparameterisation gradient of standard Gamma samples (NumPy/SciPy only).

For ``x ~ Gamma(a, 1)`` written as ``x = F^{-1}(u; a)`` with ``u`` held fixed, the implicit
function theorem gives (Figurnov et al., 2018, eq. 6)::

    dx/da = -(dP(a, x)/da) / p(x; a) = (dQ(a, x)/da) / p(x; a),

with ``P``/``Q`` the regularised lower/upper incomplete gamma functions and ``p`` the density.
:func:`standard_gamma_grad` evaluates the ratio directly and never forms ``P``, ``Q`` or ``p``, so
nothing under- or overflows in the tails. Three regions:

1. Power series of ``P`` (DLMF 8.7.1): ``a < 20`` and ``x <= a + 4``, or ``a >= 20`` and
   ``x < a`` outside region 3. With ``c_n = x^{n+1} / (a (a+1) ... (a+n))``::

       dx/da = -sum_{n>=0} c_n (log x - psi(a+n+1)).

   For ``x <= a`` all terms have one sign; up to ``x = a + 4`` the cancellation costs at most about
   two digits, and the series is cheaper there than region 2.
2. Legendre's continued fraction of ``Q`` (DLMF 8.9.2, in the form of Cephes ``igamc``): the other
   ``x > a``. With ``G = e^x x^{-a} Gamma(a, x)``::

       dx/da = x ((log x - psi(a)) G + dG/da),

   two positive terms (``x > a``); ``dG/da`` comes from differentiating the three-term
   recurrences of the convergents, as in XLA's ``RandomGammaGrad``.
3. Temme's uniform asymptotic expansion (Temme, 1979; DiDonato & Morris, 1986): ``a >= 20`` and
   ``|eta| <= 1`` (about ``0.4 a <= x <= 2.35 a``), the bulk of large-``a`` samples, where region 1
   cancels and region 2 needs O(sqrt(a)) steps. With ``lam = x/a``,
   ``eta^2/2 = lam - 1 - log(lam)``, ``sign(eta) = sign(lam - 1)``::

       Q = erfc(eta sqrt(a/2))/2 + e^{-a eta^2/2} / sqrt(2 pi a) S,   S ~ sum_k C_k(eta) a^{-k}.

   Differentiating at fixed ``x`` (``d eta/da = -(lam - 1)/(a eta)``) and dividing by
   ``p = e^{-a eta^2/2} sqrt(a/(2 pi)) / (x Gamma*(a))`` cancels every exponential::

       dx/da = lam Gamma*(a) [log(lam)/eta + (log(lam) - 1/(2a)) S
                              - (1/a) sum_k a^{-k} (k C_k + (lam - 1)/eta C_k'(eta))],

   ``Gamma*(a) = Gamma(a) / (sqrt(2 pi/a) (a/e)^a)`` (Stirling series). The Taylor coefficients of
   ``C_k`` in ``eta`` are generated once, exactly in rational arithmetic, from Temme's recursion
   ``C_0 = 1/(lam-1) - 1/eta``, ``C_k = C_{k-1}'(eta)/eta + g_k/(lam-1)``.

Measured against mpmath (50-digit ground truth): relative error below 5e-14 for ``a`` in
``[1e-3, 1e5]``, ``x`` from the 1e-10 to the 1 - 1e-10 quantile and well beyond.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from math import comb

import numpy as np
from scipy import special as _sp

__all__ = ["standard_gamma_grad"]

_A_TEMME = 20.0      # region 3 needs a >= this ...
_ETA_MAX = 1.0       # ... and |eta| <= this
_X_OFFSET = 4.0      # for a < _A_TEMME: region 1 when x <= a + _X_OFFSET, else region 2
_CHUNK = 8192        # elements per block in regions 1 and 2 (temporaries stay in cache)
_TEMME_BYTES = 2 ** 20  # region 3 block size: about this many bytes of temporaries
_BATCH = 128         # elements per small GEMM in region 3 (small GEMMs stay single-threaded)
_CHECK = 8           # steps between convergence checks in regions 1 and 2
_MAX_STEPS = 20000   # hard bound on series terms / continued-fraction steps
_TOL = 2.0 ** -51    # relative stopping tolerance (4.4e-16)
_TEMME_K, _TEMME_N = 25, 40  # C_0 .. C_24, each to eta^39


@functools.cache
def _temme_coefficients():
    """Taylor coefficients ``d[k, n]`` of ``C_k(eta) = sum_n d[k, n] eta^n``, shape (25, 40).

    Exact rational arithmetic (about 40 ms, once), then rounded to float64. ``mu = lam - 1`` as a
    series in ``eta`` solves ``mu mu' = eta (1 + mu)`` (from ``eta^2/2 = mu - log(1 + mu)``);
    ``C_0 = 1/mu - 1/eta`` and ``C_k = C_{k-1}'/eta + g_k/mu`` with ``g_k = (-1)^k s_k``, where
    ``Gamma*(a) ~ sum_k s_k a^{-k}`` (Temme 1979, eqs. 3.8-3.9; DLMF 8.12).
    """
    K, N = _TEMME_K, _TEMME_N
    M = N + 2 * K + 2                       # each recursion step consumes two orders
    mu = [Fraction(0)] * M
    mu[1] = Fraction(1)
    for n in range(2, M):                   # coefficient of eta^n in mu mu' = eta + eta mu
        acc = sum(mu[i] * (n - i + 1) * mu[n - i + 1] for i in range(2, n))
        mu[n] = (mu[n - 1] - acc) / (n + 1)
    t = mu[1:] + [Fraction(0)]              # mu / eta
    inv_t = [Fraction(1)] + [Fraction(0)] * (M - 1)   # eta / mu
    for n in range(1, M):
        inv_t[n] = -sum(t[j] * inv_t[n - j] for j in range(1, n + 1))
    # s_k from log Gamma*(a) ~ sum_m B_2m / (2m (2m-1) a^{2m-1})
    bern = [Fraction(1)] + [Fraction(0)] * (K + 2)
    for m in range(1, K + 3):
        bern[m] = -sum(comb(m + 1, j) * bern[j] for j in range(m)) / (m + 1)
    log_s = [Fraction(0)] * (K + 1)
    for m in range(1, K // 2 + 2):
        if 2 * m - 1 <= K:
            log_s[2 * m - 1] = bern[2 * m] / (2 * m * (2 * m - 1))
    s = [Fraction(1)] + [Fraction(0)] * K
    for n in range(1, K + 1):
        s[n] = sum(j * log_s[j] * s[n - j] for j in range(1, n + 1)) / n
    rows = [inv_t[1:] + [Fraction(0)]]      # C_0 = (eta/mu - 1) / eta
    for k in range(1, K):
        prev = rows[-1]
        g_k = (-1) ** k * s[k]
        # prev'/eta has the pole prev[1]/eta, which g_k/mu = g_k inv_t/eta cancels
        assert prev[1] + g_k == 0
        rows.append([((n + 2) * prev[n + 2] if n + 2 < M else 0) + g_k * inv_t[n + 1]
                     if n + 1 < M else Fraction(0) for n in range(M)])
    d = np.array([[float(c) for c in row[:N]] for row in rows])
    d.setflags(write=False)
    return d


def _s_minus_log1p(s):
    """``s - log1p(s)`` for ``s > -1``, accurate near 0.

    For ``|s| <= 1/2``: with ``u = s/(2+s)``, ``log1p(s) = 2 atanh(u)``, so
    ``s - log1p(s) = s u - 2 u^3 sum_j u^{2j} / (2j+3)`` (the second term is at most ~s/6 of the
    first, so no cancellation).
    """
    out = s - np.log1p(s)
    small = np.abs(s) <= 0.5
    if small.any():
        t = s[small]
        u = t / (2.0 + t)
        w = u * u
        w_max = max(float(np.max(w)), 1e-300)
        terms = min(int(np.ceil(-56.0 * np.log(2.0) / np.log(w_max))), 16)
        acc = np.full_like(t, 1.0 / (2 * terms + 3))
        for j in range(terms - 1, -1, -1):
            acc *= w
            acc += 1.0 / (2 * j + 3)
        out[small] = t * u - 2.0 * u * w * acc
    return out


def _log_gamma_star(a):
    """``log Gamma*(a)`` by its Stirling series; error below 1e-17 for ``a >= 10``."""
    coef = (1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156,
            -3617 / 122400)
    r = 1.0 / (a * a)
    acc = np.zeros_like(a)
    for c in coef[::-1]:
        acc = acc * r + c
    return acc / a


def _temme_plan(a_min, eta_max):
    """Truncated coefficient matrix ``[C_k; C_k']`` (``(2K, N)``) for ``a >= a_min``,
    ``|eta| <= eta_max``: terms bounded by 1e-17 are dropped."""
    d = _temme_coefficients()
    e = max(eta_max, 1e-3)
    n_idx = np.arange(d.shape[1])
    size = np.abs(d) * (n_idx + 1) * e ** np.maximum(n_idx - 1, 0)   # bounds C_k and C_k'
    size *= a_min ** -np.arange(d.shape[0], dtype=float)[:, None]
    small = size.sum(axis=1) < 1e-17
    K = max(int(np.argmax(small)) if small.any() else d.shape[0], 2)
    small = np.cumsum(size[:K, ::-1].sum(axis=0))[::-1] < 1e-17      # tail from n onwards
    N = max(int(np.argmax(small)) if small.any() else d.shape[1], 3)
    coef = np.zeros((2 * K, N))
    coef[:K] = d[:K, :N]
    coef[K:, :N - 1] = d[:K, 1:N] * n_idx[1:N]
    return coef


def _temme(a, s, eta, coef):
    """Region 3, given ``s = x/a - 1``, ``eta`` and ``coef = _temme_plan(...)``."""
    K, N = coef.shape[0] // 2, coef.shape[1]
    log_lam = np.log1p(s)
    nz = eta != 0.0
    eta_safe = np.where(nz, eta, 1.0)
    r_log = np.where(nz, log_lam / eta_safe, 1.0)       # log(lam)/eta -> 1
    r_s = np.where(nz, s / eta_safe, 1.0)               # (lam - 1)/eta -> 1
    ainv = 1.0 / a
    m = a.size
    nb = -(-m // _BATCH)
    eta_b = np.zeros(nb * _BATCH)
    eta_b[:m] = eta
    eta_b = eta_b.reshape(nb, _BATCH)
    ainv_b = np.zeros(nb * _BATCH)
    ainv_b[:m] = ainv
    ainv_b = ainv_b.reshape(nb, _BATCH)
    powers = np.empty((nb, N, _BATCH))                               # eta^n
    powers[:, 0] = 1.0
    for n in range(1, N):
        np.multiply(powers[:, n - 1], eta_b, out=powers[:, n])
    both = np.matmul(coef, powers)                                   # (nb, 2K, _BATCH)
    c, c_prime = both[:, :K], both[:, K:]
    apow = np.empty((nb, K, _BATCH))                                 # a^-k
    apow[:, 0] = 1.0
    for k in range(1, K):
        np.multiply(apow[:, k - 1], ainv_b, out=apow[:, k])
    S = np.einsum("bkj,bkj->bj", c, apow).reshape(-1)[:m]
    T = np.einsum("bkj,bkj,k->bj", c, apow, np.arange(K, dtype=float)).reshape(-1)[:m]
    U = np.einsum("bkj,bkj->bj", c_prime, apow).reshape(-1)[:m]
    dS = -ainv * (T + r_s * U)                                       # dS/da at fixed x
    return (1.0 + s) * np.exp(_log_gamma_star(a)) * (r_log + (log_lam - 0.5 * ainv) * S + dS)


def _series(a, x):
    """Region 1: ``-x sum_n (c_n/x) (log x - psi(a+n+1))`` (``c_n/x`` avoids subnormal terms)."""
    out = np.empty(a.size)
    idx = np.arange(a.size)
    c = 1.0 / a                                       # c_n / x
    L = np.log(x) - _sp.digamma(a + 1.0)              # log x - psi(a+n+1)
    acc = c * L
    ap = a + 1.0                                      # a + n + 1
    t = np.empty_like(a)
    for _ in range(0, _MAX_STEPS, _CHECK):
        for _ in range(_CHECK):
            np.divide(1.0, ap, out=t)
            L -= t
            c *= t
            c *= x
            np.multiply(c, L, out=t)
            acc += t
            ap += 1.0
        # once d = a + n + 1 - x > 0 the rest is bounded by c (x/d) (|L| + 1/d)
        dd = ap - x
        bound = c * (x / dd) * (np.abs(L) + 1.0 / dd)
        done = (dd > 0.0) & (bound <= _TOL * np.abs(acc))
        if done.any():
            out[idx[done]] = -x[done] * acc[done]
            keep = ~done
            idx = idx[keep]
            if idx.size == 0:
                return out
            x, c, L, acc, ap, t = x[keep], c[keep], L[keep], acc[keep], ap[keep], t[keep]
    out[idx] = np.nan                                 # not converged (not reached in practice)
    return out


def _continued_fraction(a, x):
    """Region 2 (``x > max(a, 1)``): ``x ((log x - psi(a)) G + dG/da)``.

    ``G = e^x x^-a Gamma(a, x) = lim p_k/q_k`` with the Cephes ``igamc`` recurrence
    ``p_k = p_{k-1} z_k - p_{k-2} y_k``, ``z_k = x + 2 + 2k - a``, ``y_k = k (k + 1 - a)`` (same for
    ``q``). The convergents are carried with their ``a``-derivatives, divided by ``x`` at every
    step (so no ``x`` can overflow them; ``p`` also carries a factor ``x``, so ``p_k/q_k -> x G``)
    and renormalised by ``q_k`` every ``_CHECK`` steps.
    """
    out = np.empty(a.size)
    idx = np.arange(a.size)
    pre = np.log(x) - _sp.digamma(a)
    invx = 1.0 / x
    zb = 1.0 + (2.0 - a) * invx                       # z_k / x   = zb + 2k/x
    y0 = (1.0 - a) * invx                             # y_k / x^2 = (k y0 + k^2/x) / x
    pm2, qm2 = np.ones_like(x), np.ones_like(x)       # (p_{-1}, q_{-1}/x) with p = 1, q = x
    pm1, qm1 = (x + 1.0) * invx, zb.copy()            # (p_0/x, q_0/x^2) = ((x + 1)/x, z_0/x)
    dpm2, dqm2 = np.zeros_like(x), np.zeros_like(x)
    dpm1, dqm1 = np.zeros_like(x), -invx
    r = pm1 / qm1
    v_old = pre * r + (dpm1 - r * dqm1) / qm1
    k = 0
    while k < _MAX_STEPS:
        for _ in range(_CHECK):
            k += 1
            z = zb + (2.0 * k) * invx
            y = (k * y0 + (k * k) * invx) * invx
            ck = k * invx
            pk = pm1 * z - pm2 * y
            qk = qm1 * z - qm2 * y
            dpk = dpm1 * z - dpm2 * y - (pm1 - pm2 * ck) * invx
            dqk = dqm1 * z - dqm2 * y - (qm1 - qm2 * ck) * invx
            pm2, pm1, qm2, qm1 = pm1, pk, qm1, qk
            dpm2, dpm1, dqm2, dqm1 = dpm1, dpk, dqm1, dqk
        inv = 1.0 / qm1
        r = pm1 * inv                                 # x G_k
        v = pre * r + (dpm1 - r * dqm1) * inv         # x ((log x - psi(a)) G_k + dG_k/da)
        done = np.abs(v - v_old) <= 4.0 * _TOL * np.abs(v)
        if done.any():
            out[idx[done]] = v[done]
            keep = ~done
            idx = idx[keep]
            if idx.size == 0:
                return out
            (invx, zb, y0, pre, inv, v, pm2, pm1, qm2, qm1, dpm2, dpm1, dqm2, dqm1) = (
                u[keep] for u in (invx, zb, y0, pre, inv, v,
                                  pm2, pm1, qm2, qm1, dpm2, dpm1, dqm2, dqm1))
        v_old = v
        for u in (pm2, pm1, qm2, qm1, dpm2, dpm1, dqm2, dqm1):
            u *= inv
    out[idx] = np.nan                                 # not converged (not reached in practice)
    return out


def _blocked(fn, block, *args):
    """``fn(*args)`` evaluated over blocks of ``block`` elements."""
    n = args[0].size
    if n <= block:
        return fn(*args)
    out = np.empty(n)
    for lo in range(0, n, block):
        out[lo:lo + block] = fn(*(u[lo:lo + block] for u in args))
    return out


def _grad_flat(a, x):
    """Split 1-d float64 arrays into the three regions."""
    out = np.full(a.shape, np.nan)
    valid = np.isfinite(a) & np.isfinite(x) & (a > 0.0) & (x >= 0.0)
    out[valid & (x == 0.0)] = 0.0
    pos = valid & (x > 0.0)
    temme = pos & (a >= _A_TEMME)
    if temme.any():
        (it,) = np.nonzero(temme)
        at = a[it]
        s = (x[it] - at) / at
        eta = np.sign(s) * np.sqrt(2.0 * _s_minus_log1p(s))
        inside = np.abs(eta) <= _ETA_MAX
        temme[it[~inside]] = False
        if inside.any():
            at, s, eta = at[inside], s[inside], eta[inside]
            coef = _temme_plan(float(np.min(at)), float(np.max(np.abs(eta))))
            # blocks of about 1 MiB of (N + 3K, block) temporaries
            block = max(1024, _TEMME_BYTES // (8 * (coef.shape[1] + 3 * coef.shape[0] // 2)))
            out[it[inside]] = _blocked(lambda *u: _temme(*u, coef), block, at, s, eta)
    rest = pos & ~temme
    cf = rest & (x > a) & (x > np.where(a >= _A_TEMME, a, a + _X_OFFSET))
    series = rest & ~cf
    if cf.any():
        out[cf] = _blocked(_continued_fraction, _CHUNK, a[cf], x[cf])
    if series.any():
        out[series] = _blocked(_series, _CHUNK, a[series], x[series])
    return out


def standard_gamma_grad(alpha, x):
    r"""Derivative of a standard Gamma sample with respect to its shape (implicit reparam.).

    For ``x ~ Gamma(alpha, 1)`` drawn by any sampler equivalent in distribution to inverse-CDF
    sampling ``x = F^{-1}(u; alpha)``, returns

    .. math:: \frac{dx}{d\alpha} = -\frac{\partial P(\alpha, x) / \partial \alpha}{p(x; \alpha)},

    where :math:`P` is the regularised lower incomplete gamma function and :math:`p` the
    Gamma(:math:`\alpha`, 1) density (Figurnov et al., 2018, eq. 6).

    Parameters
    ----------
    alpha : array_like
        Shape parameters, ``alpha > 0``; any shape broadcastable against ``x``.
    x : array_like
        Standard (unit-rate, unit-scale) Gamma samples, ``x >= 0``. The rate is not an argument:
        for ``y = x / beta`` (rate ``beta``), ``dy/dalpha = standard_gamma_grad(alpha, y * beta) /
        beta``.

    Returns
    -------
    numpy.ndarray
        ``dx/dalpha`` with shape ``np.broadcast_shapes(np.shape(alpha), np.shape(x))`` (0-d for
        scalar inputs). Computed in float64 and returned in the result type of the inputs' floating
        dtypes (float32 inputs give float32; integer inputs give float64). ``x == 0`` gives 0;
        ``nan`` or infinite inputs, ``alpha <= 0`` and ``x < 0`` give ``nan``.

    Notes
    -----
    Vectorised: Python loops run only over series terms / continued-fraction steps (an element
    leaves the loop once converged; at most 20000 steps) and over blocks of elements. The three
    regions -- the power series of ``P``, Legendre's continued fraction of ``Q``, and Temme's
    uniform asymptotic expansion for ``alpha >= 20`` near the mode -- are described in the module
    docstring. Against mpmath the relative error is below 5e-14 for ``alpha`` in ``[1e-3, 1e5]``
    and ``x`` between the 1e-10 and 1 - 1e-10 quantiles (more where the result is subnormal).

    References
    ----------
    .. [1] M. Figurnov, S. Mohamed, A. Mnih, "Implicit Reparameterization Gradients",
           NeurIPS 2018.
    .. [2] N. M. Temme, "The asymptotic expansion of the incomplete gamma functions",
           SIAM J. Math. Anal. 10(4), 757-766, 1979.
    .. [3] A. R. DiDonato, A. H. Morris, "Computation of the incomplete gamma function ratios and
           their inverse", ACM Trans. Math. Softw. 12(4), 377-393, 1986.
    .. [4] NIST Digital Library of Mathematical Functions, sections 8.7, 8.9 and 8.12.

    Examples
    --------
    For ``alpha = 1`` (exponential), ``dx/dalpha = log(x) + euler_gamma + e^x E_1(x)``:

    >>> import numpy as np
    >>> from scipy.special import exp1
    >>> x = np.array([0.1, 1.0, 5.0])
    >>> g = standard_gamma_grad(1.0, x)
    >>> bool(np.allclose(g, np.log(x) + np.euler_gamma + np.exp(x) * exp1(x), rtol=1e-13))
    True
    """
    alpha = np.asarray(alpha)
    x = np.asarray(x)
    floats = [u.dtype for u in (alpha, x) if np.issubdtype(u.dtype, np.floating)]
    out_dtype = np.result_type(*floats) if floats else np.dtype(np.float64)
    a64, x64 = np.broadcast_arrays(alpha.astype(np.float64, copy=False),
                                   x.astype(np.float64, copy=False))
    shape = a64.shape
    with np.errstate(all="ignore"):
        out = _grad_flat(a64.ravel(), x64.ravel())
    return out.reshape(shape).astype(out_dtype, copy=False)
