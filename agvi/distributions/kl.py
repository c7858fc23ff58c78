"""The analytic Kullback-Leibler table: ``kl_divergence(p, q)`` looked up by the pair of types.

``KL(p || q) = E_p[log p(x) - log q(x)]``, in nats, of shape
``broadcast(p.batch_shape, q.batch_shape)``.

The table is a registry keyed by ``(type_p, type_q)``. :func:`register_kl` adds a rule (and
refuses a pair that already has one); :func:`kl_divergence` finds the rule of the *nearest
ancestors* of ``type(p)`` and ``type(q)`` (see :func:`kl_divergence` for the order); lookups are
cached per pair of concrete types. :func:`registered_kl_pairs` lists the table and
:func:`kl_table_markdown` renders it (``python -m agvi.distributions.kl`` rewrites
``docs/kl_table.md``). Where no rule applies, :func:`kl_divergence_mc` gives a Monte Carlo
estimate and says it is one.

Every rule is written with the Backend of ``p`` (``p.B``), so it runs, differentiates and
compiles on NumPy+autograd, torch and JAX alike. The rules are

- closed forms for pairs of one family (Normal, Gamma, Beta, Dirichlet, the multivariate
  normals, the discrete families, ...);
- cross-entropy rules ``KL(p || q) = -H(p) - E_p[log q(x)]`` for a family ``q`` whose
  ``log q`` is linear in statistics ``T(x)`` with closed ``E_p[T(x)]`` (for example ``q``
  Normal needs ``E_p[x]`` and ``Var_p[x]``; ``q`` Gamma needs ``E_p[x]`` and ``E_p[log x]``);
- ``+inf`` where the support of ``q`` does not cover that of ``p`` (Normal vs Exponential,
  Uniform(0, 2) vs Uniform(0, 1), Beta vs Uniform(0.2, 0.5), ...), elementwise where it
  depends on the parameters;
- structural rules for :class:`Independent`, :class:`ExpandedDistribution`,
  :class:`MaskedDistribution`, :class:`TransformedDistribution` (equal transforms) and
  :class:`Delta`.

References
----------
Gil, M. (2011). On Renyi divergence measures for continuous alphabet sources. MSc thesis,
Queen's University (Laplace and Pareto pairs).
Chyzak, F. and Nielsen, F. (2019). A closed-form formula for the Kullback-Leibler divergence
between Cauchy distributions. arXiv:1905.10965.
Penny, W. D. (2001). KL-divergences of Normal, Gamma, Dirichlet and Wishart densities.
Technical report, Wellcome Department of Cognitive Neurology.
Bauckhage, C. (2013). Computing the Kullback-Leibler divergence between two Weibull
distributions. arXiv:1310.3713.
"""

from __future__ import annotations

import math
import warnings

from ..backends import use_backend
from .continuous import (
    Beta,
    Cauchy,
    Delta,
    Exponential,
    Gamma,
    Gumbel,
    HalfCauchy,
    HalfNormal,
    InverseGamma,
    Laplace,
    Logistic,
    LogNormal,
    Normal,
    Pareto,
    StudentT,
    Uniform,
    VonMises,
    Weibull,
)
from .discrete import (
    Bernoulli,
    Binomial,
    Categorical,
    Geometric,
    Multinomial,
    NegativeBinomial,
    OneHotCategorical,
    Poisson,
)
from .distribution import (
    Distribution,
    ExpandedDistribution,
    Independent,
    MaskedDistribution,
    _sum_rightmost,
)
from .multivariate import (
    Dirichlet,
    LowRankMultivariateNormal,
    MultivariateNormal,
    _matvec,
    _tri_solve_vec,
)
from .transformed import TransformedDistribution
from .transforms import Transform

__all__ = [
    "kl_divergence", "kl_divergence_mc", "kl_table_markdown", "register_kl",
    "registered_kl_pairs",
]

_EULER = 0.57721566490153286061  # Euler-Mascheroni constant
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)

#: The source of truth: (type_p, type_q) -> rule(p, q).
_KL_REGISTRY: dict = {}
#: Memoised lookups: (type(p), type(q)) -> rule or None; cleared on every registration.
_KL_CACHE: dict = {}


# --------------------------------------------------------------------------------- registry
def register_kl(type_p, type_q, *, override: bool = False):
    """Decorator registering ``rule(p, q) -> Array`` as ``KL(p || q)`` for the pair of types.

    Parameters
    ----------
    type_p, type_q : type
        Subclasses of :class:`~agvi.distributions.Distribution`. The rule also serves their
        subclasses (nearest-ancestor lookup, see :func:`kl_divergence`).
    override : bool
        Replace an existing rule for exactly this pair instead of refusing it.

    Returns
    -------
    callable
        The decorator; it returns the rule unchanged, so decorators stack to register one rule
        for several pairs.

    Raises
    ------
    TypeError
        If ``type_p`` or ``type_q`` is not a Distribution subclass.
    ValueError
        If the pair already has a rule (and ``override`` is False); the message names the pair
        and the registered rule.

    Examples
    --------
    >>> from agvi.distributions import Normal
    >>> class MyNormal(Normal):
    ...     pass
    >>> @register_kl(MyNormal, MyNormal)
    ... def _kl_my(p, q):
    ...     return kl_divergence(Normal(p.loc, p.scale), Normal(q.loc, q.scale))
    """
    for name, t in (("type_p", type_p), ("type_q", type_q)):
        if not (isinstance(t, type) and issubclass(t, Distribution)):
            raise TypeError(f"register_kl: {name} must be a subclass of "
                            f"agvi.distributions.Distribution, got {t!r}")

    def decorator(rule):
        key = (type_p, type_q)
        if key in _KL_REGISTRY and not override:
            raise ValueError(
                f"register_kl: a KL rule for ({type_p.__name__}, {type_q.__name__}) is already "
                f"registered ({_KL_REGISTRY[key].__qualname__}); pass override=True to replace "
                "it")
        _KL_REGISTRY[key] = rule
        _KL_CACHE.clear()  # a new rule can change the nearest match of any cached pair
        return rule

    return decorator


def _unregister_kl(type_p, type_q):
    """Remove the rule of exactly this pair (tests use it to undo their registrations)."""
    _KL_REGISTRY.pop((type_p, type_q), None)
    _KL_CACHE.clear()


