"""Effect handlers: give a model's sites keys, values, scales and masks, and record them.

Every handler works three ways::

    handlers.trace(model).get_trace(*args)          # wrapping a function
    with handlers.seed(rng_seed=0): model()          # as a context manager
    @handlers.scale(scale=0.1)                       # as a decorator
    def model(): ...

Handlers compose by wrapping: ``trace(seed(substitute(model, data), 0))``. The innermost handler
sees a site first.

Examples
--------
>>> import agvi, agvi.distributions as dist
>>> from agvi import handlers
>>> def model(y):
...     mu = agvi.sample("mu", dist.Normal(0.0, 1.0))
...     with agvi.plate("data", 3):
...         agvi.sample("y", dist.Normal(mu, 1.0), obs=y)
>>> tr = handlers.trace(handlers.seed(model, rng_seed=0)).get_trace(agvi.get_backend().zeros(3))
>>> list(tr), tr["y"]["fn"].batch_shape, tr["y"]["is_observed"]
(['mu', 'data', 'y'], (3,), True)
"""

from __future__ import annotations

from ..random import sanitize_seed
from .primitives import Messenger

__all__ = [
    "Trace", "block", "condition", "infer_config", "mask", "replay", "scale", "seed",
    "substitute", "trace",
]


class Trace(dict):
    """The record of one run of a model: an ordered dict ``name -> site dict``, in the order
    the sites ran (plates included, as ``"plate"`` sites whose value is the subsample indices).

    The site dicts have the keys listed in :mod:`agvi.handlers.primitives` (``name``, ``type``,
    ``fn``, ``args``, ``kwargs``, ``value``, ``is_observed``, ``scale``, ``mask``,
    ``cond_indep_stack``, ``infer``, ``intermediates``).
    """

    @property
    def nodes(self) -> Trace:
        """The trace itself (Pyro's spelling, ``trace.nodes[name]``)."""
        return self

    @property
    def stochastic_nodes(self) -> list:
        """Names of the latent (unobserved) sample sites, in order."""
        return [n for n, s in self.items() if s["type"] == "sample" and not s["is_observed"]]

    @property
    def observation_nodes(self) -> list:
        """Names of the observed sample sites (factors included), in order."""
        return [n for n, s in self.items() if s["type"] == "sample" and s["is_observed"]]

    @property
    def param_nodes(self) -> list:
        """Names of the param sites, in order."""
        return [n for n, s in self.items() if s["type"] == "param"]

    def log_prob_sum(self, site_filter=None):
        """The sum over sample sites of their masked, scaled log-probabilities.

        Parameters
        ----------
        site_filter : callable or None
            ``site_filter(name, site) -> bool`` selects the sites (default: all sample sites).

        Returns
        -------
        Array, shape ()
            See :func:`agvi.handlers.util.site_log_prob`.
        """
        from .util import trace_log_prob
        return trace_log_prob(self, site_filter)

    def format_shapes(self) -> str:
        """A table of each site's batch and event shapes (for debugging shape errors).

        Returns
        -------
        str
            One line per sample site (``name``, ``batch_shape | event_shape``, value shape),
            per param (value shape) and per plate (its size).
        """
        rows = []
        for name, s in self.items():
            kind = s["type"]
            if kind == "sample":
                fn = s["fn"]
                shape = tuple(getattr(s["value"], "shape", ()))
                rows.append(f"{name:<20} sample  {str(tuple(fn.batch_shape)):>12} | "
                            f"{str(tuple(fn.event_shape)):<10} value {shape}"
                            + ("  observed" if s["is_observed"] else ""))
            elif kind == "param":
                rows.append(f"{name:<20} param   value {tuple(getattr(s['value'], 'shape', ()))}")
            elif kind == "plate":
                rows.append(f"{name:<20} plate   size {s['args'][0]}, subsample "
                            f"{s['args'][1]}")
            elif kind == "deterministic":
                rows.append(f"{name:<20} determ. value {tuple(getattr(s['value'], 'shape', ()))}")
        return "\n".join(rows)


