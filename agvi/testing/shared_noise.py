"""Shared noise: one source of random numbers for every backend, so algorithms agree draw for draw.

Each backend has its own generator (NumPy's Philox, a ``torch.Generator``, ``jax.random``), so the
same key gives different numbers on different backends. :func:`SharedNoise` wraps a backend so
that its random primitives are computed on the host by :mod:`agvi.backends.host_random` (the
NumPy backend's own generator) and converted to the wrapped backend's arrays, dtype and device.
Every derived draw of :class:`~agvi.backends.base.Backend` (exponential, Gumbel, Bernoulli,
categorical, beta, Dirichlet, multivariate normal) is built from those primitives, so an algorithm
run under ``use_backend(SharedNoise(B))`` sees the same noise on every backend ``B`` and its
results can be compared to the NumPy oracle at float64 round-off.

>>> import numpy as np, agvi
>>> from agvi.backends import make_backend
>>> from agvi.testing.shared_noise import SharedNoise
>>> B = make_backend("numpy")
>>> S = SharedNoise(B)
>>> bool(np.array_equal(S.normal(S.key(0), (3,)), B.normal(B.key(0), (3,))))
True

Design
------
``SharedNoise(backend)`` returns an instance of a subclass created once per backend class,
``SharedNoise[<BackendClass>]``, that inherits from :class:`_SharedNoiseMixin` and from the wrapped
backend's class, and shares the wrapped instance's attributes (its ``__dict__`` is copied). So it
*is* that backend (``isinstance`` holds, ``name``, ``precision``, ``device``, every array,
autodiff, control-flow and transform method are the wrapped backend's own), except for:

- the random primitives ``key``, ``split``, ``fold_in``, ``normal``, ``uniform``, ``gamma``,
  ``poisson``, ``binomial``, ``randint``, ``permutation``: host draws, passed through the wrapped
  backend's :meth:`~agvi.backends.base.Backend.pure_callback` (so they also run under JAX ``jit``
  and ``vmap``, where keys are traced ``uint32`` arrays);
- ``key_data`` and the derived draws, which are forced to the generic implementations of
  :class:`~agvi.backends.base.Backend` (a backend may override them natively; that would
  bypass the shared primitives).

Keys have the type of the wrapped backend's own keys: NumPy ``uint32`` arrays where the backend's
``key`` returns NumPy arrays (numpy and torch), else ``uint32`` arrays of the backend (JAX). They
hold exactly the values :mod:`agvi.backends.host_random` gives, so ``key_data`` agrees everywhere.

Gamma draws stay reparameterised: the value is the host draw and the derivative with respect to
the concentration is implicit reparameterisation, ``dz/dalpha`` computed on the host by
:func:`agvi.backends._gamma_grad.standard_gamma_grad` inside a
:meth:`~agvi.backends.base.Backend.custom_vjp`, so gamma (and beta, Dirichlet) gradients agree
across backends too.

Draws are slow (a host round trip per call): this is a test tool, not a production generator.

References
----------
Figurnov, Mohamed and Mnih (2018), "Implicit reparameterization gradients", eq. 6.
Salmon et al. (2011), "Parallel random numbers: as easy as 1, 2, 3" (Philox).
"""

from __future__ import annotations

import numpy as np

from ..backends import host_random
from ..backends.base import RANDOM_PRIMITIVES as _RANDOM_PRIMITIVES
from ..backends.base import Backend

__all__ = ["SharedNoise", "is_shared_noise", "RANDOM_PRIMITIVES", "DERIVED_DRAWS"]

#: The random methods computed on the host: the backend contract's primitives.
RANDOM_PRIMITIVES = _RANDOM_PRIMITIVES
#: Draws derived from the primitives; forced to :class:`Backend`'s generic implementations.
DERIVED_DRAWS = ("exponential", "gumbel", "bernoulli", "categorical", "beta", "dirichlet",
                 "multivariate_normal")

