"""The modelling primitives and the effect-handler stack.

A model is a plain Python function that calls :func:`sample`, :func:`param`,
:func:`deterministic`, :func:`factor` and opens :class:`plate` contexts. Each call builds a
*message* (a dict, the site) and hands it to :func:`apply_stack`, which lets every active
handler (a :class:`Messenger`) look at it and change it, innermost first; then, if no handler
gave the site a value, the primitive's default runs (a draw for a sample site, the initial value
for a param site); then the handlers' ``postprocess_message`` run, innermost first again. The
handlers that give meaning to a model (drawing keys, recording, conditioning, scaling) are in
:mod:`agvi.handlers.handlers`.

The handler stack is held in a :class:`contextvars.ContextVar`: each thread (and each asyncio
task) has its own stack, so models may run concurrently in executor threads. A handler entered
in one thread is not seen by a model running in another.

Site dicts (messages) have these keys:

``name`` (str), ``type`` (``"sample"``, ``"param"``, ``"plate"``, ``"deterministic"``,
``"subsample"``, ``"prng_key"``), ``fn`` (the distribution of a sample site; a callable
otherwise), ``args``, ``kwargs`` (sample sites: ``rng_key`` and ``sample_shape``; param sites:
``constraint`` and ``event_dim``), ``value``, ``is_observed``, ``scale`` (None or a factor that
multiplies the log-probability: a number or an Array), ``mask`` (None, a bool, or a boolean
Array broadcastable to the site's batch shape), ``cond_indep_stack`` (list of
:class:`CondIndepStackFrame`, outermost plate first), ``infer`` (dict of inference options),
``intermediates`` (list, empty here) and ``stop`` (internal: a handler that set it hides the
site from the handlers outside it).

Backends: the primitives only call the distribution's own methods and the active Backend, so a
model runs unchanged on NumPy+autograd, PyTorch and JAX, inside ``B.jit`` on JAX (handlers run
while tracing; nothing syncs with the host) and inside ``B.vmap`` over values (for example a
batch of latent values given through ``substitute``). ``B.vmap`` over a batch of *keys* (one
seeded run per key) gives the same numbers as a loop over the keys on every backend, but only
JAX vectorises it: the NumPy and torch backends keep keys on the host, so their ``vmap`` runs a
Python loop there. For vectorised particles on torch, draw along a plate or ``sample_shape``.

References
----------
Plotkin and Pretnar (2009), "Handlers of algebraic effects" (the idea); the design and the site
fields follow Pyro's ``poutine`` (Bingham et al., 2019, JMLR 20(28)) and NumPyro's
``primitives`` / ``handlers`` (Phan, Pradhan and Jankowiak, 2019, arXiv:1912.11554).
"""

from __future__ import annotations

import contextvars
import functools
from typing import NamedTuple

import numpy as np

from ..backends import get_backend
from ..distributions import constraints
from ..distributions.distribution import Distribution

__all__ = [
    "CondIndepStackFrame", "Messenger", "Unit", "apply_stack", "deterministic", "factor",
    "get_handler_stack", "param", "plate", "prng_key", "sample", "subsample",
]

# The handler stack of this thread / task: an immutable tuple, outermost handler first.
_STACK: contextvars.ContextVar[tuple] = contextvars.ContextVar("agvi_handler_stack", default=())


def get_handler_stack() -> tuple:
    """The active handlers of this thread or task, outermost first (a tuple of Messengers)."""
    return _STACK.get()


_WRAPPER_ATTRS = functools.WRAPPER_ASSIGNMENTS
_MISSING = object()