class trace(Messenger):
    """Record every site of a run in a :class:`Trace`.

    Parameters
    ----------
    fn : callable or None
        The model.

    Raises
    ------
    ValueError
        If two sample or deterministic sites share a name.

    Examples
    --------
    ``handlers.trace(model).get_trace(*args, **kwargs)`` runs the model and returns the trace;
    ``with handlers.trace() as tr: model()`` fills the Trace ``tr``.
    """

    def __init__(self, fn=None):
        self.trace = Trace()
        super().__init__(fn)

    def _reset(self):
        self.trace = Trace()

    def __enter__(self):
        super().__enter__()
        return self.trace

    def postprocess_message(self, msg):
        name = msg["name"]
        if msg["type"] in ("subsample", "prng_key"):
            return
        if msg["type"] in ("sample", "deterministic") and name in self.trace \
                and self.trace[name]["type"] in ("sample", "deterministic"):
            raise ValueError(f"site names must be unique within one run of a model, but "
                             f"{name!r} ran twice; give the sites different names")
        site = dict(msg)
        site["cond_indep_stack"] = list(msg["cond_indep_stack"])
        del site["stop"]
        self.trace[name] = site

    def __call__(self, *args, **kwargs):
        if self.fn is None:
            return super().__call__(*args, **kwargs)
        result, handler = self._run(*args, **kwargs)
        self.trace = handler.trace  # the last call's trace, as `handler.trace`
        return result

    def get_trace(self, *args, **kwargs) -> Trace:
        """Run the model with ``args`` and ``kwargs`` and return its :class:`Trace`.

        Raises
        ------
        TypeError
            If this handler wraps no function.
        """
        if self.fn is None:
            raise TypeError("trace.get_trace needs a wrapped function: handlers.trace(model)")
        return self._run(*args, **kwargs)[1].trace


class seed(Messenger):
    """Give every site that needs randomness its own key, split from ``rng_seed``.

    Each latent sample site without a value (and each subsampled plate, each param with a
    callable ``init_value``, each :func:`~agvi.handlers.primitives.prng_key` call) gets a key
    from ``key, subkey = split(key)``, in program order: there is no global random state.

    Parameters
    ----------
    fn : callable or None
        The model.
    rng_seed : int or Array, shape (2,)
        A non-negative int seed or a key of the active backend (sanitised with
        :func:`agvi.random.sanitize_seed` when the handler is entered, so under the backend
        active then). May be a traced key inside ``B.jit`` on JAX.

    Raises
    ------
    ValueError, TypeError
        If ``rng_seed`` is missing or not a seed or key.

    Notes
    -----
    The key stream restarts from ``rng_seed`` every time the handler is entered: calling a
    seeded function twice gives the same draws (it is a pure function of its arguments, as
    ``jit`` needs); pass a new key for new draws. Inside one ``with seed(...)`` block
    successive model calls continue the stream.
    """

    def __init__(self, fn=None, rng_seed=None):
        if rng_seed is None:
            raise ValueError("handlers.seed needs `rng_seed`: an int seed or a random key "
                             "(agvi.random.key(0)), e.g. handlers.seed(model, rng_seed=0)")
        if isinstance(rng_seed, bool) or not (isinstance(rng_seed, int) or
                                              hasattr(rng_seed, "shape")):
            raise TypeError(f"handlers.seed: `rng_seed` must be an int or a key array, "
                            f"got {type(rng_seed).__name__}")
        self.rng_seed = rng_seed
        super().__init__(fn)

    def _reset(self):
        self._key = sanitize_seed(self.rng_seed)

    def _next(self):
        from ..backends import get_backend
        keys = get_backend().split(self._key, 2)
        self._key = keys[0]
        return keys[1]

    def process_message(self, msg):
        kind = msg["type"]
        if msg["value"] is not None:
            return
        kwargs = msg["kwargs"]
        if kind == "sample":
            if kwargs.get("rng_key") is None:
                kwargs["rng_key"] = self._next()
        elif kind == "plate":
            if msg["args"][1] < msg["args"][0] and kwargs.get("rng_key") is None:
                kwargs["rng_key"] = self._next()
        elif kind == "param":
            if callable(msg["args"][0]) and kwargs.get("rng_key") is None:
                kwargs["rng_key"] = self._next()
        elif kind == "prng_key":
            if kwargs.get("rng_key") is None:
                kwargs["rng_key"] = self._next()