_CLASSES: dict[type, type] = {}
# id(wrapped) -> shared-noise instance; the instance holds the wrapped backend, so ids stay valid
_INSTANCES: dict[int, Backend] = {}


def _dtype_name(dtype) -> str:
    """Portable name (``"float64"``, ``"int32"``, ...) of a NumPy, JAX or torch dtype."""
    try:
        return np.dtype(dtype).name
    except TypeError:  # torch dtypes: "torch.float64"
        return str(dtype).rsplit(".", 1)[-1]


def _is_host(x) -> bool:
    return isinstance(x, (np.ndarray, np.generic, int, float, bool))


def _as_python_int(x) -> int:
    return int(np.asarray(x).reshape(()))


class _SharedNoiseMixin:
    """Random primitives drawn on the host (see the module docstring)."""

    #: The backend this one wraps.
    wrapped: Backend
    # keys are NumPy arrays (True) or arrays of the wrapped backend (False)
    _host_keys: bool

    def __repr__(self):
        return f"SharedNoise({self.wrapped!r})"

    def __reduce__(self):
        # the subclass is made at run time and cannot be pickled by name: rebuild it instead
        return SharedNoise, (self.wrapped,)

    # -------------------------------------------------------------- host plumbing
    def _host_call(self, fn, spec, *args):
        """``fn(*numpy_args)`` on the host; result as Arrays of this backend (spec: pytree of
        ``(shape, dtype_name)``)."""
        if all(_is_host(a) for a in args):
            # concrete NumPy inputs: no callback needed (and NumPy-keyed backends never trace keys)
            out = fn(*[np.asarray(a) for a in args])
            return self.tree_map(
                lambda o, sd: self.asarray(np.asarray(o, dtype=sd[1]), dtype=self.dtype(sd[1])),
                out, spec, is_leaf=_is_spec)
        return self.pure_callback(fn, spec, *args)

    def _key_out(self, fn, shape, *args):
        """A key (or stack of keys) computed on the host by ``fn(*numpy_args)``."""
        if self._host_keys and all(_is_host(a) for a in args):
            return np.asarray(fn(*[np.asarray(a) for a in args]), dtype=np.uint32)
        return self._host_call(fn, (tuple(shape), "uint32"), *args)

    # -------------------------------------------------------------- keys
    def key(self, seed):
        """A key from a non-negative int ``seed``: uint32, shape (2,) (the NumPy backend's)."""
        k = host_random.key(seed)
        return k if self._host_keys else self.asarray(k, dtype=self.dtype("uint32"))

    def split(self, key, num=2):
        """``num`` keys from ``key``: uint32, shape (num, 2), as the NumPy backend."""
        num = int(num)
        if num < 1:
            raise ValueError(f"num must be a positive int, got {num}")
        return self._key_out(lambda k: host_random.split(k, num), (num, 2), key)

    def fold_in(self, key, data):
        """A key from ``key`` and the non-negative integer ``data`` (an int or a possibly traced
        integer scalar): uint32, shape (2,)."""
        if isinstance(data, (int, np.integer)):
            d = int(data)
            return self._key_out(lambda k: host_random.fold_in(k, d), (2,), key)
        return self._key_out(lambda k, d: host_random.fold_in(k, _as_python_int(d)), (2,),
                             key, data)

    def key_data(self, key):
        """The key as a NumPy uint32 array of shape (..., 2)."""
        return Backend.key_data(self, key)

    # -------------------------------------------------------------- continuous draws
    def normal(self, key, shape=(), dtype=None):
        """Standard normal draws, shape ``shape``: the NumPy backend's, in ``dtype``."""
        shape = tuple(int(s) for s in shape)
        name = _dtype_name(dtype if dtype is not None else self.float_dtype)
        return self._host_call(
            lambda k: host_random.normal(k, shape, name),
            (shape, name), key)

    def uniform(self, key, shape=(), dtype=None, minval=0.0, maxval=1.0):
        """Uniform draws on [minval, maxval), shape ``shape``: the NumPy backend's."""
        shape = tuple(int(s) for s in shape)
        name = _dtype_name(dtype if dtype is not None else self.float_dtype)
        if isinstance(minval, (int, float)) and isinstance(maxval, (int, float)):
            lo, hi = minval, maxval

            def draw(k):
                return host_random.uniform(k, shape, name, lo, hi)

            return self._host_call(draw, (shape, name), key)

        def draw_arr(k, lo, hi):
            return host_random.uniform(k, shape, name, lo, hi)

        return self._host_call(draw_arr, (shape, name), key,
                               self.stop_gradient(self.asarray(minval)),
                               self.stop_gradient(self.asarray(maxval)))

    def gamma(self, key, alpha, shape=None):
        """Standard Gamma(alpha, 1) draws (the NumPy backend's), reparameterised in ``alpha``."""
        alpha = self.asarray(alpha)
        shape = self.shape(alpha) if shape is None else tuple(int(s) for s in shape)
        name = _dtype_name(self.dtype_of(alpha))

        def draw(k, a):
            return host_random.standard_gamma(k, a, shape, name)

        z = self._host_call(draw, (shape, name), key, self.stop_gradient(alpha))
        return self._gamma_reparam()(alpha, z)

    def _gamma_reparam(self):
        """``f(alpha, z) = z`` whose VJP to ``alpha`` is ``g * dz/dalpha`` (implicit
        reparameterisation), built once per instance."""
        fn = self.__dict__.get("_gamma_reparam_fn")
        if fn is not None:
            return fn

        def fun(alpha, z):
            return z

        def fwd(alpha, z):
            return z, (alpha, z)

        def bwd(res, g):
            alpha, z = res
            zshape = self.shape(z)
            name = _dtype_name(self.dtype_of(z))

            def dz_dalpha(a, zz):
                from ..backends._gamma_grad import standard_gamma_grad
                a = np.broadcast_to(a, zshape).astype(np.float64)
                return standard_gamma_grad(a, zz.astype(np.float64)).astype(name)

            dz = self._host_call(dz_dalpha, (zshape, name), alpha, z)
            return _unbroadcast(self, g * dz, self.shape(alpha)), self.zeros_like(z)

        fn = self.custom_vjp(fun, fwd, bwd)
        self.__dict__["_gamma_reparam_fn"] = fn
        return fn

    # -------------------------------------------------------------- discrete draws
    def poisson(self, key, rate, shape=None):
        """Poisson draws with mean ``rate`` (the NumPy backend's), as floats."""
        rate = self.stop_gradient(self.asarray(rate))
        shape = self.shape(rate) if shape is None else tuple(int(s) for s in shape)
        name = _dtype_name(self.float_dtype)
        return self._host_call(
            lambda k, r: host_random.poisson(k, r, shape, name),
            (shape, name), key, rate)

    def binomial(self, key, total_count, probs, shape=None):
        """Binomial draws (the NumPy backend's), as floats."""
        n = self.stop_gradient(self.asarray(total_count))
        p = self.stop_gradient(self.asarray(probs))
        shape = (self.broadcast_shapes(self.shape(n), self.shape(p)) if shape is None
                 else tuple(int(s) for s in shape))
        name = _dtype_name(self.float_dtype)

        def draw(k, nn, pp):
            return host_random.binomial(k, nn, pp, shape, name)

        return self._host_call(draw, (shape, name), key, n, p)

    def randint(self, key, shape, minval, maxval):
        """Uniform integers in [minval, maxval), shape ``shape``, :attr:`int_dtype` (the NumPy
        backend's values)."""
        shape = tuple(int(s) for s in shape)
        name = _dtype_name(self.int_dtype)
        if isinstance(minval, (int, np.integer)) and isinstance(maxval, (int, np.integer)):
            lo, hi = int(minval), int(maxval)
            return self._host_call(
                lambda k: host_random.randint(k, shape, lo, hi, name),
                (shape, name), key)
        return self._host_call(
            lambda k, lo, hi: host_random.randint(
                k, shape, _as_python_int(lo), _as_python_int(hi), name),
            (shape, name), key, self.asarray(minval), self.asarray(maxval))

    def permutation(self, key, n):
        """A random permutation of ``range(n)`` (the NumPy backend's), :attr:`int_dtype`."""
        n = int(n)
        name = _dtype_name(self.int_dtype)
        return self._host_call(
            lambda k: host_random.permutation(k, n, name), ((n,), name), key)

    # -------------------------------------------------------------- derived draws
    exponential = Backend.exponential
    gumbel = Backend.gumbel
    bernoulli = Backend.bernoulli
    categorical = Backend.categorical
    beta = Backend.beta
    dirichlet = Backend.dirichlet
    multivariate_normal = Backend.multivariate_normal