def _dispatch(type_p, type_q):
    """The rule of the nearest registered ancestors of ``(type_p, type_q)``, or None."""
    mro_p, mro_q = type_p.__mro__, type_q.__mro__
    matches = sorted(
        (mro_p.index(sp), mro_q.index(sq), sp, sq)
        for (sp, sq) in _KL_REGISTRY if sp in mro_p and sq in mro_q)
    if not matches:
        return None
    i, j, sp, sq = matches[0]  # lexicographic: nearest in p's MRO, then in q's
    others = [(a, b, mp, mq) for a, b, mp, mq in matches[1:] if b < j]
    if others:
        _, _, mp, mq = others[0]
        if _KL_REGISTRY[(mp, mq)] is not _KL_REGISTRY[(sp, sq)]:
            warnings.warn(
                f"kl_divergence({type_p.__name__}, {type_q.__name__}) is ambiguous: the rules "
                f"for ({sp.__name__}, {sq.__name__}) and ({mp.__name__}, {mq.__name__}) are "
                f"equally near; using ({sp.__name__}, {sq.__name__}) (nearer in p's MRO). "
                f"Register a rule for ({type_p.__name__}, {type_q.__name__}) to choose.",
                RuntimeWarning, stacklevel=3)
    return _KL_REGISTRY[(sp, sq)]


def _lookup(type_p, type_q):
    try:
        return _KL_CACHE[(type_p, type_q)]
    except KeyError:
        rule = _KL_CACHE[(type_p, type_q)] = _dispatch(type_p, type_q)
        return rule


def kl_divergence(p, q):
    """``KL(p || q) = E_p[log p(x) - log q(x)]`` in nats, from the analytic table.

    Parameters
    ----------
    p, q : Distribution
        Built under the same backend, with equal ``event_shape`` and broadcastable
        ``batch_shape``.

    Returns
    -------
    Array, shape ``broadcast(p.batch_shape, q.batch_shape)``
        ``+inf`` where the support of ``q`` does not cover that of ``p`` (or where the
        divergence is infinite for another reason, e.g. a Pareto ``p`` with infinite variance
        against a Normal ``q``).

    Raises
    ------
    TypeError
        If ``p`` or ``q`` is not a Distribution.
    ValueError
        If they were built under different backends, their event shapes differ, or their batch
        shapes do not broadcast.
    NotImplementedError
        If no rule is registered for the pair (the message names both types and points to
        :func:`kl_divergence_mc`), or the matching rule does not cover these parameters (e.g.
        Binomial ``p.total_count < q.total_count``; Independent with different numbers of
        reinterpreted axes; TransformedDistributions with different transforms).

    Notes
    -----
    The rule is that of the registered pair ``(A, B)`` with ``A`` in ``type(p).__mro__`` and
    ``B`` in ``type(q).__mro__`` that comes first in the total order "position of ``A`` in
    ``p``'s MRO, then position of ``B`` in ``q``'s MRO". If another registered pair is nearer
    in ``q``'s MRO (an ambiguity: neither pair is more specific in both), the first one is
    still used and a ``RuntimeWarning`` names both; register the exact pair to choose. Lookups
    are cached per ``(type(p), type(q))``; :func:`register_kl` clears the cache.

    Examples
    --------
    >>> from agvi.distributions import Normal
    >>> float(kl_divergence(Normal(0.0, 1.0), Normal(1.0, 1.0)))
    0.5
    """
    for name, d in (("p", p), ("q", q)):
        if not isinstance(d, Distribution):
            raise TypeError(f"kl_divergence: {name} must be an agvi Distribution, got "
                            f"{type(d).__name__}")
    if p.B.name != q.B.name:
        raise ValueError(f"kl_divergence: p was built under the {p.B.name!r} backend and q under "
                         f"{q.B.name!r}; build both under one agvi.use_backend(...) block")
    if tuple(p.event_shape) != tuple(q.event_shape):
        raise ValueError(f"kl_divergence: p and q must have the same event_shape, got "
                         f"{p.event_shape} ({type(p).__name__}) and {q.event_shape} "
                         f"({type(q).__name__})")
    try:
        batch = p.B.broadcast_shapes(p.batch_shape, q.batch_shape)
    except ValueError:
        raise ValueError(f"kl_divergence: batch shapes {p.batch_shape} of p and {q.batch_shape} "
                         "of q do not broadcast") from None
    rule = _lookup(type(p), type(q))
    if rule is None:
        raise NotImplementedError(
            f"no analytic KL(p || q) is registered for p of type {type(p).__name__} and q of "
            f"type {type(q).__name__}; estimate it with "
            "agvi.distributions.kl_divergence_mc(p, q, key), or register a closed form with "
            f"@register_kl({type(p).__name__}, {type(q).__name__})")
    out = rule(p, q)
    B = p.B
    if not B.is_array(out):
        out = B.asarray(out)
    return out if B.shape(out) == batch else B.broadcast_to(out, batch)


def kl_divergence_mc(p, q, key, num_samples: int = 1000, *, return_stderr: bool = False):
    """A Monte Carlo *estimate* of ``KL(p || q)``: the mean of ``log p(x) - log q(x)`` over
    ``num_samples`` draws ``x ~ p``.

    Use it where :func:`kl_divergence` has no rule. The estimate is unbiased but noisy, and is
    differentiable (pathwise) in the parameters of ``p`` when ``p.has_rsample`` (it uses
    ``p.rsample``; otherwise ``p.sample``, and gradients reach ``p`` only through ``log p``).
    Like the single-sample ELBO terms of NumPyro and Pyro it returns just the estimate by
    default; ``return_stderr=True`` adds its standard error.

    Parameters
    ----------
    p, q : Distribution
        Built under the same backend; ``q`` must have a ``log_prob`` defined on draws of ``p``.
    key : Array, shape (2,), or int
        Random key (see :mod:`agvi.random`); an int is turned into a key.
    num_samples : int
        Number of draws (> 1 with ``return_stderr``).
    return_stderr : bool
        Also return the standard error ``std(log p - log q, ddof=1) / sqrt(num_samples)``.

    Returns
    -------
    estimate : Array, shape ``broadcast(p.batch_shape, q.batch_shape)``
        ``+inf`` if any draw falls outside the support of ``q``.
    stderr : Array, same shape (only with ``return_stderr``)
        ``nan`` where the estimate is infinite.

    Raises
    ------
    ValueError
        If ``num_samples`` is not a positive int (at least 2 with ``return_stderr``), or ``p``
        and ``q`` were built under different backends.
    """
    n = int(num_samples)
    if n != num_samples or n < (2 if return_stderr else 1):
        raise ValueError(f"kl_divergence_mc: num_samples must be an int >= "
                         f"{2 if return_stderr else 1}, got {num_samples!r}")
    if p.B.name != q.B.name:
        raise ValueError(f"kl_divergence_mc: p was built under the {p.B.name!r} backend and q "
                         f"under {q.B.name!r}; build both under one agvi.use_backend(...) block")
    B = p.B
    key = B.key(key) if isinstance(key, int) else key
    x = p.rsample(key, (n,)) if p.has_rsample else p.sample(key, (n,))
    log_ratio = p.log_prob(x) - _log_prob_in_support(q, x)
    estimate = B.mean(log_ratio, axis=0)
    if not return_stderr:
        return estimate
    return estimate, B.std(log_ratio, axis=0, ddof=1) / math.sqrt(n)