class replay(Messenger):
    """Give sample and plate sites the values recorded in ``trace`` (e.g. a guide's trace).

    Parameters
    ----------
    fn : callable or None
    trace : Trace or dict
        Site dicts by name. Latent sample sites whose name is in it take its value; observed
        sites keep their observation; plates take the recorded indices (so model and guide
        share one subsample).

    Raises
    ------
    ValueError
        If ``trace`` is missing.
    RuntimeError
        If the recorded site of a latent sample site is not a latent sample site.
    """

    def __init__(self, fn=None, trace=None):
        if trace is None:
            raise ValueError("handlers.replay needs `trace` (a Trace from handlers.trace)")
        self.trace = trace
        super().__init__(fn)

    def process_message(self, msg):
        kind = msg["type"]
        if kind not in ("sample", "plate"):
            return
        site = self.trace.get(msg["name"])
        if site is None:
            return
        if kind == "sample":
            if msg["is_observed"]:
                return
            if site["type"] != "sample" or site["is_observed"]:
                raise RuntimeError(f"replay: site {msg['name']!r} must be a latent sample site "
                                   f"in the replayed trace, but it is a {site['type']} site"
                                   + (" (observed)" if site.get("is_observed") else ""))
        elif site["type"] != "plate":
            return
        msg["value"] = site["value"]


class condition(Messenger):
    """Observe sample sites: a site named in ``data`` takes that value and becomes observed.

    Parameters
    ----------
    fn : callable or None
    data : dict or None
        ``name -> value``.
    condition_fn : callable or None
        ``condition_fn(site) -> value or None``, instead of ``data``.

    Raises
    ------
    ValueError
        If neither or both of ``data`` and ``condition_fn`` are given.
    """

    def __init__(self, fn=None, data=None, condition_fn=None):
        if (data is None) == (condition_fn is None):
            raise ValueError("handlers.condition needs exactly one of `data` (a dict of "
                             "values by site name) and `condition_fn`")
        self.data = data
        self.condition_fn = condition_fn
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample":
            return
        value = self.data.get(msg["name"]) if self.data is not None else self.condition_fn(msg)
        if value is not None:
            msg["value"] = value
            msg["is_observed"] = True


class substitute(Messenger):
    """Give sites values without observing them (latent sites stay latent).

    Applies to sample, param, deterministic and plate sites. This is how SVI puts the current
    parameters into a model and guide.

    Parameters
    ----------
    fn : callable or None
    data : dict or None
        ``name -> value``. For param sites the value is the *constrained* one.
    substitute_fn : callable or None
        ``substitute_fn(site) -> value or None``, instead of ``data`` (called on every site
        of those types; return None to leave a site alone).

    Raises
    ------
    ValueError
        If neither or both of ``data`` and ``substitute_fn`` are given.
    """

    def __init__(self, fn=None, data=None, substitute_fn=None):
        if (data is None) == (substitute_fn is None):
            raise ValueError("handlers.substitute needs exactly one of `data` (a dict of "
                             "values by site name) and `substitute_fn`")
        self.data = data
        self.substitute_fn = substitute_fn
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] not in ("sample", "param", "deterministic", "plate"):
            return
        value = self.data.get(msg["name"]) if self.data is not None \
            else self.substitute_fn(msg)
        if value is not None:
            msg["value"] = value


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class scale(Messenger):
    """Multiply the log-probability of every sample site by ``scale``.

    Parameters
    ----------
    fn : callable or None
    scale : float or Array
        A non-negative number, or an Array broadcastable to the sites' batch shapes. Pass an
        Array (e.g. a KL-annealing weight as an argument of a jitted step) so that a changing
        value does not recompile on JAX: it is only ever multiplied, never compared in Python.

    Raises
    ------
    ValueError
        If ``scale`` is a negative Python number.
    TypeError
        If it is neither a number nor an array.
    """

    def __init__(self, fn=None, scale=1.0):
        if _is_number(scale):
            if not scale >= 0:
                raise ValueError(f"handlers.scale: `scale` must be non-negative, got {scale}")
        elif not hasattr(scale, "shape"):
            raise TypeError(f"handlers.scale: `scale` must be a number or an Array, "
                            f"got {type(scale).__name__}")
        self.scale = scale
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample":
            return
        msg["scale"] = self.scale if msg["scale"] is None else self.scale * msg["scale"]