def _is_spec(x):
    return (isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple)
            and isinstance(x[1], str))


def _unbroadcast(B, g, shape):
    """Sum the Array ``g`` over the axes that broadcasting added or stretched to reach its shape
    from ``shape``."""
    extra = B.ndim(g) - len(shape)
    if extra > 0:
        g = B.sum(g, axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and B.shape(g)[i] != 1)
    if axes:
        g = B.sum(g, axis=axes, keepdims=True)
    return g


def _shared_class(cls: type) -> type:
    sub = _CLASSES.get(cls)
    if sub is None:
        sub = type(f"SharedNoise[{cls.__name__}]", (_SharedNoiseMixin, cls),
                   {"__doc__": f"{cls.__name__} fed shared host noise (agvi.testing.SharedNoise)."})
        _CLASSES[cls] = sub
    return sub


def is_shared_noise(backend) -> bool:
    """Whether ``backend`` was made by :func:`SharedNoise`."""
    return isinstance(backend, _SharedNoiseMixin)


def SharedNoise(backend: Backend) -> Backend:
    """``backend`` with its random primitives drawn from the NumPy backend's host generator.

    Parameters
    ----------
    backend : Backend
        Any backend object (e.g. from :func:`agvi.backends.make_backend`). A backend that is
        already shared-noise is returned as is.

    Returns
    -------
    Backend
        An instance of a subclass of ``type(backend)`` with the same precision, device and
        methods, except that ``key``, ``split``, ``fold_in``, ``normal``, ``uniform``, ``gamma``,
        ``poisson``, ``binomial``, ``randint`` and ``permutation`` return exactly the NumPy
        backend's values (converted to this backend's arrays and dtypes), and every derived draw
        is built from them. One object is made per wrapped backend object (cached), so it can be
        passed to :func:`agvi.use_backend` repeatedly without retracing.

    Raises
    ------
    TypeError
        If ``backend`` is not a :class:`~agvi.backends.base.Backend`.

    Examples
    --------
    >>> import agvi
    >>> from agvi.backends import make_backend
    >>> from agvi.testing.shared_noise import SharedNoise
    >>> with agvi.use_backend(SharedNoise(make_backend("numpy"))) as B:
    ...     B.split(B.key(1)).shape
    (2, 2)
    """
    if not isinstance(backend, Backend):
        raise TypeError(f"backend must be a Backend object (e.g. from agvi.backends."
                        f"make_backend), got {type(backend).__name__}")
    if isinstance(backend, _SharedNoiseMixin):
        return backend
    cached = _INSTANCES.get(id(backend))
    if cached is not None:
        return cached
    obj = object.__new__(_shared_class(type(backend)))
    state = dict(vars(backend))
    # a backend may bind methods as instance attributes; those would shadow the shared draws
    for name in RANDOM_PRIMITIVES + DERIVED_DRAWS + ("key_data",):
        state.pop(name, None)
    state.pop("_gamma_reparam_fn", None)
    obj.__dict__.update(state)
    obj.wrapped = backend
    native_key = backend.key(0)
    obj._host_keys = isinstance(native_key, np.ndarray)
    _INSTANCES[id(backend)] = obj
    return obj