def registered_kl_pairs() -> list:
    """The registered pairs as sorted ``(p_name, q_name)`` tuples of class names."""
    return sorted((tp.__name__, tq.__name__) for tp, tq in _KL_REGISTRY)


def _rule_summary(rule) -> str:
    """The first paragraph of the rule's docstring, on one line."""
    doc = (rule.__doc__ or "").strip()
    if not doc:
        return rule.__name__
    return " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())


def _markdown_cell(text: str) -> str:
    """``text`` with its pipes escaped: a "|" (norms, determinants) would end the cell."""
    return text.replace("|", "\\|")


def kl_table_markdown() -> str:
    """The KL table as a Markdown document, generated from the registry.

    Returns
    -------
    str
        A title, the lookup rules, and one table row per registered pair: ``p``, ``q`` and
        the first paragraph of the rule's docstring.
    """
    rows = sorted(((tp.__name__, tq.__name__, _rule_summary(rule))
                   for (tp, tq), rule in _KL_REGISTRY.items()))
    lines = [
        "# The analytic KL table",
        "",
        "Generated from the registry by `python -m agvi.distributions.kl` "
        "(`agvi.distributions.kl.kl_table_markdown()`); do not edit by hand.",
        "",
        f"`kl_divergence(p, q)` has {len(rows)} registered pairs. A pair serves subclasses too: "
        "the rule used is that of the registered pair nearest to `(type(p), type(q))`, first in "
        "`type(p).__mro__`, then in `type(q).__mro__` (so `Chi2`, a subclass of `Gamma`, uses "
        "every `Gamma` rule). `Distribution` in a row stands for any distribution. Where no "
        "pair matches, `kl_divergence` raises `NotImplementedError`; "
        "`kl_divergence_mc(p, q, key)` then gives a Monte Carlo estimate.",
        "",
        "`H(p)` is the entropy of `p`; a cross-entropy rule computes "
        "`KL(p || q) = -H(p) - E_p[log q(x)]` from the listed expectations under `p`. "
        "`+inf` rules are pairs where the support of `q` does not cover that of `p`.",
        "",
        "| p | q | rule |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {p} | {q} | {_markdown_cell(summary)} |" for p, q, summary in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- helpers
def _dtype(d):
    """Floating dtype of ``d``'s parameters (the backend's default when none is found)."""
    B = d.B
    for name in ("loc", "scale", "rate", "concentration", "concentration1", "low", "alpha", "df",
                 "probs", "logits", "v"):
        x = d.__dict__.get(name)
        if x is not None and B.is_array(x):
            return B.dtype_of(x)
    return B.float_dtype


def _batch(p, q):
    return p.B.broadcast_shapes(p.batch_shape, q.batch_shape)


def _infinite(p, q):
    return p.B.full(_batch(p, q), math.inf, dtype=_dtype(p))


def _inf_where(B, condition, x):
    """``x`` with ``+inf`` where ``condition`` holds."""
    return B.where(condition, B.full_like(x, math.inf), x)


def _concrete_any(B, condition):
    """``bool(any(condition))`` when the value is concrete; None under tracing (jit, vmap)."""
    try:
        return bool(B.to_numpy(B.any(condition)))
    except Exception:  # a tracer cannot be read on the host
        return None


def _log_prob_in_support(q, x):
    """``q.log_prob(x)`` with ``-inf`` where ``x`` is outside ``q.support`` (families evaluate
    their closed form off the support when validation is off)."""
    B = q.B
    lp = q.log_prob(x)
    support = q.support
    if support is None:
        return lp
    inside = support.check(x, B)
    lp = B.broadcast_to(lp, B.broadcast_shapes(B.shape(lp), B.shape(inside)))
    return B.where(inside, lp, B.full_like(lp, -math.inf))


def _frobenius2(B, x):
    """Squared Frobenius norm over the last two axes."""
    return B.sum(x * x, axis=(-2, -1))


# ----------------------------------------------------------------- expectations under p
# E_p[T(x)] of the statistics that the cross-entropy rules need, per family of p. The tables
# are looked up along type(p).__mro__, so Chi2 uses Gamma's entries.
def _stat(table, p):
    for cls in type(p).__mro__:
        if cls in table:
            return table[cls](p)
    raise KeyError(type(p).__name__)


def _uniform_mean_xlogx(B, a, b):
    """``E[log x]`` for x uniform on [a, b] with 0 <= a < b: ``(b log b - a log a)/(b - a) - 1``."""
    return (B.xlogy(b, b) - B.xlogy(a, a)) / (b - a) - 1.0


#: E_p[log x] (positive-support families).
_MEAN_LOG = {
    Exponential: lambda p: -_EULER - p.B.log(p.rate),
    Gamma: lambda p: p.B.digamma(p.concentration) - p.B.log(p.rate),
    Beta: lambda p: (p.B.digamma(p.concentration1)
                     - p.B.digamma(p.concentration1 + p.concentration0)),
    LogNormal: lambda p: p.loc,
    HalfNormal: lambda p: p.B.log(p.scale) - 0.5 * (_EULER + math.log(2.0)),
    Weibull: lambda p: p.B.log(p.scale) - _EULER / p.concentration,
    Pareto: lambda p: p.B.log(p.scale) + 1.0 / p.alpha,
    Uniform: lambda p: _uniform_mean_xlogx(p.B, p.B.maximum(p.low, 0.0),
                                           p.B.maximum(p.high, 0.0)),
}

#: Var_p[log x].
_VAR_LOG = {
    Exponential: lambda p: p.B.full_like(p.rate, math.pi ** 2 / 6.0),
    Gamma: lambda p: p.B.polygamma(1, p.concentration),
    Beta: lambda p: (p.B.polygamma(1, p.concentration1)
                     - p.B.polygamma(1, p.concentration1 + p.concentration0)),
    LogNormal: lambda p: p.scale * p.scale,
    HalfNormal: lambda p: p.B.full_like(p.scale, math.pi ** 2 / 8.0),
    Weibull: lambda p: (math.pi ** 2 / 6.0) / (p.concentration * p.concentration),
    Pareto: lambda p: 1.0 / (p.alpha * p.alpha),
}


def _log_moment(p, s):
    """``log E_p[x**s]`` for s > 0 (the Weibull cross-entropy)."""
    B = p.B
    if isinstance(p, Exponential):
        return B.gammaln(1.0 + s) - s * B.log(p.rate)
    if isinstance(p, Gamma):
        a = p.concentration
        return B.gammaln(a + s) - B.gammaln(a) - s * B.log(p.rate)
    if isinstance(p, LogNormal):
        return s * p.loc + 0.5 * s * s * p.scale * p.scale
    if isinstance(p, Weibull):
        return s * B.log(p.scale) + B.gammaln(1.0 + s / p.concentration)
    raise KeyError(type(p).__name__)


def _mean_abs_dev(p, m):
    """``E_p|x - m|`` (the Laplace cross-entropy)."""
    B = p.B
    if isinstance(p, Normal):
        delta = p.loc - m
        return (p.scale * math.sqrt(2.0 / math.pi) * B.exp(-0.5 * (delta / p.scale) ** 2)
                + delta * B.erf(delta / (p.scale * math.sqrt(2.0))))
    if isinstance(p, Exponential):
        # E|x - m| = 1/r - m + 2 E[(m - x)^+], E[(m - x)^+] = m+ - (1 - exp(-r m+)) / r.
        m_pos = B.maximum(m, 0.0)
        return 1.0 / p.rate - m + 2.0 * m_pos + 2.0 * B.expm1(-p.rate * m_pos) / p.rate
    if isinstance(p, Uniform):
        hi, lo = p.high - m, p.low - m
        return (hi * B.abs(hi) - lo * B.abs(lo)) / (2.0 * (p.high - p.low))
    raise KeyError(type(p).__name__)


def _log_mgf_neg(p, t):
    """``log E_p[exp(-t x)]`` for t > 0 (the Gumbel cross-entropy); ``+inf`` where infinite."""
    B = p.B
    if isinstance(p, Normal):
        return -t * p.loc + 0.5 * (t * p.scale) ** 2
    if isinstance(p, Exponential):
        return B.log(p.rate) - B.log(p.rate + t)
    if isinstance(p, Gamma):
        return -p.concentration * B.log1p(t / p.rate)
    if isinstance(p, Uniform):
        w = t * (p.high - p.low)
        return -t * p.low + B.log(-B.expm1(-w)) - B.log(w)
    if isinstance(p, Gumbel):
        return -t * p.loc + B.gammaln(1.0 + t * p.scale)
    if isinstance(p, Laplace):
        bt = p.scale * t
        finite = bt < 1.0
        safe = B.where(finite, bt, B.full_like(bt, 0.5))
        return _inf_where(B, B.logical_not(finite), -t * p.loc - B.log1p(-safe * safe))
    raise KeyError(type(p).__name__)


def _outside_positive(p):
    """Where a Uniform ``p`` puts mass below 0 (None for families on the positive line)."""
    return p.low < 0 if isinstance(p, Uniform) else None


def _with_support(B, p, kl):
    outside = _outside_positive(p)
    return kl if outside is None else _inf_where(B, outside, kl)


def _register_pairs(ps, qs, rule):
    for tp in ps:
        for tq in qs:
            register_kl(tp, tq)(rule)


# ------------------------------------------------------------------- cross-entropy rules
def _kl_to_normal(p, q):
    """Cross-entropy: -H(p) + log(sqrt(2 pi) s) + (Var_p[x] + (E_p[x] - m)^2) / (2 s^2)."""
    B = p.B
    diff = p.mean - q.loc
    return (-p.entropy() + B.log(q.scale) + _HALF_LOG_2PI
            + (p.variance + diff * diff) / (2.0 * q.scale * q.scale))


_register_pairs((Beta, Exponential, Gamma, Gumbel, Laplace, Pareto, Uniform, LogNormal, HalfNormal,
                 Weibull, Logistic), (Normal,), _kl_to_normal)


@register_kl(StudentT, Normal)
def _kl_studentt_normal(p, q):
    """Cross-entropy as for Normal q from E_p[x], Var_p[x]; +inf where df <= 2."""
    return _inf_where(p.B, p.df <= 2.0, _kl_to_normal(p, q))


def _kl_to_exponential(p, q):
    """Cross-entropy: -H(p) - log r + r E_p[x] (+inf where p has mass below 0)."""
    B = p.B
    return _with_support(B, p, -p.entropy() - B.log(q.rate) + q.rate * p.mean)


_register_pairs((Beta, Gamma, Pareto, Uniform, HalfNormal, LogNormal, Weibull), (Exponential,),
                _kl_to_exponential)


def _kl_to_gamma(p, q):
    """Cross-entropy: -H(p) - a log b + lgamma(a) - (a - 1) E_p[log x] + b E_p[x]."""
    B = p.B
    a, b = q.concentration, q.rate
    kl = (-p.entropy() - B.xlogy(a, b) + B.gammaln(a) - (a - 1.0) * _stat(_MEAN_LOG, p)
          + b * p.mean)
    return _with_support(B, p, kl)


_register_pairs((Beta, Exponential, Pareto, Uniform, HalfNormal, LogNormal, Weibull), (Gamma,),
                _kl_to_gamma)


def _kl_to_lognormal(p, q):
    """Cross-entropy: -H(p) + E_p[log x] + log(sqrt(2 pi) s) + E_p[(log x - m)^2] / (2 s^2)."""
    B = p.B
    mean_log = _stat(_MEAN_LOG, p)
    diff = mean_log - q.loc
    return (-p.entropy() + mean_log + B.log(q.scale) + _HALF_LOG_2PI
            + (_stat(_VAR_LOG, p) + diff * diff) / (2.0 * q.scale * q.scale))


_register_pairs((Beta, Exponential, Gamma, HalfNormal, Pareto, Weibull), (LogNormal,),
                _kl_to_lognormal)


def _kl_to_halfnormal(p, q):
    """Cross-entropy: -H(p) + log(s sqrt(pi / 2)) + E_p[x^2] / (2 s^2)."""
    B = p.B
    m = p.mean
    second = p.variance + m * m
    kl = (-p.entropy() + B.log(q.scale) + 0.5 * math.log(0.5 * math.pi)
          + second / (2.0 * q.scale * q.scale))
    return _with_support(B, p, kl)


_register_pairs((Beta, Exponential, Gamma, LogNormal, Pareto, Uniform, Weibull), (HalfNormal,),
                _kl_to_halfnormal)


def _kl_to_inverse_gamma(p, q):
    """Cross-entropy: -H(p) - a log b + lgamma(a) + (a + 1) E_p[log x] + b E_p[1/x]."""
    B = p.B
    a, b = q.concentration, q.rate
    if isinstance(p, LogNormal):
        mean_recip = B.exp(0.5 * p.scale * p.scale - p.loc)
    else:  # Gamma: E[1/x] = rate / (concentration - 1), infinite for concentration <= 1
        c = p.concentration
        finite = c > 1.0
        safe = B.where(finite, c, B.full_like(c, 2.0))
        mean_recip = _inf_where(B, B.logical_not(finite), p.rate / (safe - 1.0))
    return (-p.entropy() - B.xlogy(a, b) + B.gammaln(a) + (a + 1.0) * _stat(_MEAN_LOG, p)
            + b * mean_recip)


_register_pairs((Gamma, LogNormal), (InverseGamma,), _kl_to_inverse_gamma)


def _kl_to_weibull(p, q):
    """Cross-entropy: -H(p) - log k + k log s - (k - 1) E_p[log x] + E_p[x^k] / s^k."""
    B = p.B
    k, s = q.concentration, q.scale
    log_s = B.log(s)
    return (-p.entropy() - B.log(k) + k * log_s - (k - 1.0) * _stat(_MEAN_LOG, p)
            + B.exp(_log_moment(p, k) - k * log_s))


_register_pairs((Exponential, Gamma, LogNormal, Weibull), (Weibull,), _kl_to_weibull)


def _kl_to_laplace(p, q):
    """Cross-entropy: -H(p) + log(2 b) + E_p|x - m| / b."""
    B = p.B
    return -p.entropy() + B.log(2.0 * q.scale) + _mean_abs_dev(p, q.loc) / q.scale


_register_pairs((Normal, Exponential, Uniform), (Laplace,), _kl_to_laplace)


def _kl_to_gumbel(p, q):
    """Cross-entropy: -H(p) + log b + (E_p[x] - m) / b + exp(m / b) E_p[exp(-x / b)]."""
    B = p.B
    t = 1.0 / q.scale
    return (-p.entropy() + B.log(q.scale) + (p.mean - q.loc) * t
            + B.exp(q.loc * t + _log_mgf_neg(p, t)))


_register_pairs((Normal, Exponential, Gamma, Uniform, Laplace), (Gumbel,), _kl_to_gumbel)


# ----------------------------------------------------------------- pairs of one family
def _normal_kl(B, m1, s1, m2, s2):
    ratio = (s1 / s2) ** 2
    z = (m1 - m2) / s2
    return 0.5 * (ratio + z * z - 1.0 - B.log(ratio))


@register_kl(Normal, Normal)
def _kl_normal_normal(p, q):
    """Closed form: (r + ((m_p - m_q) / s_q)^2 - 1 - log r) / 2 with r = (s_p / s_q)^2."""
    return _normal_kl(p.B, p.loc, p.scale, q.loc, q.scale)


@register_kl(LogNormal, LogNormal)
def _kl_lognormal_lognormal(p, q):
    """The Normal-Normal closed form of the logs (KL is invariant under x -> exp(x))."""
    return _normal_kl(p.B, p.loc, p.scale, q.loc, q.scale)


@register_kl(HalfNormal, HalfNormal)
def _kl_halfnormal_halfnormal(p, q):
    """(r - 1 - log r) / 2 with r = (s_p / s_q)^2 (the KL of Normal(0, s_p) and Normal(0, s_q))."""
    ratio = (p.scale / q.scale) ** 2
    return 0.5 * (ratio - 1.0 - p.B.log(ratio))


@register_kl(Cauchy, Cauchy)
def _kl_cauchy_cauchy(p, q):
    """Closed form: log((s_p + s_q)^2 + (m_p - m_q)^2) - log(4 s_p s_q) (Chyzak and Nielsen)."""
    B = p.B
    d = p.loc - q.loc
    s = p.scale + q.scale
    return B.log(s * s + d * d) - B.log(4.0 * p.scale * q.scale)


@register_kl(HalfCauchy, HalfCauchy)
def _kl_halfcauchy_halfcauchy(p, q):
    """2 log(s_p + s_q) - log(4 s_p s_q): the Cauchy closed form (folding at 0 keeps the KL)."""
    B = p.B
    return 2.0 * B.log(p.scale + q.scale) - B.log(4.0 * p.scale * q.scale)


@register_kl(Laplace, Laplace)
def _kl_laplace_laplace(p, q):
    """Closed form: log(b_q / b_p) + |m_p - m_q| / b_q + (b_p / b_q) exp(-|m_p - m_q| / b_p) - 1."""
    B = p.B
    ratio = p.scale / q.scale
    gap = B.abs(p.loc - q.loc)
    return -B.log(ratio) + gap / q.scale + ratio * B.exp(-gap / p.scale) - 1.0


@register_kl(Gumbel, Gumbel)
def _kl_gumbel_gumbel(p, q):
    """Closed form: log(b_q / b_p) + (m_p - m_q) / b_q + gamma (r - 1) + exp((m_q - m_p) / b_q)
    Gamma(1 + r) - 1, r = b_p / b_q."""
    B = p.B
    r = p.scale / q.scale
    shift = (q.loc - p.loc) / q.scale
    return -B.log(r) - shift + _EULER * (r - 1.0) + B.exp(shift + B.gammaln(1.0 + r)) - 1.0


@register_kl(Exponential, Exponential)
def _kl_exponential_exponential(p, q):
    """Closed form: r - 1 - log r with r = rate_q / rate_p."""
    r = q.rate / p.rate
    return r - 1.0 - p.B.log(r)


def _gamma_kl(B, a1, b1, a2, b2):
    return (a2 * B.log(b1 / b2) + B.gammaln(a2) - B.gammaln(a1)
            + (a1 - a2) * B.digamma(a1) + (b2 - b1) * (a1 / b1))


@register_kl(Gamma, Gamma)
def _kl_gamma_gamma(p, q):
    """Closed form (Penny 2001): a_q log(b_p / b_q) + lgamma(a_q) - lgamma(a_p)
    + (a_p - a_q) digamma(a_p) + (b_q - b_p) a_p / b_p."""
    return _gamma_kl(p.B, p.concentration, p.rate, q.concentration, q.rate)


@register_kl(InverseGamma, InverseGamma)
def _kl_inverse_gamma_inverse_gamma(p, q):
    """The Gamma-Gamma closed form (1/x of InverseGamma(a, b) is Gamma(a, b); KL is invariant)."""
    return _gamma_kl(p.B, p.concentration, p.rate, q.concentration, q.rate)


@register_kl(Beta, Beta)
def _kl_beta_beta(p, q):
    """Closed form: log B(a_q, b_q) - log B(a_p, b_p) + (a_p - a_q) digamma(a_p)
    + (b_p - b_q) digamma(b_p) + (a_q - a_p + b_q - b_p) digamma(a_p + b_p)."""
    B = p.B
    a1, b1, a2, b2 = p.concentration1, p.concentration0, q.concentration1, q.concentration0
    s1 = a1 + b1
    return (B.betaln(a2, b2) - B.betaln(a1, b1) + (a1 - a2) * B.digamma(a1)
            + (b1 - b2) * B.digamma(b1) + (a2 - a1 + b2 - b1) * B.digamma(s1))


@register_kl(Pareto, Pareto)
def _kl_pareto_pareto(p, q):
    """Closed form (Gil 2011): a_q log(s_p / s_q) - log(a_q / a_p) + a_q / a_p - 1;
    +inf where s_p < s_q."""
    B = p.B
    r = q.alpha / p.alpha
    kl = q.alpha * B.log(p.scale / q.scale) - B.log(r) + r - 1.0
    return _inf_where(B, p.scale < q.scale, kl)


@register_kl(Uniform, Uniform)
def _kl_uniform_uniform(p, q):
    """log((h_q - l_q) / (h_p - l_p)); +inf where [l_p, h_p] is not inside [l_q, h_q]."""
    B = p.B
    kl = B.log((q.high - q.low) / (p.high - p.low))
    return _inf_where(B, (q.low > p.low) | (q.high < p.high), kl)


@register_kl(VonMises, VonMises)
def _kl_vonmises_vonmises(p, q):
    """Closed form: log I0(k_q) - log I0(k_p) + A(k_p) (k_p - k_q cos(m_p - m_q)),
    A = I1 / I0 (from E_p[cos(x - m)] = A(k_p) cos(m_p - m))."""
    B = p.B
    kp, kq = p.concentration, q.concentration
    i0e_p = B.i0e(kp)
    # log I0(k) = log i0e(k) + k
    log_ratio = B.log(B.i0e(kq)) - B.log(i0e_p) + (kq - kp)
    return log_ratio + (B.i1e(kp) / i0e_p) * (kp - kq * B.cos(p.loc - q.loc))


@register_kl(Dirichlet, Dirichlet)
def _kl_dirichlet_dirichlet(p, q):
    """Closed form: lgamma(sum a_p) - lgamma(sum a_q) - sum(lgamma(a_p) - lgamma(a_q))
    + sum((a_p - a_q)(digamma(a_p) - digamma(sum a_p)))."""
    B = p.B
    a, c = p.concentration, q.concentration
    a0 = B.sum(a, axis=-1)
    c0 = B.sum(c, axis=-1)
    return (B.gammaln(a0) - B.gammaln(c0) - B.sum(B.gammaln(a) - B.gammaln(c), axis=-1)
            + B.sum((a - c) * (B.digamma(a) - B.expand_dims(B.digamma(a0), -1)), axis=-1))


# ------------------------------------------------------------------- other cross pairs
@register_kl(Uniform, Beta)
def _kl_uniform_beta(p, q):
    """Cross-entropy from E_p[log x], E_p[log(1 - x)]; +inf where [l, h] is not inside [0, 1]."""
    B = p.B
    lo = B.clip(p.low, 0.0, 1.0)
    hi = B.clip(p.high, 0.0, 1.0)
    mean_log = _uniform_mean_xlogx(B, lo, hi)
    mean_log1m = _uniform_mean_xlogx(B, 1.0 - hi, 1.0 - lo)
    a, b = q.concentration1, q.concentration0
    kl = (-p.entropy() + B.betaln(a, b) - (a - 1.0) * mean_log - (b - 1.0) * mean_log1m)
    return _inf_where(B, (p.low < 0) | (p.high > 1), kl)


@register_kl(Beta, Uniform)
def _kl_beta_uniform(p, q):
    """-H(p) + log(h - l); +inf where [l, h] does not contain [0, 1]."""
    B = p.B
    kl = -p.entropy() + B.log(q.high - q.low)
    return _inf_where(B, (q.low > 0) | (q.high < 1), kl)


@register_kl(Uniform, Pareto)
def _kl_uniform_pareto(p, q):
    """Cross-entropy from E_p[log x]: -H(p) - log a - a log s + (a + 1) E_p[log x];
    +inf where l < s."""
    B = p.B
    a = q.alpha
    mean_log = _uniform_mean_xlogx(B, B.maximum(p.low, q.scale), B.maximum(p.high, q.scale))
    kl = -p.entropy() - B.log(a) - a * B.log(q.scale) + (a + 1.0) * mean_log
    return _inf_where(B, p.low < q.scale, kl)


# ------------------------------------------------------------------- disjoint supports
def _kl_infinite(p, q):
    """+inf: the support of q does not cover the support of p."""
    return _infinite(p, q)


_REAL = (Normal, Laplace, Gumbel, Cauchy, StudentT, Logistic)
_POSITIVE = (Exponential, Gamma, LogNormal, HalfNormal, HalfCauchy, InverseGamma, Weibull)
_register_pairs(_REAL, _POSITIVE + (Beta, Uniform, Pareto), _kl_infinite)
_register_pairs(_POSITIVE + (Pareto,), (Beta, Uniform), _kl_infinite)
_register_pairs(_POSITIVE + (Beta,), (Pareto,), _kl_infinite)
_register_pairs((Poisson,), (Bernoulli, Binomial), _kl_infinite)


# ------------------------------------------------------------------- multivariate normals
def _broadcast_batch(B, *mats):
    """Square/rectangular matrices broadcast to one batch shape (solves need equal batches
    on some backends)."""
    batch = B.broadcast_shapes(*[B.shape(m)[:-2] for m in mats])
    return [B.broadcast_to(m, batch + B.shape(m)[-2:]) for m in mats]


def _lowrank_A(q):
    """``A = L_C^{-1} W^T D^{-1}`` (k, d) of a LowRankMultivariateNormal ``q``: by Woodbury,
    ``Sigma_q^{-1} = D^{-1} - A^T A``."""
    return q.B.solve_triangular(q._capacitance_tril, q._Wt_Dinv, lower=True)


def _lowrank_mahalanobis(q, diff):
    """``diff^T Sigma_q^{-1} diff`` for a LowRankMultivariateNormal ``q`` (Woodbury)."""
    B = q.B
    z = _tri_solve_vec(B, q._capacitance_tril, _matvec(B, q._Wt_Dinv, diff))
    return B.sum(diff * diff / q._D, axis=-1) - B.sum(z * z, axis=-1)


def _full_mahalanobis(q, diff):
    z = _tri_solve_vec(q.B, q._L, diff)
    return q.B.sum(z * z, axis=-1)


def _half_log_det(d):
    return d.B.sum(d.B.log(d.B.diagonal(d._L)), axis=-1)


@register_kl(MultivariateNormal, MultivariateNormal)
def _kl_mvn_mvn(p, q):
    """Closed form: log|L_q| - log|L_p| + (||L_q^{-1} L_p||_F^2 + ||L_q^{-1}(m_q - m_p)||^2
    - d) / 2."""
    B = p.B
    d = p.event_shape[0]
    Lq, Lp = _broadcast_batch(B, q._L, p._L)
    trace = _frobenius2(B, B.solve_triangular(Lq, Lp, lower=True))
    maha = _full_mahalanobis(q, q.loc - p.loc)
    return _half_log_det(q) - _half_log_det(p) + 0.5 * (trace + maha - d)


@register_kl(LowRankMultivariateNormal, LowRankMultivariateNormal)
def _kl_lowrank_lowrank(p, q):
    """Closed form in O(d k^2): log-dets by the determinant lemma, trace and Mahalanobis term by
    Woodbury (no d x d matrix is formed)."""
    B = p.B
    d = p.event_shape[0]
    A = _lowrank_A(q)
    trace = (B.sum(p._D / q._D, axis=-1)
             + _frobenius2(B, p._W / B.expand_dims(B.sqrt(q._D), -1))
             - _frobenius2(B, A * B.expand_dims(B.sqrt(p._D), -2))
             - _frobenius2(B, B.matmul(A, p._W)))
    maha = _lowrank_mahalanobis(q, q.loc - p.loc)
    return 0.5 * (q._log_det() - p._log_det() + trace + maha - d)


@register_kl(MultivariateNormal, LowRankMultivariateNormal)
def _kl_mvn_lowrank(p, q):
    """Closed form: the trace term tr(Sigma_q^{-1} L_p L_p^T) = ||D_q^{-1/2} L_p||_F^2
    - ||A L_p||_F^2 by Woodbury."""
    B = p.B
    d = p.event_shape[0]
    A = _lowrank_A(q)
    trace = (_frobenius2(B, p._L / B.expand_dims(B.sqrt(q._D), -1))
             - _frobenius2(B, B.matmul(A, p._L)))
    maha = _lowrank_mahalanobis(q, q.loc - p.loc)
    return 0.5 * (q._log_det() - 2.0 * _half_log_det(p) + trace + maha - d)


@register_kl(LowRankMultivariateNormal, MultivariateNormal)
def _kl_lowrank_mvn(p, q):
    """Closed form: the trace term ||L_q^{-1} [W_p, D_p^{1/2}]||_F^2 by one triangular solve."""
    B = p.B
    d = p.event_shape[0]
    rhs = B.concatenate([p._W, B.diag_embed(B.sqrt(p._D))], axis=-1)
    Lq, rhs = _broadcast_batch(B, q._L, rhs)
    trace = _frobenius2(B, B.solve_triangular(Lq, rhs, lower=True))
    maha = _full_mahalanobis(q, q.loc - p.loc)
    return 0.5 * (2.0 * _half_log_det(q) - p._log_det() + trace + maha - d)


# ------------------------------------------------------------------------- discrete
def _bernoulli_kl(p, q):
    """Per-trial KL of two success probabilities, exact at probabilities 0 and 1: the ``xlogy``
    forms give 0 log 0 = 0, and ``+inf`` where q gives probability 0 to an outcome of p."""
    succ, fail = p.probs, p._q()
    return (p._xlog_p(succ) + p._xlog_q(fail)) - (q._xlog_p(succ) + q._xlog_q(fail))


@register_kl(Bernoulli, Bernoulli)
def _kl_bernoulli_bernoulli(p, q):
    """Closed form: p log(p / q) + (1 - p) log((1 - p) / (1 - q)) (+inf where q excludes an
    outcome of p)."""
    return _bernoulli_kl(p, q)


@register_kl(Binomial, Binomial)
def _kl_binomial_binomial(p, q):
    """n times the Bernoulli KL where n_p == n_q; +inf where n_p > n_q; n_p < n_q is not
    implemented."""
    B = p.B
    n_p, n_q = p.total_count, q.total_count
    fewer = n_p < n_q
    if _concrete_any(B, fewer):
        raise NotImplementedError(
            "kl_divergence(Binomial, Binomial) has no closed form where p.total_count < "
            "q.total_count; use kl_divergence_mc")
    per_trial = _bernoulli_kl(p, q)
    kl = B.where(n_p == 0, B.zeros_like(per_trial), n_p * per_trial)
    # nan where n_p < n_q under tracing (the check above needs concrete values)
    kl = B.where(fewer, B.full_like(kl, math.nan), kl)
    return _inf_where(B, n_p > n_q, kl)


def _categorical_kl(p, q):
    B = p.B
    pp, qp = p.probs, q.probs
    safe_lp = B.where(pp > 0, p.logits, B.zeros_like(p.logits))
    safe_lq = B.where(qp > 0, q.logits, B.zeros_like(q.logits))
    t = pp * (safe_lp - safe_lq)
    t = B.where((qp == 0) & (pp > 0), B.full_like(t, math.inf), t)
    return B.sum(t, axis=-1)


@register_kl(Categorical, Categorical)
def _kl_categorical_categorical(p, q):
    """Closed form: sum_k p_k (log p_k - log q_k) (+inf where q_k = 0 < p_k)."""
    return _categorical_kl(p, q)


@register_kl(OneHotCategorical, OneHotCategorical)
def _kl_onehot_onehot(p, q):
    """The Categorical closed form: sum_k p_k (log p_k - log q_k)."""
    return _categorical_kl(p, q)


@register_kl(Multinomial, Multinomial)
def _kl_multinomial_multinomial(p, q):
    """n times the Categorical KL where n_p == n_q (the multinomial coefficients cancel);
    +inf where the total counts differ."""
    B = p.B
    n = p.total_count
    per_draw = _categorical_kl(p, q)
    kl = B.where(n == 0, B.zeros_like(per_draw), n * per_draw)
    return _inf_where(B, n != q.total_count, kl)


@register_kl(Poisson, Poisson)
def _kl_poisson_poisson(p, q):
    """Closed form: r_p log(r_p / r_q) - (r_p - r_q)."""
    B = p.B
    return p.rate * (B.log(p.rate) - B.log(q.rate)) - (p.rate - q.rate)


@register_kl(Bernoulli, Poisson)
def _kl_bernoulli_poisson(p, q):
    """Cross-entropy: -H(p) - (p log r - r) (log 0! = log 1! = 0)."""
    return -p.entropy() - (q.B.xlogy(p.probs, q.rate) - q.rate)


@register_kl(Geometric, Geometric)
def _kl_geometric_geometric(p, q):
    """Cross-entropy: -H(p) - E_p[k] log(1 - q) - log q, E_p[k] = (1 - p) / p."""
    m = p.mean
    return -p.entropy() - q._xlog_q(m) - q._xlog_p(p.B.ones_like(m))


@register_kl(NegativeBinomial, NegativeBinomial)
def _kl_negbinomial_negbinomial(p, q):
    """Where total counts are equal: E_p[k] log(p_p / p_q) + r log((1 - p_p) / (1 - p_q)) (the
    Gamma-function terms cancel); other total counts are not implemented."""
    B = p.B
    r = p.total_count
    differ = r != q.total_count
    if _concrete_any(B, differ):
        raise NotImplementedError(
            "kl_divergence(NegativeBinomial, NegativeBinomial) has no closed form where the "
            "total counts differ; use kl_divergence_mc")
    m = p.mean
    kl = (p._xlog_p(m) - q._xlog_p(m)) + (p._xlog_q(r) - q._xlog_q(r))
    return B.where(differ, B.full_like(kl, math.nan), kl)


# ------------------------------------------------------------------------- structural
def _flatten_independent(d):
    """``(base, n)``: the innermost non-Independent base and the total reinterpreted axes."""
    n = 0
    while isinstance(d, Independent):
        n += d.reinterpreted_batch_ndims
        d = d.base_dist
    return d, n


@register_kl(Independent, Independent)
def _kl_independent_independent(p, q):
    """The base KL summed over the reinterpreted axes (equal numbers of reinterpreted axes,
    nested Independents flattened)."""
    bp, n_p = _flatten_independent(p)
    bq, n_q = _flatten_independent(q)
    if n_p != n_q:
        raise NotImplementedError(
            f"kl_divergence(Independent, Independent) needs the same number of reinterpreted "
            f"batch axes on both sides, got {n_p} ({type(bp).__name__}) and {n_q} "
            f"({type(bq).__name__}); use kl_divergence_mc")
    return _sum_rightmost(p.B, kl_divergence(bp, bq), n_p)


def _as_lowrank(d):
    """An ``Independent(Normal, 1)`` as a LowRankMultivariateNormal with a zero factor."""
    base, n = _flatten_independent(d)
    normal = base.base_dist if isinstance(base, ExpandedDistribution) else base
    if n != 1 or not isinstance(normal, Normal):
        raise NotImplementedError(
            "kl_divergence between an Independent distribution and a multivariate normal needs "
            f"Independent(Normal, 1), got Independent({type(base).__name__}, {n}); use "
            "kl_divergence_mc")
    B = d.B
    shape = base.batch_shape
    loc = B.broadcast_to(normal.loc, shape)
    scale = B.broadcast_to(normal.scale, shape)
    with use_backend(B):
        return LowRankMultivariateNormal(loc, B.zeros(shape + (1,), dtype=B.dtype_of(loc)),
                                         scale * scale)


@register_kl(Independent, MultivariateNormal)
@register_kl(Independent, LowRankMultivariateNormal)
def _kl_independent_mvn(p, q):
    """Independent(Normal, 1) as a diagonal normal, then the (low-rank) multivariate closed form."""
    return kl_divergence(_as_lowrank(p), q)


@register_kl(MultivariateNormal, Independent)
@register_kl(LowRankMultivariateNormal, Independent)
def _kl_mvn_independent(p, q):
    """Independent(Normal, 1) as a diagonal normal, then the (low-rank) multivariate closed form."""
    return kl_divergence(p, _as_lowrank(q))


@register_kl(ExpandedDistribution, Distribution)
@register_kl(Delta, ExpandedDistribution)
def _kl_expanded_p(p, q):
    """The KL of the unexpanded base, broadcast to the batch shape."""
    if isinstance(p, ExpandedDistribution):
        return kl_divergence(p.base_dist, q)
    return kl_divergence(p, q.base_dist)


@register_kl(Distribution, ExpandedDistribution)
def _kl_expanded_q(p, q):
    """The KL against the unexpanded base, broadcast to the batch shape."""
    return kl_divergence(p, q.base_dist)


@register_kl(ExpandedDistribution, ExpandedDistribution)
def _kl_expanded_expanded(p, q):
    """The KL of the two unexpanded bases, broadcast to the batch shape."""
    return kl_divergence(p.base_dist, q.base_dist)


def _unmask(d):
    if isinstance(d, MaskedDistribution):
        return d.base_dist, d._mask
    return d, True


@register_kl(MaskedDistribution, Distribution)
@register_kl(Distribution, MaskedDistribution)
@register_kl(MaskedDistribution, MaskedDistribution)
@register_kl(MaskedDistribution, ExpandedDistribution)
@register_kl(ExpandedDistribution, MaskedDistribution)
@register_kl(Delta, MaskedDistribution)
def _kl_masked(p, q):
    """The base KL where both masks are True and 0 elsewhere (a masked site contributes nothing)."""
    B = p.B
    bp, mask_p = _unmask(p)
    bq, mask_q = _unmask(q)
    if mask_p is False or mask_q is False:
        return B.zeros(_batch(p, q), dtype=_dtype(bp))
    kl = kl_divergence(bp, bq)
    for mask in (mask_p, mask_q):
        if mask is not True:
            kl = B.broadcast_to(kl, B.broadcast_shapes(B.shape(kl), B.shape(mask)))
            kl = B.where(mask, kl, B.zeros_like(kl))
    return kl


@register_kl(Delta, Distribution)
def _kl_delta(p, q):
    """-log q(v) + log_density of the point mass (+inf where v is outside the support of q)."""
    return p.log_density - _log_prob_in_support(q, p.v)


def _same_value(B, a, b):
    if isinstance(a, Transform) or isinstance(b, Transform):
        return isinstance(a, Transform) and isinstance(b, Transform) and _same_transform(a, b)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
                and len(a) == len(b) and all(_same_value(B, x, y) for x, y in zip(a, b)))
    if B.is_array(a) or B.is_array(b):
        try:
            xa, xb = B.to_numpy(B.asarray(a)), B.to_numpy(B.asarray(b))
        except Exception:  # traced parameters: equal only if they are the same object
            return a is b
        return xa.shape == xb.shape and bool((xa == xb).all())
    return a == b


