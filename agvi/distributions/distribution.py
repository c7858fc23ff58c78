"""The Distribution base class and the structural wrappers every family gets for free:
:class:`ExpandedDistribution` (``expand``), :class:`Independent` (``to_event``) and
:class:`MaskedDistribution` (``mask``).

Shapes follow Pyro/NumPyro: a draw with ``sample_shape`` has shape
``sample_shape + batch_shape + event_shape``; ``log_prob`` of a value of shape
``sample_shape + batch_shape + event_shape`` has shape ``sample_shape + batch_shape``.

A distribution keeps the Backend that was active when it was built (``dist.B``) and computes
everything with it.
"""

from __future__ import annotations

from ..backends import get_backend
from . import constraints

__all__ = [
    "Distribution", "ExpandedDistribution", "Independent", "MaskedDistribution",
    "broadcast_params", "enable_validation", "is_validation_enabled",
]

_VALIDATION = {"enabled": False}


def enable_validation(is_validate: bool = True) -> None:
    """Turn argument and support validation on (or off) for distributions built afterwards
    without an explicit ``validate_args``."""
    _VALIDATION["enabled"] = bool(is_validate)


def is_validation_enabled() -> bool:
    """Whether distributions validate by default."""
    return _VALIDATION["enabled"]


def broadcast_params(B, *params):
    """Convert parameters to Arrays of ``B`` and broadcast them to one shape.

    Returns
    -------
    (arrays, shape) : list of Arrays of the common shape, and that shape (tuple of ints).

    Raises
    ------
    ValueError
        If the shapes do not broadcast.
    """
    arrays = [B.asarray(p) for p in params]
    shapes = [tuple(B.shape(a)) for a in arrays]
    if all(s == shapes[0] for s in shapes):   # the common case: no broadcasting to do
        return arrays, shapes[0]
    others = {s for s in shapes if s}
    # next most common: scalars with arrays of one shape (Normal(0.0, scale))
    shape = others.pop() if len(others) == 1 else B.broadcast_shapes(*shapes)
    return [a if s == shape else B.broadcast_to(a, shape)
            for a, s in zip(arrays, shapes, strict=True)], shape