class mask(Messenger):
    """Keep the log-probability of sample sites only where ``mask`` is True (zero elsewhere).

    Parameters
    ----------
    fn : callable or None
    mask : bool or boolean Array
        Broadcastable to the sites' batch shapes. Masks combine by logical and.

    Raises
    ------
    TypeError
        If ``mask`` is not a bool or a boolean array.
    """

    def __init__(self, fn=None, mask=True):
        if not isinstance(mask, bool):
            dtype = str(getattr(mask, "dtype", ""))
            if "bool" not in dtype:
                raise TypeError(f"handlers.mask: `mask` must be a bool or a boolean array, "
                                f"got {type(mask).__name__} of dtype {dtype or 'none'}")
        self.mask = mask
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample":
            return
        msg["mask"] = _and_masks(msg["mask"], self.mask)


def _and_masks(a, b):
    if a is None or a is True:
        return b
    if b is True:
        return a
    if a is False or b is False:
        return False
    return a & b


class block(Messenger):
    """Hide sites from the handlers outside this one.

    Parameters
    ----------
    fn : callable or None
    hide_fn : callable or None
        ``hide_fn(site) -> bool``: True hides the site.
    hide : list of str or None
        Names to hide.
    expose : list of str or None
        Names to keep visible (all others are hidden).
    expose_types : list of str or None
        Site types to keep visible (e.g. ``["sample"]``).

    Notes
    -----
    The first of ``hide_fn``, ``hide``, ``expose``, ``expose_types`` that is given decides;
    with none, every site is hidden. A hidden site does not reach an outer
    :class:`seed`, so put the seed inside the block when hidden sites must draw.
    """

    def __init__(self, fn=None, hide_fn=None, hide=None, expose=None, expose_types=None):
        if hide_fn is not None:
            self.hide_fn = hide_fn
        elif hide is not None:
            hidden = frozenset(hide)
            self.hide_fn = lambda msg: msg["name"] in hidden
        elif expose is not None:
            shown = frozenset(expose)
            self.hide_fn = lambda msg: msg["name"] not in shown
        elif expose_types is not None:
            types = frozenset(expose_types)
            self.hide_fn = lambda msg: msg["type"] not in types
        else:
            self.hide_fn = lambda msg: True
        super().__init__(fn)

    def process_message(self, msg):
        if self.hide_fn(msg):
            msg["stop"] = True


class infer_config(Messenger):
    """Update the ``infer`` dict of sample sites with ``config_fn(site)``.

    Parameters
    ----------
    fn : callable or None
    config_fn : callable
        ``config_fn(site) -> dict`` (merged into ``site["infer"]``).
    """

    def __init__(self, fn=None, config_fn=None):
        if not callable(config_fn):
            raise TypeError("handlers.infer_config needs a callable `config_fn`")
        self.config_fn = config_fn
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample":
            msg["infer"].update(self.config_fn(msg))