def _same_transform(a, b):
    """Whether two transforms are the same map: one object, or one type with equal public
    attributes (parameters compared by value)."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    va = {k: v for k, v in vars(a).items() if not k.startswith("_") and k != "B"}
    vb = {k: v for k, v in vars(b).items() if not k.startswith("_") and k != "B"}
    return va.keys() == vb.keys() and all(_same_value(a.B, va[k], vb[k]) for k in va)


@register_kl(TransformedDistribution, TransformedDistribution)
def _kl_transformed_transformed(p, q):
    """The KL of the base distributions when both use equal transforms (KL is invariant under a
    bijection)."""
    if len(p.transforms) != len(q.transforms) or not all(
            _same_transform(a, b) for a, b in zip(p.transforms, q.transforms)):
        raise NotImplementedError(
            "kl_divergence(TransformedDistribution, TransformedDistribution) needs equal "
            "transforms on both sides; use kl_divergence_mc")
    B = p.B
    kl = kl_divergence(p.base_dist, q.base_dist)
    extra = B.ndim(kl) - len(_batch(p, q))
    return _sum_rightmost(B, kl, extra) if extra > 0 else kl


# ---------------------------------------------------------------------------- script
def main(argv=None) -> int:
    """Write the KL table (``kl_table_markdown``) to a file, by default ``docs/kl_table.md``
    relative to the working directory; ``-`` writes to standard output."""
    import argparse
    import pathlib
    import sys

    parser = argparse.ArgumentParser(prog="python -m agvi.distributions.kl",
                                     description="Regenerate the KL table documentation.")
    parser.add_argument("output", nargs="?", default="docs/kl_table.md",
                        help="output path (default docs/kl_table.md; '-' for stdout)")
    args = parser.parse_args(argv)
    text = kl_table_markdown()
    if args.output == "-":
        sys.stdout.write(text)
    else:
        path = pathlib.Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {len(registered_kl_pairs())} KL pairs to {path}")
    return 0


if __name__ == "__main__":
    # Run the canonical module's main: running this file as __main__ builds a second registry.
    from agvi.distributions.kl import main as _main

    raise SystemExit(_main())