class Messenger:
    """Base class of effect handlers.

    A handler either wraps a callable, ``h = handler(fn, ...)``, and is then called like ``fn``
    (``h(*args, **kwargs)`` runs ``fn`` with the handler active), or is used as a context
    manager, ``with handler(...): model()``, or as a decorator,
    ``@handler(...)`` over a model definition.

    Parameters
    ----------
    fn : callable or None
        The function to wrap, or None for the context-manager and decorator forms.

    Raises
    ------
    TypeError
        If ``fn`` is neither None nor callable.

    Notes
    -----
    Subclasses override :meth:`process_message` (called innermost handler first, before the
    site gets its default value) and :meth:`postprocess_message` (called, innermost first, after
    it), and keep any per-run state in :meth:`_reset`, which runs on every ``__enter__``. Calling
    a wrapping handler runs a shallow copy of it, so each call starts from fresh state (a seeded
    model draws the same numbers on every call) and concurrent calls from several threads do not
    share state.
    """

    def __init__(self, fn=None):
        if fn is not None and not callable(fn):
            raise TypeError(f"{type(self).__name__}: fn must be callable or None, "
                            f"got {type(fn).__name__}")
        self.fn = fn
        if fn is not None:
            # what functools.update_wrapper(self, fn, updated=[]) sets, at a third of its cost
            # (handlers are built on every ELBO evaluation)
            for attr in _WRAPPER_ATTRS:
                value = getattr(fn, attr, _MISSING)
                if value is not _MISSING:
                    setattr(self, attr, value)
            self.__wrapped__ = fn

    def _reset(self):
        """Initialise per-run state (called by ``__enter__``)."""

    def __enter__(self):
        self._reset()
        _STACK.set(_STACK.get() + (self,))
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        stack = _STACK.get()
        # Remove this handler and anything left above it (after an exception inside a nested
        # handler that did not exit cleanly).
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is self:
                _STACK.set(stack[:i])
                break
        return False

    def process_message(self, msg: dict) -> None:
        """Inspect or change the site ``msg`` before it gets its default value."""

    def postprocess_message(self, msg: dict) -> None:
        """Inspect or change the site ``msg`` after it got its value."""

    def _copy(self):
        """A shallow copy (``copy.copy`` without its reduce protocol: 4x cheaper)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def _run(self, *args, **kwargs):
        """Run ``self.fn`` under a fresh copy of this handler; return (result, the copy)."""
        handler = self._copy()
        with handler:
            return handler.fn(*args, **kwargs), handler

    def __call__(self, *args, **kwargs):
        if self.fn is None:
            # decorator form: @handler(...) def model(...)
            if len(args) == 1 and not kwargs and callable(args[0]):
                wrapped = self._copy()
                Messenger.__init__(wrapped, args[0])
                return wrapped
            raise TypeError(f"{type(self).__name__} wraps no function: pass the model as `fn` "
                            "(handler(model, ...)) or use it as a context manager")
        return self._run(*args, **kwargs)[0]


def apply_stack(msg: dict) -> dict:
    """Send the site ``msg`` through the active handlers and give it its value.

    Handlers see the message innermost first (the one entered last); one that sets
    ``msg["stop"] = True`` hides it from the handlers outside it. If the site then has no value,
    the primitive's default runs (see :func:`sample`, :func:`param`). Finally the handlers that
    saw it run ``postprocess_message``, innermost first.

    Parameters
    ----------
    msg : dict
        A site dict (keys as in the module docstring).

    Returns
    -------
    dict
        ``msg``, changed in place; its ``"value"`` is the primitive's result.
    """
    stack = _STACK.get()
    n = len(stack)
    seen = 0
    for i in range(n - 1, -1, -1):
        seen += 1
        stack[i].process_message(msg)
        if msg["stop"]:
            break
    if msg["value"] is None:
        _default_value(msg)
    for i in range(n - 1, n - 1 - seen, -1):
        stack[i].postprocess_message(msg)
    return msg


# -- defaults -----------------------------------------------------------------------------------
def _missing_key(what: str, name) -> RuntimeError:
    return RuntimeError(
        f"{what} {name!r} needs a random key, but no agvi.handlers.seed handler gave it one. "
        "Wrap the model in agvi.handlers.seed(model, rng_seed=0) (or run it inside "
        "`with agvi.handlers.seed(rng_seed=0):`), or give the site a value (obs=, "
        "handlers.condition, handlers.substitute). If a handlers.block between the site and "
        "the seed hides the site, put the seed inside the block.")


def _draw(msg):
    fn = msg["fn"]
    key = msg["kwargs"].get("rng_key")
    if key is None:
        raise _missing_key("the sample site", msg["name"])
    shape = tuple(msg["kwargs"].get("sample_shape", ()))
    # Reparameterised draws where the family has them, so that gradients flow through latent
    # values (the pathwise estimator); otherwise a draw with no gradient.
    return fn.rsample(key, shape) if fn.has_rsample else fn.sample(key, shape)


def _default_value(msg):
    kind = msg["type"]
    if kind == "sample":
        msg["value"] = _draw(msg)
        return
    if msg["kwargs"].get("rng_key") is None:
        # name the site in the error (the default functions do not know it)
        if kind == "param" and callable(msg["args"][0]):
            raise _missing_key("the param site with a callable init_value", msg["name"])
        if kind == "plate" and msg["args"][1] < msg["args"][0]:
            raise _missing_key("the subsampled plate", msg["name"])
    msg["value"] = msg["fn"](*msg["args"], **msg["kwargs"])


def _site(name, type_, fn, args=(), kwargs=None, value=None, is_observed=False, infer=None):
    return {
        "name": name, "type": type_, "fn": fn, "args": args,
        "kwargs": {} if kwargs is None else kwargs, "value": value,
        "is_observed": is_observed, "scale": None, "mask": None, "cond_indep_stack": [],
        "infer": {} if infer is None else dict(infer), "intermediates": [], "stop": False,
    }


def _check_name(name, what):
    if not isinstance(name, str):
        raise TypeError(f"{what}: `name` must be a str, got {type(name).__name__}")


# -- primitives ---------------------------------------------------------------------------------
def sample(name: str, fn, obs=None, rng_key=None, sample_shape=(), infer=None):
    """A random variable: draw it from ``fn``, or observe it (``obs``).

    Parameters
    ----------
    name : str
        The site name, unique within one run of the model.
    fn : Distribution
        An :mod:`agvi.distributions` object (``import agvi.distributions as dist``).
    obs : Array or None
        An observed value, shape ``batch_shape + event_shape`` of ``fn`` (after any enclosing
        plates broadcast it); returned unchanged.
    rng_key : Array, shape (2,), or None
        A key to draw with; usually None, and the key comes from :class:`~agvi.handlers.seed`.
    sample_shape : tuple of int
        Extra leading draw axes. Inside a plate they become batch axes of the (expanded)
        distribution, as in NumPyro.
    infer : dict or None
        Options for inference algorithms (copied into the site's ``infer`` dict).

    Returns
    -------
    Array, shape ``sample_shape + batch_shape + event_shape`` (``batch_shape`` including the
    plate axes): ``obs`` if given, else the value a handler gave the site, else a draw
    (``fn.rsample`` when ``fn.has_rsample``, so that gradients flow to ``fn``'s parameters;
    ``fn.sample`` otherwise).

    Raises
    ------
    TypeError
        If ``name`` is not a str or ``fn`` is not a distribution.
    RuntimeError
        If a value has to be drawn and there is no key: wrap the model in
        ``agvi.handlers.seed(model, rng_seed=...)``.

    Examples
    --------
    >>> import agvi, agvi.distributions as dist
    >>> from agvi import handlers
    >>> def model():
    ...     return agvi.sample("x", dist.Normal(0.0, 1.0))
    >>> x = handlers.seed(model, rng_seed=0)()
    >>> float(x) == float(handlers.seed(model, rng_seed=0)())
    True
    """
    _check_name(name, "agvi.sample")
    if not (hasattr(fn, "log_prob") and hasattr(fn, "batch_shape")):
        raise TypeError(f"agvi.sample: `fn` of site {name!r} must be a distribution (an "
                        f"agvi.distributions object), got {type(fn).__name__}")
    if not _STACK.get():
        if obs is not None:
            return obs
        if rng_key is None:
            raise _missing_key("the sample site", name)
        shape = tuple(sample_shape)
        return fn.rsample(rng_key, shape) if fn.has_rsample else fn.sample(rng_key, shape)
    msg = _site(name, "sample", fn,
                kwargs={"rng_key": rng_key, "sample_shape": tuple(sample_shape)},
                value=obs, is_observed=obs is not None, infer=infer)
    return apply_stack(msg)["value"]


def _param_init(init_value, constraint=None, event_dim=None, rng_key=None):
    if callable(init_value):
        if rng_key is None:
            raise _missing_key("the param site with a callable init_value", "<param>")
        return init_value(rng_key)
    return init_value


def param(name: str, init_value=None, constraint=constraints.real, event_dim=None):
    """A learnable parameter, in constrained space.

    Parameters
    ----------
    name : str
        The parameter's name.
    init_value : Array, callable or None
        The initial (constrained) value, or a function ``init_value(key) -> Array`` called with
        a key from :class:`~agvi.handlers.seed`. May be None when a handler (``substitute``)
        always provides the value.
    constraint : Constraint
        The set the value lives in (default ``constraints.real``); recorded in
        ``site["kwargs"]["constraint"]``.
    event_dim : int or None
        How many rightmost axes form one event; a subsampled plate indexes the axis
        ``plate.dim - event_dim`` of a param of full size (local parameters).

    Returns
    -------
    Array
        The value a handler gave the site (SVI substitutes the current value), else
        ``init_value`` (or ``init_value(key)``).

    Raises
    ------
    TypeError
        If ``name`` is not a str.
    RuntimeError
        If ``init_value`` is callable and there is no key.

    Notes
    -----
    As in NumPyro, a param site holds its *constrained* value. An optimiser (SVI) keeps the
    unconstrained value ``u`` where the constraint is not ``real`` and substitutes
    ``biject_to(constraint)(u)`` into the model (see :func:`agvi.handlers.util.constrain_fn`);
    ``param`` itself never transforms anything.
    """
    _check_name(name, "agvi.param")
    if not _STACK.get():
        if callable(init_value):
            raise _missing_key("the param site with a callable init_value", name)
        return init_value
    msg = _site(name, "param", _param_init, args=(init_value,),
                kwargs={"constraint": constraint, "event_dim": event_dim})
    return apply_stack(msg)["value"]


def _identity(x, *args, **kwargs):
    return x


def deterministic(name: str, value):
    """Record a deterministic function of other sites under ``name`` and return ``value``.

    Parameters
    ----------
    name : str
    value : Array

    Returns
    -------
    Array
        ``value``, or the value a handler (``substitute``) gave the site.
    """
    _check_name(name, "agvi.deterministic")
    if not _STACK.get():
        return value
    msg = _site(name, "deterministic", _identity, args=(value,), value=value)
    return apply_stack(msg)["value"]


def prng_key():
    """A fresh random key from the enclosing :class:`~agvi.handlers.seed`, or None outside one.

    Returns
    -------
    Array, shape (2,), or None
    """
    if not _STACK.get():
        return None
    msg = _site("_prng_key", "prng_key", lambda rng_key=None: rng_key,
                kwargs={"rng_key": None})
    return apply_stack(msg)["value"]


class Unit(Distribution):
    """A distribution over the empty event: its only value has shape ``batch_shape + (0,)`` and
    its ``log_prob`` is ``log_factor`` (used by :func:`factor`).

    Parameters
    ----------
    log_factor : float or Array, shape ``batch_shape``

    Notes
    -----
    As NumPyro's ``Unit``: ``log_prob(value)`` broadcasts ``log_factor`` to
    ``broadcast(value.shape[:-1], batch_shape)``; draws are empty arrays.
    """

    arg_constraints = {"log_factor": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, log_factor, *, validate_args=None):
        self.B = get_backend()
        lf = log_factor if self.B.is_array(log_factor) else self.B.asarray(log_factor)
        if not self.B.is_floating(lf):
            lf = self.B.astype(lf, self.B.float_dtype)
        self.log_factor = lf
        super().__init__(self.B.shape(lf), (0,), validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        return self.B.zeros(self.shape(sample_shape), dtype=self.B.dtype_of(self.log_factor))

    def sample(self, key, sample_shape=()):
        return self.rsample(key, sample_shape)

    def log_prob(self, value):
        B = self.B
        vshape = tuple(B.shape(value))[:-1] if B.is_array(value) else ()
        shape = _broadcast_shapes(vshape, tuple(self.batch_shape))
        lf = self.log_factor
        return lf if B.shape(lf) == shape else B.broadcast_to(lf, shape)


def factor(name: str, log_factor):
    """Add ``log_factor`` to the model's log joint density.

    Parameters
    ----------
    name : str
    log_factor : float or Array
        Summed into the log joint (after any plate broadcasting and scaling).

    Notes
    -----
    As in NumPyro: an observed sample site with a :class:`Unit` distribution whose
    ``log_prob`` is ``log_factor``, marked ``infer={"is_auxiliary": True}``.
    """
    _check_name(name, "agvi.factor")
    unit = Unit(log_factor)
    sample(name, unit, obs=unit.rsample(None), infer={"is_auxiliary": True})


def subsample(data, event_dim: int):
    """Index ``data`` with the subsample of every enclosing subsampled :class:`plate`.

    Parameters
    ----------
    data : Array
        Full-size data: the axis ``plate.dim - event_dim`` has the plate's ``size``.
    event_dim : int
        Number of rightmost axes of one datum (0 for scalars, 1 for vectors).

    Returns
    -------
    Array
        ``data`` with each subsampled plate's axis indexed by its subsample indices (unchanged
        outside plates or without subsampling).
    """
    if not _STACK.get():
        return data
    msg = _site("_subsample", "subsample", _identity, args=(data,),
                kwargs={"event_dim": int(event_dim)}, value=data)
    return apply_stack(msg)["value"]


class CondIndepStackFrame(NamedTuple):
    """One enclosing plate of a site.

    Attributes
    ----------
    name : str
    dim : int
        The (negative) batch axis the plate occupies.
    size : int
        The full size.
    subsample_size : int
        The size of the axis in this run (``size`` without subsampling).
    """

    name: str
    dim: int
    size: int
    subsample_size: int


def _subsample_indices(B, size, subsample_size, rng_key=None):
    if subsample_size >= size:
        return B.arange(size)
    if rng_key is None:
        raise _missing_key("the subsampled plate", "<plate>")
    return B.permutation(rng_key, size)[:subsample_size]


def _broadcast_shapes(a: tuple, b: tuple) -> tuple:
    """NumPy broadcasting of two shapes (pure Python: this runs once per site and plate)."""
    if len(a) < len(b):
        a, b = b, a
    out = list(a)
    off = len(a) - len(b)
    for i, n in enumerate(b):
        m = out[off + i]
        if m == 1:
            out[off + i] = n
        elif n != 1 and n != m:
            raise ValueError(f"shapes {a} and {b} do not broadcast")
    return tuple(out)


def _plate_batch_shape(frames) -> tuple:
    ndim = max(-f.dim for f in frames)
    shape = [1] * ndim
    for f in frames:
        shape[f.dim] = f.subsample_size
    return tuple(shape)


class plate(Messenger):
    """Conditionally independent batch axis: a context manager.

    Inside ``with agvi.plate(name, size):`` every sample site's distribution is broadcast
    (``expand``) so that its batch axis ``dim`` has the plate's size, and with subsampling its
    log-probability is scaled by ``size / subsample_size``.

    Parameters
    ----------
    name : str
        Recorded as a ``"plate"`` site (its value: the indices) and in every inner site's
        ``cond_indep_stack``.
    size : int
        The full size of the axis (> 0).
    subsample_size : int or None
        Draw this many indices without replacement (needs a key from
        :class:`~agvi.handlers.seed`); None or ``size`` means no subsampling.
    dim : int or None
        The negative batch axis; None takes the rightmost axis no enclosing plate uses
        (-1, then -2, ...).

    Yields
    ------
    Array of int, shape (subsample_size,)
        The indices of this run's subsample (``arange(size)`` without subsampling): index the
        data with them.

    Raises
    ------
    ValueError
        If ``size`` or ``subsample_size`` is not a positive int (``subsample_size <= size``),
        ``dim`` is not a negative int or is used by an enclosing plate, a plate with the same
        name is already active, or a site's batch shape does not broadcast with the plates.
    RuntimeError
        With subsampling and no key.

    Notes
    -----
    The indices are drawn once, when the plate is built, so the same plate object entered
    several times uses the same subsample. Inside plates, ``sample_shape`` becomes part of the
    expanded batch shape (as in NumPyro). Param sites and :func:`subsample` with an
    ``event_dim`` are indexed with the subsample along ``dim - event_dim`` when that axis has
    the full size.

    Examples
    --------
    >>> import agvi, agvi.distributions as dist
    >>> from agvi import handlers
    >>> def model():
    ...     with agvi.plate("data", 10, subsample_size=4) as idx:
    ...         return idx, agvi.sample("x", dist.Normal(0.0, 1.0))
    >>> idx, x = handlers.seed(model, rng_seed=0)()
    >>> idx.shape, x.shape
    ((4,), (4,))
    """

    def __init__(self, name: str, size: int, subsample_size: int | None = None,
                 dim: int | None = None):
        _check_name(name, "agvi.plate")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"agvi.plate {name!r}: `size` must be a positive int, got {size!r}")
        if subsample_size is None:
            subsample_size = size
        if (isinstance(subsample_size, bool) or not isinstance(subsample_size, (int, np.integer))
                or not 1 <= subsample_size <= size):
            raise ValueError(f"agvi.plate {name!r}: `subsample_size` must be an int in "
                             f"[1, size={size}], got {subsample_size!r}")
        self.name = name
        self.size = int(size)
        self.subsample_size = int(subsample_size)
        active = [h for h in _STACK.get() if isinstance(h, plate)]
        for p in active:
            if p.name == name:
                raise ValueError(f"agvi.plate {name!r}: a plate with this name is already active")
        used = {p.dim for p in active}
        if dim is None:
            dim = -1
            while dim in used:
                dim -= 1
        elif isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim >= 0:
            raise ValueError(f"agvi.plate {name!r}: `dim` must be a negative int (a batch axis "
                             f"counted from the right), got {dim!r}")
        elif dim in used:
            taken = [p.name for p in active if p.dim == dim][0]
            raise ValueError(f"agvi.plate {name!r}: dim={dim} is already used by the enclosing "
                             f"plate {taken!r}; choose another dim or leave it None")
        self.dim = int(dim)
        self._frame = CondIndepStackFrame(self.name, self.dim, self.size, self.subsample_size)
        self._B = get_backend()
        msg = _site(name, "plate", functools.partial(_subsample_indices, self._B),
                    args=(self.size, self.subsample_size), kwargs={"rng_key": None})
        if _STACK.get():
            self._indices = apply_stack(msg)["value"]
        else:
            _default_value(msg)
            self._indices = msg["value"]
        super().__init__(None)

    @property
    def indices(self):
        """This run's subsample indices, Array of int of shape (subsample_size,)."""
        return self._indices

    def __enter__(self):
        super().__enter__()
        return self._indices

    def process_message(self, msg):
        kind = msg["type"]
        if kind not in ("sample", "param", "deterministic"):
            return
        # outermost plate first (the outer plates process the site after the inner ones)
        msg["cond_indep_stack"].insert(0, self._frame)
        if kind != "sample":
            return
        fn = msg["fn"]
        sample_shape = tuple(msg["kwargs"].get("sample_shape", ()))
        dist_batch = sample_shape + tuple(fn.batch_shape)
        plates = _plate_batch_shape(msg["cond_indep_stack"])
        try:
            target = _broadcast_shapes(plates, dist_batch)
        except ValueError:
            frames = ", ".join(f"{f.name!r} (dim={f.dim}, size={f.subsample_size})"
                               for f in msg["cond_indep_stack"])
            raise ValueError(
                f"sample site {msg['name']!r}: its batch shape {dist_batch} (sample_shape + "
                f"the distribution's batch_shape) does not broadcast with the enclosing plates "
                f"{frames}, which need the shape {plates} on the right; give the parameters "
                f"the plate sizes (or size 1) on those axes") from None
        if target != tuple(fn.batch_shape):
            msg["fn"] = fn.expand(target)
        if sample_shape:
            msg["kwargs"]["sample_shape"] = ()
        if self.subsample_size < self.size:
            ratio = self.size / self.subsample_size
            msg["scale"] = ratio if msg["scale"] is None else msg["scale"] * ratio

    def postprocess_message(self, msg):
        if msg["type"] not in ("param", "subsample") or self.subsample_size >= self.size:
            return
        event_dim = msg["kwargs"].get("event_dim")
        value = msg["value"]
        if event_dim is None or value is None:
            return
        axis = self.dim - int(event_dim)
        shape = self._B.shape(value)
        if len(shape) >= -axis and shape[axis] != 1:
            if shape[axis] != self.size:
                raise ValueError(
                    f"{msg['type']} site {msg['name']!r}: axis {axis} has size {shape[axis]}, "
                    f"but the enclosing plate {self.name!r} has size {self.size}; give it the "
                    "full size (it is subsampled here) or size 1")
            msg["value"] = self._B.take(value, self._indices, axis=axis)
