"""Finite mixtures whose components come from one family."""

from __future__ import annotations

from ..backends import get_backend
from .distribution import Distribution

__all__ = ["MixtureSameFamily"]


class MixtureSameFamily(Distribution):
    """Mixture of the distributions along the rightmost batch axis of ``component_distribution``.

    The batch shape is ``broadcast(mixing_batch, component_batch)``, the event shape that of the
    components.

    Parameters
    ----------
    mixing_distribution : Categorical or Categorical-like
        Mixture weights over ``K`` components: any object with ``batch_shape`` and either
        ``logits`` (unnormalised log-probabilities) or ``probs``, an Array of shape
        ``mixing_batch + (K,)`` (``logits`` is used when both exist).
    component_distribution : Distribution
        Batch shape ``component_batch + (K,)``, event shape ``event_shape``; ``mixing_batch``
        must broadcast with ``component_batch``.

    Raises
    ------
    ValueError
        If the mixing distribution has neither ``logits`` nor ``probs``, the components have no
        batch axis, the number of categories differs from ``K``, or the batch shapes do not
        broadcast.

    Notes
    -----
    ``log p(x) = logsumexp_k(log w_k + log p_k(x))``. ``sample`` draws a component index from the
    weights and takes that component's draw (not reparameterised: ``has_rsample`` is False).
    ``mean`` is ``sum_k w_k mean_k``; ``variance`` follows the law of total variance,
    ``sum_k w_k var_k + sum_k w_k (mean_k - mean)^2``. ``cdf`` (univariate components) is
    ``sum_k w_k cdf_k(x)``.
    """

    arg_constraints = {}
    has_rsample = False

    def __init__(self, mixing_distribution, component_distribution, *, validate_args=None):
        self.B = B = get_backend()
        logits = getattr(mixing_distribution, "logits", None)
        if logits is not None:
            self._log_weights = B.log_softmax(B.asarray(logits), axis=-1)
        else:
            probs = getattr(mixing_distribution, "probs", None)
            if probs is None:
                raise ValueError("MixtureSameFamily: `mixing_distribution` must have `logits` "
                                 f"or `probs` (a Categorical), got {mixing_distribution!r}")
            probs = B.asarray(probs)
            self._log_weights = B.log(probs / B.sum(probs, axis=-1, keepdims=True))
        comp_batch = tuple(component_distribution.batch_shape)
        if not comp_batch:
            raise ValueError("MixtureSameFamily: `component_distribution` needs a batch axis "
                             "holding the components (batch_shape (..., K)), got batch_shape ()")
        K = comp_batch[-1]
        if B.shape(self._log_weights)[-1] != K:
            raise ValueError(
                f"MixtureSameFamily: `mixing_distribution` has "
                f"{B.shape(self._log_weights)[-1]} categories but `component_distribution` has "
                f"K={K} components (its rightmost batch axis, batch_shape {comp_batch})")
        mix_batch = tuple(mixing_distribution.batch_shape)
        try:
            batch_shape = B.broadcast_shapes(mix_batch, comp_batch[:-1])
        except ValueError:
            raise ValueError(f"MixtureSameFamily: mixing batch_shape {mix_batch} does not "
                             f"broadcast with the component batch_shape {comp_batch[:-1]}") \
                from None
        self.mixing_distribution = mixing_distribution
        if comp_batch[:-1] != batch_shape:
            component_distribution = component_distribution.expand(batch_shape + (K,))
        self.component_distribution = component_distribution
        self._log_weights = B.broadcast_to(self._log_weights, batch_shape + (K,))
        self.support = component_distribution.support
        super().__init__(batch_shape, component_distribution.event_shape,
                         validate_args=validate_args)

    @property
    def num_components(self) -> int:
        """Number of mixture components ``K``."""
        return self.component_distribution.batch_shape[-1]

    def _weights_like_components(self):
        """Mixture weights with trailing axes for the event: ``batch + (K,) + (1,) * event_dim``."""
        B = self.B
        return B.reshape(B.exp(self._log_weights),
                         self.batch_shape + (self.num_components,) + (1,) * self.event_dim)

    def _pad(self, value):
        # value: sample + batch + event -> sample + batch + (1,) + event, to meet every component
        return self.B.expand_dims(value, -1 - self.event_dim)

    def log_prob(self, value):
        value = self._value(value)
        B = self.B
        lp = self.component_distribution.log_prob(self._pad(value))  # sample + batch + (K,)
        return B.logsumexp(lp + self._log_weights, axis=-1)

    def sample(self, key, sample_shape=()):
        B = self.B
        sample_shape = tuple(sample_shape)
        k_mix, k_comp = B.split(self._key(key), 2)
        shape = sample_shape + self.batch_shape
        index = B.categorical(k_mix, B.stop_gradient(self._log_weights), shape=shape)
        x = self.component_distribution.sample(k_comp, sample_shape)  # shape + (K,) + event
        index = B.reshape(index, shape + (1,) + (1,) * self.event_dim)
        index = B.broadcast_to(index, shape + (1,) + self.event_shape)
        picked = B.take_along_axis(x, index, axis=-1 - self.event_dim)
        return B.stop_gradient(B.squeeze(picked, -1 - self.event_dim))

    @property
    def mean(self):
        B = self.B
        return B.sum(self._weights_like_components() * self.component_distribution.mean,
                     axis=-1 - self.event_dim)

    @property
    def variance(self):
        B = self.B
        axis = -1 - self.event_dim
        w = self._weights_like_components()
        means = self.component_distribution.mean
        spread = means - B.expand_dims(self.mean, axis)
        return B.sum(w * (self.component_distribution.variance + spread * spread), axis=axis)

    def cdf(self, value):
        if self.event_dim:
            return self._unavailable("cdf for multivariate components")
        B = self.B
        value = self._value(value)
        return B.sum(B.exp(self._log_weights) * self.component_distribution.cdf(
            self._pad(value)), axis=-1)
