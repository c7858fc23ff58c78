""":class:`TransformedDistribution`: a base distribution pushed through a chain of bijections.

If ``X ~ base`` and ``Y = t_n(...t_1(X))``, then ``log p_Y(y) = log p_X(x) - sum_k log|det J_k|``
with ``x`` the inverse image of ``y`` and ``J_k`` the Jacobian of ``t_k`` at its input.
"""

from __future__ import annotations

from . import constraints
from .distribution import Distribution, Independent, _sum_rightmost
from .transforms import ComposeTransform, Transform

__all__ = ["TransformedDistribution"]


class TransformedDistribution(Distribution):
    """The law of ``transforms[-1](...transforms[0](X))`` for ``X ~ base_distribution``.

    Parameters
    ----------
    base_distribution : Distribution
        The law of ``X``. Its batch shape is broadcast to what the transforms' parameters need,
        and its rightmost batch axes become event axes where a transform acts on vectors or
        matrices (as ``torch.distributions.TransformedDistribution``).
    transforms : Transform or sequence of Transform
        Applied first to last.
    validate_args : bool or None
        As for every :class:`Distribution`: a value outside the support raises in ``log_prob``.

    Raises
    ------
    TypeError
        If ``transforms`` is not a Transform or a sequence of them.
    ValueError
        If a transform was built under another backend than ``base_distribution``, or the base
        has fewer axes than the transforms' domain needs.

    Notes
    -----
    ``support`` is the last transform's codomain (made ``independent`` over any further event
    axes); ``has_rsample`` is the base's. ``mean``, ``variance`` and ``entropy`` have no closed
    form in general and raise ``NotImplementedError``. ``cdf`` and ``icdf`` exist when every
    transform is a monotone scalar map (it has a ``sign``) and the base has them.

    Examples
    --------
    >>> from agvi.distributions import Normal, ExpTransform
    >>> from agvi.distributions.transformed import TransformedDistribution
    >>> d = TransformedDistribution(Normal(0.0, 1.0), ExpTransform())
    >>> float(d.log_prob(1.0))  # the standard log-normal density at 1
    -0.9189385332046727
    """

    arg_constraints = {}

    def __init__(self, base_distribution, transforms, *, validate_args=None):
        if isinstance(transforms, Transform):
            transforms = [transforms]
        elif isinstance(transforms, (list, tuple)):
            transforms = list(transforms)
        else:
            raise TypeError("TransformedDistribution: transforms must be a Transform or a list "
                            f"of Transforms, got {type(transforms).__name__}")
        for i, t in enumerate(transforms):
            if not isinstance(t, Transform):
                raise TypeError(f"TransformedDistribution: transforms[{i}] must be a Transform, "
                                f"got {type(t).__name__}")
        self.B = base_distribution.B
        for i, t in enumerate(transforms):
            if t.B.name != self.B.name:
                raise ValueError(
                    f"TransformedDistribution: transforms[{i}] was built under the "
                    f"{t.B.name!r} backend but base_distribution under {self.B.name!r}; build "
                    "both under one agvi.use_backend(...) block")
        self.transforms = transforms
        chain = ComposeTransform(transforms)
        chain.B = self.B

        base_shape = base_distribution.batch_shape + base_distribution.event_shape
        base_event_dim = len(base_distribution.event_shape)
        domain_event_dim = chain.domain.event_dim
        if len(base_shape) < domain_event_dim:
            raise ValueError(
                f"TransformedDistribution: the transforms act on {domain_event_dim}-dimensional "
                f"events, but base_distribution has shape {base_shape} "
                f"(batch_shape + event_shape); give it at least {domain_event_dim} axes")
        out_shape = chain.forward_shape(base_shape)
        # broadcast the base to the shape the transforms' parameters imply
        needed = chain.inverse_shape(out_shape)
        if needed != base_shape:
            base_distribution = base_distribution.expand(
                needed[:len(needed) - base_event_dim])
        if domain_event_dim > base_event_dim:
            base_distribution = Independent(base_distribution, domain_event_dim - base_event_dim)
        self.base_dist = base_distribution

        change = chain.codomain.event_dim - domain_event_dim
        event_dim = max(chain.codomain.event_dim, base_event_dim + change)
        cut = len(out_shape) - event_dim
        self.has_rsample = self.base_dist.has_rsample
        support = transforms[-1].codomain if transforms else self.base_dist.support
        if support is not None and event_dim > support.event_dim:
            support = constraints.independent(support, event_dim - support.event_dim)
        self.support = support
        super().__init__(out_shape[:cut], out_shape[cut:], validate_args=validate_args)

    def _push(self, x):
        for t in self.transforms:
            x = t(x)
        return x

    def rsample(self, key, sample_shape=()):
        """A reparameterised draw: a base ``rsample`` pushed through the transforms.

        Returns
        -------
        Array, shape ``sample_shape + batch_shape + event_shape``.

        Raises
        ------
        NotImplementedError
            If the base distribution has no reparameterised sampler.
        """
        return self._push(self.base_dist.rsample(self._key(key), sample_shape))

    def sample(self, key, sample_shape=()):
        """A draw with no gradient: a base ``sample`` pushed through the transforms.

        Returns
        -------
        Array, shape ``sample_shape + batch_shape + event_shape``.
        """
        return self.B.stop_gradient(self._push(self.base_dist.sample(self._key(key),
                                                                     sample_shape)))

    def log_prob(self, value):
        """``log p(value)``: the base log density at the inverse image minus the log-det terms.

        Parameters
        ----------
        value : Array, shape ``sample_shape + batch_shape + event_shape``

        Returns
        -------
        Array, shape ``sample_shape + batch_shape``.

        Raises
        ------
        ValueError
            Under validation, if ``value`` is outside ``support``.
        """
        B = self.B
        y = self._value(value)
        event_dim = len(self.event_shape)
        total = 0.0
        for t in reversed(self.transforms):
            x = t.inverse(y)
            event_dim += t.domain.event_dim - t.codomain.event_dim
            total = total - _sum_rightmost(B, t.log_abs_det_jacobian(x, y),
                                           event_dim - t.domain.event_dim)
            y = x
        base_lp = self.base_dist.log_prob(y)
        return total + _sum_rightmost(B, base_lp, event_dim - len(self.base_dist.event_shape))

    def _sign(self):
        for t in self.transforms:
            if t.domain.event_dim or t.codomain.event_dim:
                raise NotImplementedError(
                    "TransformedDistribution: cdf and icdf need scalar (elementwise) transforms, "
                    f"but {t!r} acts on {max(t.domain.event_dim, t.codomain.event_dim)}-d events")
        sign = 1.0
        for t in self.transforms:
            sign = sign * t.sign
        return sign

    def _monotonize(self, p, sign):
        # for a decreasing chain, P(Y <= y) = 1 - P(X <= x)
        if isinstance(sign, float) and sign == 1.0:
            return p
        return sign * (p - 0.5) + 0.5

    def cdf(self, value):
        """``P(Y <= value)`` for monotone scalar transforms (shape as :meth:`log_prob`).

        Raises
        ------
        NotImplementedError
            If a transform is not a monotone scalar map or the base has no cdf.
        """
        sign = self._sign()
        x = self._value(value)
        for t in reversed(self.transforms):
            x = t.inverse(x)
        return self._monotonize(self.base_dist.cdf(x), sign)

    def icdf(self, q):
        """Quantile function at ``q`` in (0, 1) for monotone scalar transforms.

        Raises
        ------
        NotImplementedError
            If a transform is not a monotone scalar map or the base has no icdf.
        """
        sign = self._sign()
        q = q if self.B.is_array(q) else self.B.asarray(q)
        return self._push(self.base_dist.icdf(self._monotonize(q, sign)))