class Distribution:
    """Base class of agvi's distributions.

    Parameters
    ----------
    batch_shape : tuple of int
        Shape of independent, non-identical draws.
    event_shape : tuple of int
        Shape of one draw.
    validate_args : bool or None
        Check parameters against ``arg_constraints`` now, and values against ``support`` in
        ``log_prob``; ``None`` follows :func:`enable_validation`.

    Raises
    ------
    ValueError
        Under validation, when a parameter breaks its constraint; the message names the
        parameter, the constraint and the distribution.

    Notes
    -----
    Subclasses set ``arg_constraints`` (name -> constraint), ``support``, ``has_rsample`` and
    implement ``log_prob`` and ``rsample`` (reparameterised) or ``sample``; ``mean``,
    ``variance``, ``entropy``, ``cdf`` and ``icdf`` where a closed form exists.
    """

    arg_constraints: dict = {}
    support = None
    has_rsample = False
    has_enumerate_support = False

    def __init__(self, batch_shape=(), event_shape=(), *, validate_args=None):
        if not hasattr(self, "B"):
            self.B = get_backend()
        self._batch_shape = tuple(batch_shape)
        self._event_shape = tuple(event_shape)
        self._validate_args = (is_validation_enabled() if validate_args is None
                               else bool(validate_args))
        if self._validate_args:
            self._check_params()

    # shapes -------------------------------------------------------------------------------------
    @property
    def batch_shape(self) -> tuple:
        """Shape of independent (not identically distributed) draws."""
        return self._batch_shape

    @property
    def event_shape(self) -> tuple:
        """Shape of one draw."""
        return self._event_shape

    @property
    def event_dim(self) -> int:
        """Number of event axes."""
        return len(self._event_shape)

    def shape(self, sample_shape=()) -> tuple:
        """``sample_shape + batch_shape + event_shape``."""
        return tuple(sample_shape) + self._batch_shape + self._event_shape

    # validation ---------------------------------------------------------------------------------
    def _check_params(self):
        B = self.B
        for name, constraint in self.arg_constraints.items():
            if constraint is constraints.dependent or not hasattr(self, name):
                continue
            value = getattr(self, name)
            if value is None or not (B.is_array(value) or isinstance(value, (int, float))):
                continue
            ok = constraint.check(B.asarray(value), B)
            if not bool(B.to_numpy(B.all(ok))):
                raise ValueError(
                    f"{type(self).__name__}: parameter `{name}` must satisfy the constraint "
                    f"{constraint!r}, but got {B.to_numpy(B.asarray(value))!r}")

    def _value(self, value):
        """``value`` as an Array of this backend, checked against the support under validation.

        Raises
        ------
        ValueError
            Under validation, if ``value`` lies outside the support.
        """
        if not self.B.is_array(value):
            value = self.B.asarray(value)
        if self._validate_args and self.support is not None:
            ok = self.support.check(value, self.B)
            if not bool(self.B.to_numpy(self.B.all(ok))):
                raise ValueError(
                    f"{type(self).__name__}: value is outside the support {self.support!r}: "
                    f"{self.B.to_numpy(value)!r}")
        return value

    # sampling -----------------------------------------------------------------------------------
    def _key(self, key):
        if isinstance(key, int):
            return self.B.key(key)
        return key

    def rsample(self, key, sample_shape=()):
        """A reparameterised draw: differentiable in the parameters.

        Parameters
        ----------
        key : Array, shape (2,)
            Random key (see :mod:`agvi.random`).
        sample_shape : tuple of int

        Returns
        -------
        Array, shape ``sample_shape + batch_shape + event_shape``.

        Raises
        ------
        NotImplementedError
            If the family has no reparameterised sampler (``has_rsample`` is False).
        """
        raise NotImplementedError(f"{type(self).__name__} has no reparameterised sampler")

    def sample(self, key, sample_shape=()):
        """A draw with no gradient to the parameters; shape as :meth:`rsample`."""
        return self.B.stop_gradient(self.rsample(self._key(key), sample_shape))

    def sample_with_log_prob(self, key, sample_shape=()):
        """``(x, log_prob(x))`` for a reparameterised draw ``x``."""
        x = self.rsample(self._key(key), sample_shape) if self.has_rsample else \
            self.sample(self._key(key), sample_shape)
        return x, self.log_prob(x)

    # densities and moments ------------------------------------------------------------------------
    def log_prob(self, value):
        """Log density (or mass) of ``value``.

        Parameters
        ----------
        value : Array, shape ``sample_shape + batch_shape + event_shape`` (broadcastable).

        Returns
        -------
        Array, shape ``sample_shape + batch_shape``, natural log scale.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement log_prob")

    def _unavailable(self, what):
        raise NotImplementedError(f"{type(self).__name__} has no closed-form {what}")

    @property
    def mean(self):
        """Mean, shape ``batch_shape + event_shape``."""
        return self._unavailable("mean")

    @property
    def variance(self):
        """Variance, shape ``batch_shape + event_shape``."""
        return self._unavailable("variance")

    @property
    def stddev(self):
        """Standard deviation, shape ``batch_shape + event_shape``."""
        return self.B.sqrt(self.variance)

    def entropy(self):
        """Differential (or Shannon) entropy in nats, shape ``batch_shape``."""
        return self._unavailable("entropy")

    def cdf(self, value):
        """Cumulative distribution function at ``value`` (shape as :meth:`log_prob`)."""
        return self._unavailable("cdf")

    def icdf(self, q):
        """Quantile function at probabilities ``q`` in (0, 1)."""
        return self._unavailable("icdf")

    # structure ----------------------------------------------------------------------------------
    def expand(self, batch_shape):
        """This distribution with batch shape ``batch_shape`` (broadcast, no copy of parameters).

        Raises
        ------
        ValueError
            If the current batch shape does not broadcast to ``batch_shape``.
        """
        batch_shape = tuple(batch_shape)
        if batch_shape == self.batch_shape:
            return self
        return ExpandedDistribution(self, batch_shape)

    def to_event(self, reinterpreted_batch_ndims=None):
        """Reinterpret the rightmost batch axes as event axes (all of them by default)."""
        n = (len(self.batch_shape) if reinterpreted_batch_ndims is None
             else reinterpreted_batch_ndims)
        return self if n == 0 else Independent(self, n)

    def mask(self, mask):
        """Zero ``log_prob`` where the boolean ``mask`` (broadcastable to batch_shape) is False;
        ``mask=False`` masks everything."""
        return MaskedDistribution(self, mask)

    def __repr__(self):
        return (f"{type(self).__name__}(batch_shape={self.batch_shape}, "
                f"event_shape={self.event_shape})")


def _sum_rightmost(B, x, n):
    return B.sum(x, axis=tuple(range(-n, 0))) if n > 0 else x


class ExpandedDistribution(Distribution):
    """``base_dist`` broadcast to a larger ``batch_shape`` (see :meth:`Distribution.expand`)."""

    arg_constraints = {}

    def __init__(self, base_dist, batch_shape, *, validate_args=None):
        if isinstance(base_dist, ExpandedDistribution):
            base_dist = base_dist.base_dist
        self.B = base_dist.B
        batch_shape = tuple(batch_shape)
        try:
            if self.B.broadcast_shapes(base_dist.batch_shape, batch_shape) != batch_shape:
                raise ValueError
        except ValueError:
            raise ValueError(f"cannot expand batch_shape {base_dist.batch_shape} to "
                             f"{batch_shape}") from None
        self.base_dist = base_dist
        self.has_rsample = base_dist.has_rsample
        self.support = base_dist.support
        super().__init__(batch_shape, base_dist.event_shape, validate_args=validate_args)

    def _broadcast(self, x, sample_shape):
        target = tuple(sample_shape) + self.batch_shape + self.event_shape
        return self.B.broadcast_to(x, target)

    def _draw_shape(self, sample_shape):
        """The base draw's sample shape: new leading batch axes, then one axis per size-1 base
        batch axis that was widened (each batch element needs its own independent draw)."""
        base = self.base_dist.batch_shape
        lead = self.batch_shape[:len(self.batch_shape) - len(base)]
        tail = self.batch_shape[len(lead):]
        self._stretched = [j for j, (b, n) in enumerate(zip(base, tail)) if b == 1 and n != 1]
        return tuple(sample_shape) + lead + tuple(tail[j] for j in self._stretched)

    def _place_draw(self, x, sample_shape):
        # Move each widened axis onto its size-1 base axis: draw axes are (sample, lead,
        # widened..., base batch..., event...), the result is (sample, batch, event).
        B, k = self.B, len(self._stretched)
        if k:
            start = len(sample_shape) + len(self.batch_shape) - len(self.base_dist.batch_shape)
            for i, j in reversed(list(enumerate(self._stretched))):
                # axes start..start+i hold the widened draws not yet moved
                x = B.squeeze(x, axis=start + i + 1 + j)
                x = B.moveaxis(x, start + i, start + i + j)
        return B.broadcast_to(x, self.shape(sample_shape))

    def rsample(self, key, sample_shape=()):
        x = self.base_dist.rsample(key, self._draw_shape(sample_shape))
        return self._place_draw(x, sample_shape)

    def sample(self, key, sample_shape=()):
        x = self.base_dist.sample(self._key(key), self._draw_shape(sample_shape))
        return self._place_draw(x, sample_shape)

    def log_prob(self, value):
        lp = self.base_dist.log_prob(value)
        shape = self.B.broadcast_shapes(self.B.shape(lp), self.batch_shape)
        return self.B.broadcast_to(lp, shape)

    def _expand_stat(self, x):
        return self.B.broadcast_to(x, self.batch_shape + self.event_shape)

    @property
    def mean(self):
        return self._expand_stat(self.base_dist.mean)

    @property
    def variance(self):
        return self._expand_stat(self.base_dist.variance)

    def entropy(self):
        return self.B.broadcast_to(self.base_dist.entropy(), self.batch_shape)

    def cdf(self, value):
        return self.base_dist.cdf(value)

    def icdf(self, q):
        return self.base_dist.icdf(q)


class Independent(Distribution):
    """Reinterpret the rightmost ``reinterpreted_batch_ndims`` batch axes of ``base_dist`` as
    event axes: ``log_prob`` sums over them.

    Raises
    ------
    ValueError
        If ``reinterpreted_batch_ndims`` exceeds the base batch rank.
    """

    arg_constraints = {}

    def __init__(self, base_dist, reinterpreted_batch_ndims: int, *, validate_args=None):
        n = int(reinterpreted_batch_ndims)
        if n < 0 or n > len(base_dist.batch_shape):
            raise ValueError(
                f"reinterpreted_batch_ndims must be in [0, {len(base_dist.batch_shape)}] for "
                f"batch_shape {base_dist.batch_shape}, got {reinterpreted_batch_ndims}")
        self.B = base_dist.B
        self.base_dist = base_dist
        self.reinterpreted_batch_ndims = n
        self.has_rsample = base_dist.has_rsample
        cut = len(base_dist.batch_shape) - n
        self.support = constraints.independent(base_dist.support, n) if base_dist.support \
            is not None else None
        super().__init__(base_dist.batch_shape[:cut],
                         base_dist.batch_shape[cut:] + base_dist.event_shape,
                         validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        return self.base_dist.rsample(key, sample_shape)

    def sample(self, key, sample_shape=()):
        return self.base_dist.sample(key, sample_shape)

    def log_prob(self, value):
        return _sum_rightmost(self.B, self.base_dist.log_prob(value),
                              self.reinterpreted_batch_ndims)

    def entropy(self):
        return _sum_rightmost(self.B, self.base_dist.entropy(), self.reinterpreted_batch_ndims)

    @property
    def mean(self):
        return self.base_dist.mean

    @property
    def variance(self):
        return self.base_dist.variance


class MaskedDistribution(Distribution):
    """``base_dist`` whose ``log_prob`` is zero where ``mask`` is False (draws unchanged)."""

    arg_constraints = {}

    def __init__(self, base_dist, mask, *, validate_args=None):
        self.B = base_dist.B
        self.base_dist = base_dist
        self.has_rsample = base_dist.has_rsample
        self.support = base_dist.support
        if isinstance(mask, bool):
            self._mask = mask
        else:
            self._mask = self.B.asarray(mask, dtype=self.B.dtype("bool"))
            batch = self.B.broadcast_shapes(self.B.shape(self._mask), base_dist.batch_shape)
        super().__init__(base_dist.batch_shape if isinstance(mask, bool) else batch,
                         base_dist.event_shape, validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        return self.base_dist.rsample(key, sample_shape)

    def sample(self, key, sample_shape=()):
        return self.base_dist.sample(key, sample_shape)

    def log_prob(self, value):
        lp = self.base_dist.log_prob(value)
        if self._mask is True:
            return lp
        if self._mask is False:
            return self.B.zeros_like(lp)
        lp = self.B.broadcast_to(lp, self.B.broadcast_shapes(self.B.shape(lp), self.batch_shape))
        return self.B.where(self._mask, lp, self.B.zeros_like(lp))

    @property
    def mean(self):
        return self.base_dist.mean

    @property
    def variance(self):
        return self.base_dist.variance
