"""JAX arrays, transformations and compiler: the backend that compiles whole algorithms.

Every contract entry maps to a ``jax.numpy`` / ``jax.scipy`` / ``jax.lax`` / ``jax.random``
function or transformation, bound as directly as its signature allows, so that inside
:func:`jax.jit` the backend adds no operation of its own: ``B.grad(f)`` *is* ``jax.grad(f)``,
``B.cond`` *is* ``lax.cond``, and a compiled program written against the backend is the program
one would write by hand.

Precision. ``precision="float64"`` turns on ``jax_enable_x64`` when the backend is constructed.
That flag is **process-wide**: from then on every JAX computation in the process may use 64-bit
types. ``precision=None`` takes float64 only if the flag is already on, else float32, and
``precision="float32"`` never turns the flag off (other code may rely on it); it creates float32
arrays explicitly instead. The integer dtype is int64 under x64 and int32 without it.

Devices. ``device=None`` leaves placement to JAX (its default device, or
:func:`jax.default_device`). ``"cpu"``, ``"cpu:N"``, ``"cuda"``, ``"cuda:N"``, ``"gpu"``,
``"gpu:N"`` (and ``"tpu[:N]"``) pick a device, and every array the backend creates (``asarray``,
``zeros``, ..., keys and so random draws) is placed on it. Device names returned by
:meth:`JaxBackend.device_of` and :meth:`JaxBackend.available_devices` are ``"cpu"`` for the
first host device (``"cpu:N"`` for others, where XLA was asked for several), ``"cuda:N"`` for
GPUs (JAX's platform ``"gpu"``, numbered as in ``jax.devices("gpu")``), ``"tpu:N"`` for TPUs;
each is accepted back by ``device=`` and :meth:`JaxBackend.to_device`.

Random keys are raw ``uint32`` arrays of shape (2,) (the classic ``jax.random.PRNGKey`` layout)
and always give the numbers of ``jax.random``'s default ``threefry2x32`` scheme, whatever
``jax_default_prng_impl`` or ``jax_threefry_partitionable`` say, so that the same key gives the
same numbers everywhere. The hash is agvi's straight-line copy (:mod:`._jax_threefry`): JAX's CPU
lowering is a loop whose dispatch cost about a tenth of a small model's NUTS transition.

Pytrees are handled by optree (the base class); NamedTuples, tuples, lists, dicts and None are
pytrees of both optree and JAX, which is all agvi's states use. A class registered with optree
only is not a JAX pytree and cannot cross ``jit``/``vmap``/``lax`` boundaries.

References
----------
Bradbury et al. (2018), "JAX: composable transformations of Python+NumPy programs".
Salmon et al. (2011), "Parallel random numbers: as easy as 1, 2, 3" (threefry).
Figurnov, Mohamed and Mnih (2018), "Implicit reparameterization gradients" (``jax.random.gamma``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import jax.scipy.special as jsp
import numpy as np
from jax import lax

from . import host_random
from ._jax_threefry import THREEFRY_UNROLLED, threefry_fold_in, threefry_split
from .base import STATIC_SCALARS, Backend, FInfo, _is_shape_dtype

__all__ = ["JaxBackend"]

_DTYPE_NAMES = ("float32", "float64", "int32", "int64", "uint32", "bool")
_KEY_IMPL = THREEFRY_UNROLLED   # jax.random's threefry2x32 numbers, hash unrolled
_Tracer = jax.core.Tracer
_GPU_NAMES = ("cuda", "gpu")


# --- x * log(y) with the contract's gradients at the edges ----------------------------------
# jax.scipy.special.xlogy differentiates to -inf/nan at x == y == 0; the contract (and the NumPy
# oracle) says: d/dx = log(y), 0 where x == y == 0; d/dy = x / y, 0 where x == 0. Likewise for
# xlog1py with 1 + y in place of y.
@jax.custom_jvp
def _xlogy(x, y):
    return jsp.xlogy(x, y)


@_xlogy.defjvp
def _xlogy_jvp(primals, tangents):
    x, y = primals
    x_dot, y_dot = tangents
    x_zero = x == 0
    both = x_zero & (y == 0)
    dx = jnp.where(both, 0.0, jnp.log(jnp.where(both, jnp.ones_like(y), y)))
    dy = jnp.where(x_zero, 0.0, x / jnp.where(x_zero, jnp.ones_like(y), y))
    return _xlogy(x, y), dx * x_dot + dy * y_dot


@jax.custom_jvp
def _xlog1py(x, y):
    return jsp.xlog1py(x, y)


@_xlog1py.defjvp
def _xlog1py_jvp(primals, tangents):
    x, y = primals
    x_dot, y_dot = tangents
    x_zero = x == 0
    both = x_zero & (y == -1)
    dx = jnp.where(both, 0.0, jnp.log1p(jnp.where(both, jnp.zeros_like(y), y)))
    dy = jnp.where(x_zero, 0.0, x / (1.0 + jnp.where(x_zero, jnp.zeros_like(y), y)))
    return _xlog1py(x, y), dx * x_dot + dy * y_dot


def _device_name(device) -> str:
    """agvi's name of a JAX device: "cpu" (first host device), "cpu:N", "cuda:N", "tpu:N"."""
    platform = device.platform
    try:
        index = jax.devices(platform).index(device)
    except (RuntimeError, ValueError):
        index = device.id
    if platform == "cpu":
        return "cpu" if index == 0 else f"cpu:{index}"
    if platform in _GPU_NAMES or platform == "rocm":
        return f"cuda:{index}"
    return f"{platform}:{index}"


@jax.custom_jvp
def _softplus(x):
    """``max(x, 0) + log1p(exp(-|x|))``: exact, and about 3x cheaper forward and backward than
    ``jax.nn.softplus`` (``logaddexp`` with its infinity handling), which dominated vectorised
    logistic likelihoods. The derivative is ``expit(x)`` (the formula's own is 0 at 0)."""
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@_softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    e = jnp.exp(-jnp.abs(x))          # shared by the value and expit(x)
    r = 1.0 / (1.0 + e)
    return jnp.maximum(x, 0.0) + jnp.log1p(e), jnp.where(x >= 0, r, e * r) * t


class JaxBackend(Backend):
    """JAX backend (name ``"jax"``): native ``jit``, ``vmap``, forward mode and ``lax`` control
    flow.

    Parameters
    ----------
    precision : {"float32", "float64"} or None
        ``None``: float64 if ``jax_enable_x64`` is already on, else float32. ``"float64"`` turns
        ``jax_enable_x64`` on, **for the whole process** (a JAX global flag), at construction.
        ``"float32"`` leaves the flag as it is and creates float32 arrays explicitly.
    device : str, jax.Device or None
        ``None`` leaves placement to JAX. ``"cpu"``, ``"cpu:N"``, ``"cuda"``, ``"cuda:N"``,
        ``"gpu"``, ``"gpu:N"``, ``"tpu"``, ``"tpu:N"`` or a ``jax.Device``: every array the
        backend creates, random keys included, is placed there.

    Raises
    ------
    ValueError
        If ``precision`` is not one of the above, or ``device`` is not a known device name or is
        absent on this machine (the message lists :meth:`available_devices`).

    Notes
    -----
    The device is resolved before x64 is turned on, so a construction that fails changes no
    JAX setting. Elementwise functions are ``jax.numpy``'s own functions, bound as instance
    attributes (no wrapper frame).
    """

    name = "jax"
    install_extra = "jax"
    has_jit = True
    has_vmap = True
    supports_forward_mode = True
    compiles_control_flow = True
    compiles_pure = True

    def __init__(self, precision=None, device=None):
        self._check_precision(precision)
        jax_device = self._resolve_device(device)
        if precision == "float64" and not jax.config.jax_enable_x64:
            # Process-wide by JAX's design; documented in the class and module docstrings.
            jax.config.update("jax_enable_x64", True)
        super().__init__(precision=precision, device=None)
        self._device = jax_device
        self.device = None if jax_device is None else _device_name(jax_device)
        self._float = np.dtype(self.precision)
        # Fixed for the backend's life, so loop carries never change dtype under it.
        self._int = np.dtype("int64" if jax.config.jax_enable_x64 else "int32")
        # Honour a user's global matmul precision; otherwise ask for full float32 accuracy on
        # GPUs (JAX's default there may use TF32), as torch does by default.
        self._matmul_precision = (None if jax.config.jax_default_matmul_precision
                                  else lax.Precision.HIGHEST)
        self._bind_elementwise(jnp)

    def _default_precision(self) -> str:
        return "float64" if jax.config.jax_enable_x64 else "float32"

    # ------------------------------------------------------------------ devices
    def _resolve_device(self, device):
        """The ``jax.Device`` named by ``device`` (None stays None)."""
        if device is None or isinstance(device, jax.Device):
            return device
        if not isinstance(device, str):
            raise ValueError(f"device must be a string such as 'cpu' or 'cuda:0', a jax.Device "
                             f"or None, got {device!r}")
        kind, _, num = device.strip().lower().partition(":")
        if kind not in ("cpu", "tpu") + _GPU_NAMES or (num and not num.isdigit()):
            raise ValueError(f"device {device!r} is not a device name; expected 'cpu', "
                             f"'cuda', 'cuda:N', 'gpu:N' or 'tpu:N' (available here: "
                             f"{self.available_devices()})")
        platform = "gpu" if kind in _GPU_NAMES else kind
        index = int(num) if num else 0
        try:
            return jax.devices(platform)[index]
        except (RuntimeError, IndexError):
            hint = (" (a CUDA device needs a CUDA-enabled jaxlib, e.g. `pip install jax[cuda12]`)"
                    if platform == "gpu" else "")
            raise ValueError(
                f"device {device!r} is not available to JAX on this machine; available devices: "
                f"{self.available_devices()}{hint}") from None

    def available_devices(self) -> list:
        """Names of the devices JAX can use here.

        Returns
        -------
        list of str
            ``"cpu"`` (then ``"cpu:1"``, ... where XLA was asked for several host devices),
            then ``"cuda:0"``, ``"cuda:1"``, ... for GPUs and ``"tpu:N"`` for TPUs.
        """
        names = []
        for platform in ("cpu", "gpu", "tpu"):
            try:
                devices = jax.devices(platform)
            except RuntimeError:
                continue
            names.extend(_device_name(d) for d in devices)
        return names

    def device_of(self, x):
        """The device name of ``x`` (see :meth:`available_devices`).

        A tracer (inside ``jit``/``vmap``) has no concrete device: the backend's device, else
        JAX's default device, is reported. NumPy arrays and Python scalars are on ``"cpu"``.
        """
        if isinstance(x, _Tracer):
            return self.device or _device_name(jax.devices()[0])
        if not isinstance(x, jax.Array):
            return "cpu"
        devices = x.devices()
        return _device_name(min(devices, key=lambda d: d.id))

    def to_device(self, x, device):
        """``x`` moved to ``device`` (a name as accepted by ``device=``; None: JAX's default).

        Raises
        ------
        ValueError
            If ``device`` is unknown or absent here.
        """
        target = self._resolve_device(device)
        return jax.device_put(x, target if target is not None else jax.devices()[0])

    # ------------------------------------------------------------------ dtypes
    @property
    def xp(self):
        return jnp

    @property
    def float_dtype(self):
        return self._float

    @property
    def int_dtype(self):
        return self._int

    def dtype(self, name):
        if str(name) not in _DTYPE_NAMES:
            raise ValueError(f"unknown dtype name {name!r}; expected one of {list(_DTYPE_NAMES)}")
        return np.dtype(str(name))

    def astype(self, x, dtype):
        if isinstance(x, jax.Array):
            return x.astype(dtype)
        return self.asarray(x, dtype=dtype)

    def is_floating(self, x) -> bool:
        return bool(jnp.issubdtype(x.dtype, jnp.floating))

    def finfo(self, dtype=None) -> FInfo:
        f = jnp.finfo(dtype if dtype is not None else self._float)
        return FInfo(float(f.eps), float(f.tiny), float(f.max), float(f.min), int(f.bits))

    # ------------------------------------------------------------------ arrays
    def is_array(self, x) -> bool:
        return isinstance(x, jax.Array)  # tracers included

    def asarray(self, x, dtype=None):
        if isinstance(x, jax.Array):
            if dtype is not None and x.dtype != dtype:
                x = x.astype(dtype)
            if self._device is not None and not isinstance(x, _Tracer):
                x = jax.device_put(x, self._device)  # no-op when already there
            return x
        self._check_foreign(x)
        if isinstance(x, (list, tuple)) and any(
                isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(x)):
            arr = jnp.asarray(x)  # may hold tracers: must not go through the host
            if dtype is None:
                dtype = self._default_dtype_for(arr.dtype)
            return jnp.asarray(arr, dtype=dtype, device=self._device)
        arr = np.asarray(x)
        if dtype is None:
            dtype = self._default_dtype_for(arr.dtype)
        else:
            dtype = np.dtype(dtype)
        if arr.dtype != dtype:
            if (dtype == np.int32 and arr.dtype.kind in "iu" and arr.size
                    and (arr.max() > 2**31 - 1 or arr.min() < -(2**31))):
                # NumPy's cast would wrap silently; int32 is JAX's integer type without x64.
                raise ValueError("x holds integers outside the int32 range, which JAX without "
                                 "jax_enable_x64 cannot represent; use precision='float64' "
                                 "(which turns x64 on)")
            arr = arr.astype(dtype)
        return jnp.asarray(arr, device=self._device)

    def _default_dtype_for(self, dtype):
        kind = np.dtype(dtype).kind
        if kind == "f":
            return self._float
        if kind in "iu" and dtype != np.uint32:
            return self._int
        return dtype

    def to_numpy(self, x):
        # device_get returns a read-only view on the host; the contract promises a copy.
        return np.array(jax.device_get(x), copy=True)

    shape = staticmethod(jnp.shape)
    ndim = staticmethod(jnp.ndim)
    size = staticmethod(jnp.size)

    # creation: dtype explicit (x64 may be on under float32), device where one was given
    def zeros(self, shape, dtype=None):
        return jnp.zeros(shape, dtype=self._float if dtype is None else dtype,
                         device=self._device)

    def ones(self, shape, dtype=None):
        return jnp.ones(shape, dtype=self._float if dtype is None else dtype,
                        device=self._device)

    def full(self, shape, fill_value, dtype=None):
        return jnp.full(shape, fill_value, dtype=self._float if dtype is None else dtype,
                        device=self._device)

    def eye(self, n, dtype=None):
        return jnp.eye(n, dtype=self._float if dtype is None else dtype, device=self._device)

    def arange(self, start, stop=None, step=1, dtype=None):
        if stop is None:
            start, stop = 0, start
        return jnp.arange(start, stop, step, dtype=self._int if dtype is None else dtype,
                          device=self._device)

    def linspace(self, start, stop, num, dtype=None):
        return jnp.linspace(start, stop, num, dtype=self._float if dtype is None else dtype,
                            device=self._device)

    def argsort(self, x, axis=-1):
        return jnp.argsort(x, axis=axis, stable=True)

    # linear algebra ------------------------------------------------------------------------------
    def matmul(self, a, b):
        return jnp.matmul(a, b, precision=self._matmul_precision)

    def einsum(self, subscripts, *operands):
        return jnp.einsum(subscripts, *operands, precision=self._matmul_precision)

    def solve_triangular(self, a, b, lower=True, trans=False):
        # lax's triangular solve wants equal batch dimensions: broadcast them first.
        batch = jnp.broadcast_shapes(jnp.shape(a)[:-2], jnp.shape(b)[:-2])
        a = jnp.broadcast_to(a, batch + jnp.shape(a)[-2:])
        b = jnp.broadcast_to(b, batch + jnp.shape(b)[-2:])
        return jsl.solve_triangular(a, b, trans=1 if trans else 0, lower=lower)

    # functional updates --------------------------------------------------------------------------
    def index_update(self, x, index, value):
        if not isinstance(x, jax.Array):
            x = self.asarray(x)
        return x.at[index].set(value)

    def index_add(self, x, index, value):
        if not isinstance(x, jax.Array):
            x = self.asarray(x)
        return x.at[index].add(value)

    def dynamic_slice(self, x, start, size, axis=0):
        if isinstance(start, (int, np.integer)):
            start = max(int(start), 0)  # clamp like the traced case below (and NumPy's)
        # allow_negative_indices=False: a traced negative start clamps to 0 instead of
        # counting from the end.
        return lax.dynamic_slice_in_dim(x, start, size, axis=axis % jnp.ndim(x),
                                        allow_negative_indices=False)

    def dynamic_index(self, x, index, axis=0):
        return lax.dynamic_index_in_dim(x, index, axis=axis % jnp.ndim(x), keepdims=False)

    def dynamic_update_index(self, x, index, value, axis=0):
        axis = axis % jnp.ndim(x)
        shape = jnp.shape(x)
        value = jnp.broadcast_to(jnp.asarray(value, dtype=x.dtype), shape[:axis] + shape[axis + 1:])
        return lax.dynamic_update_index_in_dim(x, value, index, axis)

    # bit operations ------------------------------------------------------------------------------
    bitwise_and = staticmethod(jnp.bitwise_and)
    bitwise_or = staticmethod(jnp.bitwise_or)
    bitwise_xor = staticmethod(jnp.bitwise_xor)
    left_shift = staticmethod(jnp.left_shift)
    right_shift = staticmethod(jnp.right_shift)
    popcount = staticmethod(lax.population_count)

    # special functions (jax.scipy.special / jax.nn, all differentiable) --------------------------
    gammaln = staticmethod(jsp.gammaln)
    digamma = staticmethod(jsp.digamma)
    polygamma = staticmethod(jsp.polygamma)
    erf = staticmethod(jsp.erf)
    erfc = staticmethod(jsp.erfc)
    erfinv = staticmethod(jsp.erfinv)
    ndtr = staticmethod(jsp.ndtr)
    ndtri = staticmethod(jsp.ndtri)
    log_ndtr = staticmethod(jsp.log_ndtr)
    xlogy = staticmethod(_xlogy)
    xlog1py = staticmethod(_xlog1py)
    expit = staticmethod(jsp.expit)
    logit = staticmethod(jsp.logit)
    softplus = staticmethod(_softplus)

    @staticmethod
    def log_expit(x):
        return -_softplus(-x)
    softmax = staticmethod(jax.nn.softmax)
    log_softmax = staticmethod(jax.nn.log_softmax)
    i0e = staticmethod(jsp.i0e)
    i1e = staticmethod(jsp.i1e)
    gammainc = staticmethod(jsp.gammainc)
    gammaincc = staticmethod(jsp.gammaincc)
    multigammaln = staticmethod(jsp.multigammaln)

    # betaln: the base class's gammaln(a) + gammaln(b) - gammaln(a + b); jax.scipy's betaln
    # loses up to 1e-7 relative accuracy in float64 (e.g. a=2.5, b=40).

    def logsumexp(self, x, axis=None, keepdims=False):
        return jsp.logsumexp(x, axis=axis, keepdims=keepdims)

    # ------------------------------------------------------------------ random
    def _raw(self, key):
        """The raw uint32 key ``key`` as a JAX array (on the backend's device)."""
        return key if isinstance(key, jax.Array) else self.asarray(key, dtype=np.uint32)

    def _typed(self, key, impl=_KEY_IMPL):
        """A typed threefry key from the raw uint32 key ``key`` (on the backend's device)."""
        return jax.random.wrap_key_data(self._raw(key), impl=impl)

    def key(self, seed):
        """A raw threefry key, uint32 Array of shape (2,), from the non-negative int ``seed``.

        Identical to ``jax.random.PRNGKey(seed)`` for ``seed < 2**32``, and to it under x64 for
        ``seed < 2**64`` (high word first); larger seeds are hashed (``host_random.key``).

        Raises
        ------
        ValueError
            If ``seed`` is negative or not an int.
        """
        return jnp.asarray(host_random.key(seed), device=self._device)

    def split(self, key, num=2):
        # the key implementation's own functions on the raw key: jax.random.split's and
        # fold_in's numbers without wrapping a typed key (a third of the eager cost)
        return threefry_split(self._raw(key), (int(num),))

    def fold_in(self, key, data):
        if isinstance(data, (int, np.integer)):
            data = int(data)
            if data < 0:
                raise ValueError(f"data must be a non-negative int, got {data}")
            if data > 0xFFFFFFFF:
                # fold the low word, then the rest, so every bit of `data` matters
                key = self.fold_in(key, data & 0xFFFFFFFF)
                return self.fold_in(key, data >> 32)
            data = np.uint32(data)
        return threefry_fold_in(self._raw(key), data)

    def normal(self, key, shape=(), dtype=None):
        return jax.random.normal(self._typed(key), tuple(shape),
                                 dtype=self._float if dtype is None else dtype)

    def uniform(self, key, shape=(), dtype=None, minval=0.0, maxval=1.0):
        return jax.random.uniform(self._typed(key), tuple(shape),
                                  dtype=self._float if dtype is None else dtype,
                                  minval=minval, maxval=maxval)

    def _float_param(self, x):
        x = self.asarray(x)
        return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(self._float)

    def gamma(self, key, alpha, shape=None):
        alpha = self._float_param(alpha)
        shape = alpha.shape if shape is None else tuple(shape)
        # jax.random.gamma carries the implicit-reparameterisation gradient in alpha.
        return jax.random.gamma(self._typed(key), alpha, shape, dtype=alpha.dtype)

    def poisson(self, key, rate, shape=None):
        rate = self._float_param(rate)
        shape = rate.shape if shape is None else tuple(shape)
        # jax.random.poisson accepts JAX's own threefry keys only (the same numbers)
        draws = jax.random.poisson(self._typed(key, "threefry2x32"), rate, shape,
                                   dtype=self._int)
        return draws.astype(self._float)

    def binomial(self, key, total_count, probs, shape=None):
        n = self._float_param(total_count)
        p = self._float_param(probs)
        shape = jnp.broadcast_shapes(n.shape, p.shape) if shape is None else tuple(shape)
        return jax.random.binomial(self._typed(key), n, p, shape, dtype=self._float)

    def randint(self, key, shape, minval, maxval):
        return jax.random.randint(self._typed(key), tuple(shape), minval, maxval,
                                  dtype=self._int)

    def permutation(self, key, n):
        return jax.random.permutation(self._typed(key), int(n)).astype(self._int)

    # ------------------------------------------------------------------ autodiff
    @staticmethod
    def _argnums(argnums):
        return tuple(argnums) if isinstance(argnums, list) else argnums

    def grad(self, f, argnums=0, has_aux=False):
        return jax.grad(f, argnums=self._argnums(argnums), has_aux=has_aux)

    def value_and_grad(self, f, argnums=0, has_aux=False):
        return jax.value_and_grad(f, argnums=self._argnums(argnums), has_aux=has_aux)

    def vjp(self, f, *primals, has_aux=False):
        return jax.vjp(f, *primals, has_aux=has_aux)

    def jvp(self, f, primals, tangents):
        primals, tangents = tuple(primals), tuple(tangents)
        # jax.jvp insists on identical dtypes; accept e.g. float64 NumPy tangents for float32
        # primals by casting the tangent (a no-op at trace time when they already agree).
        tangents = jax.tree_util.tree_map(_cast_tangent, primals, tangents)
        return jax.jvp(f, primals, tangents)

    stop_gradient = staticmethod(lax.stop_gradient)

    def custom_vjp(self, fun, fwd, bwd):
        wrapped = jax.custom_vjp(fun)
        wrapped.defvjp(fwd, lambda res, g: tuple(bwd(res, g)))
        return wrapped

    def jacobian(self, f, argnums=0, mode="reverse", chunk_size=None, has_aux=False):
        if mode not in ("reverse", "forward"):
            raise ValueError(f"mode must be 'reverse' or 'forward', got {mode!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        argnums = self._argnums(argnums)
        if chunk_size is None:
            transform = jax.jacrev if mode == "reverse" else jax.jacfwd
            return transform(f, argnums=argnums, has_aux=has_aux)
        # jax.jacrev has no chunking: the base class vmaps the VJP/JVP over basis chunks.
        return super().jacobian(f, argnums=argnums, mode=mode, chunk_size=chunk_size,
                                has_aux=has_aux)

    # ------------------------------------------------------------------ control flow
    def cond(self, pred, true_fun, false_fun, *operands):
        """``lax.cond``; a Python bool ``pred`` calls the chosen branch directly (no tracing of
        the other branch)."""
        if isinstance(pred, (bool, np.bool_)):
            return true_fun(*operands) if pred else false_fun(*operands)
        return lax.cond(pred, true_fun, false_fun, *operands)

    def switch(self, index, branches, *operands):
        """``lax.switch`` (index clamped); a Python int ``index`` calls its branch directly."""
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            return branches[min(max(int(index), 0), len(branches) - 1)](*operands)
        return lax.switch(index, branches, *operands)

    while_loop = staticmethod(lax.while_loop)
    fori_loop = staticmethod(lax.fori_loop)

    def scan(self, f, init, xs=None, length=None, reverse=False):
        if length is None and not jax.tree_util.tree_leaves(xs):
            raise ValueError("scan needs `length` when `xs` is None")
        return lax.scan(f, init, xs, length=length, reverse=reverse)

    def map(self, f, xs):
        return lax.map(f, xs)

    # ------------------------------------------------------------------ transforms
    def jit(self, fun, static_argnums=(), static_argnames=(), donate_argnums=()):
        return jax.jit(fun, static_argnums=static_argnums, static_argnames=static_argnames,
                       donate_argnums=donate_argnums)

    def compile_pure(self, fun):
        compiled = {}   # positions of the Python scalar arguments -> jitted fun

        def call(*args):
            static = tuple(i for i, a in enumerate(args) if isinstance(a, STATIC_SCALARS))
            f = compiled.get(static)
            if f is None:
                f = compiled[static] = jax.jit(fun, static_argnums=static)
            return f(*args)

        return call

    def vmap(self, fun, in_axes=0, out_axes=0):
        if isinstance(in_axes, list):
            in_axes = tuple(in_axes)  # jax reads a list as a pytree prefix of one argument
        return jax.vmap(fun, in_axes=in_axes, out_axes=out_axes)

    def pure_callback(self, fn, result_shape_dtypes, *args):
        structs = self.tree_map(
            lambda sd: jax.ShapeDtypeStruct(tuple(sd[0]), _canonical(sd[1])),
            result_shape_dtypes, is_leaf=_is_shape_dtype)

        def host(*host_args):
            # JAX hands the callback CPU jax.Arrays; the contract promises NumPy arrays.
            out = fn(*jax.tree_util.tree_map(np.asarray, host_args))
            return self.tree_map(lambda o, s: np.asarray(o, dtype=s.dtype).reshape(s.shape),
                                 out, structs)

        out = jax.pure_callback(host, structs, *args, vmap_method="sequential")
        if self._device is not None:
            out = self.tree_map(
                lambda o: o if isinstance(o, _Tracer) else jax.device_put(o, self._device), out)
        return out


def _canonical(name):
    """The dtype JAX will actually use for the dtype name ``name`` (float64 -> float32 without
    x64), so that a callback's declared and returned dtypes agree."""
    return jax.dtypes.canonicalize_dtype(np.dtype(name))


def _cast_tangent(primal, tangent):
    dtype = getattr(primal, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.inexact):
        return tangent
    if getattr(tangent, "dtype", None) == dtype:
        return tangent
    return jnp.asarray(tangent, dtype=dtype)

