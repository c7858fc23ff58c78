"""The Backend contract: the closed set of operations every agvi algorithm is written against.

A backend is an object, not a module: it carries its precision and device, and an agvi object (a
distribution, a kernel, an SVI) keeps the backend it was built with for its whole life. Algorithms
never branch on ``backend.name``; where frameworks really differ they consult the capability flags
(:attr:`Backend.has_jit`, :attr:`Backend.has_vmap`, :attr:`Backend.supports_forward_mode`,
:attr:`Backend.compiles_control_flow`) in plain Python.

Conventions used in every docstring below:

- ``Array`` is the framework's array type (``numpy.ndarray`` (autograd boxes while
  differentiating), ``torch.Tensor``, ``jax.Array``).
- ``shape`` arguments and the results of :meth:`Backend.shape` are tuples of Python ints.
- Floating arrays created without an explicit ``dtype`` use :attr:`Backend.float_dtype`, which
  follows the backend's ``precision``; every created array is placed on :attr:`Backend.device`.
- Random draws take an explicit ``key`` (see :mod:`agvi.random`); the same key gives the same
  draws on the same backend, precision and device.
- Control flow follows JAX's semantics (pure bodies, loop-invariant shapes and dtypes) so that the
  same algorithm compiles on JAX and runs as plain Python loops elsewhere.

The contract is listed in :data:`CONTRACT` by group; :mod:`agvi.testing` checks every entry of it
against NumPy/SciPy oracles.

References
----------
The design follows TensorFlow Probability's substrates (one algorithm source over several array
libraries) and JAX's functional transformations (Bradbury et al., 2018, "JAX: composable
transformations of Python+NumPy programs").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import optree

__all__ = ["Backend", "CONTRACT", "UNARY_FUNCTIONS", "BINARY_FUNCTIONS", "framework_of"]

#: Unary elementwise functions, bound by each backend under these (NumPy) names.
UNARY_FUNCTIONS = (
    "abs", "negative", "exp", "expm1", "log", "log1p", "sqrt", "square", "reciprocal",
    "sin", "cos", "tan", "tanh", "sinh", "cosh", "arcsin", "arccos", "arctan",
    "arcsinh", "arccosh", "arctanh", "floor", "ceil", "round", "sign",
    "isfinite", "isnan", "isinf", "logical_not",
)
#: Binary elementwise functions (broadcasting), bound by each backend under these names.
BINARY_FUNCTIONS = (
    "add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "arctan2",
    "logaddexp", "equal", "not_equal", "less", "less_equal", "greater", "greater_equal",
    "logical_and", "logical_or", "floor_divide", "remainder",
)
#: The key-based random primitives every other draw is built from.
RANDOM_PRIMITIVES = ("key", "split", "fold_in", "normal", "uniform", "gamma", "poisson",
                     "binomial", "randint", "permutation")
#: Special functions with gradients on every backend.
SPECIAL_FUNCTIONS = (
    "gammaln", "digamma", "polygamma", "betaln", "erf", "erfc", "erfinv", "ndtr", "ndtri",
    "log_ndtr", "xlogy", "xlog1py", "expit", "logit", "softplus", "log_expit", "logsumexp",
    "softmax", "log_softmax", "i0e", "i1e", "gammainc", "gammaincc", "multigammaln",
)

#: The whole contract by group: what a backend provides and agvi.testing checks.
CONTRACT = {
    "arrays": (
        "asarray", "to_numpy", "is_array", "zeros", "ones", "full", "zeros_like", "ones_like",
        "full_like", "eye", "arange", "linspace",
        "shape", "ndim", "size", "reshape", "broadcast_to", "broadcast_shapes",
        "broadcast_arrays", "expand_dims", "squeeze", "moveaxis", "swapaxes",
        "matrix_transpose", "concatenate", "stack", "flip", "tile", "repeat", "tril", "triu",
        "diagonal", "diag_embed", "where", "take", "take_along_axis", "one_hot", "cumsum",
        "cumprod", "sort", "argsort", "clip",
        "sum", "mean", "prod", "max", "min", "argmax", "argmin", "any", "all", "var", "std",
        "norm",
        *UNARY_FUNCTIONS, *BINARY_FUNCTIONS,
        "matmul", "einsum", "cholesky", "solve_triangular", "cho_solve", "solve", "inv",
        "slogdet", "eigh",
        "index_update", "index_add", "dynamic_slice", "dynamic_index", "dynamic_update_index",
        "bitwise_and", "bitwise_or", "bitwise_xor", "left_shift", "right_shift", "popcount",
    ),
    "dtype_device": (
        "float_dtype", "int_dtype", "dtype", "dtype_of", "astype", "finfo", "is_floating",
        "device_of", "to_device", "available_devices",
    ),
    "random": (
        "key", "split", "fold_in", "key_data", "normal", "uniform", "gamma", "poisson",
        "binomial", "randint", "permutation", "exponential", "gumbel", "bernoulli",
        "categorical", "beta", "dirichlet", "multivariate_normal",
    ),
    "special": SPECIAL_FUNCTIONS,
    "autodiff": (
        "grad", "value_and_grad", "vjp", "jvp", "jacobian", "hessian", "hvp",
        "stop_gradient", "custom_vjp",
    ),
    "control_flow": ("cond", "switch", "while_loop", "fori_loop", "scan", "map"),
    "transforms": ("jit", "compile_pure", "host_function", "vmap", "pure_callback"),
    "pytrees": (
        "tree_flatten", "tree_unflatten", "tree_map", "tree_leaves", "tree_structure",
        "ravel_pytree",
    ),
}

#: Python values that :meth:`Backend.compile_pure` treats as static (part of the signature).
STATIC_SCALARS = (bool, int, float, complex, str, type(None))

_FRAMEWORK_PREFIXES = (("torch", "torch"), ("jax", "jax"), ("jaxlib", "jax"),
                       ("autograd", "numpy"), ("numpy", "numpy"))


def framework_of(x) -> str | None:
    """Name the framework an array object belongs to without importing any framework.

    Parameters
    ----------
    x : object
        Anything; arrays are recognised by the module of their type.

    Returns
    -------
    str or None
        ``"numpy"`` (NumPy arrays and scalars, autograd boxes), ``"torch"``, ``"jax"`` (arrays and
        tracers), or ``None`` for Python scalars, lists and other objects.
    """
    module = type(x).__module__ or ""
    for prefix, name in _FRAMEWORK_PREFIXES:
        if module == prefix or module.startswith(prefix + "."):
            return name
    return None


class FInfo(NamedTuple):
    """Machine limits of a floating dtype (as ``numpy.finfo``), as Python floats."""

    eps: float
    tiny: float
    max: float
    min: float
    bits: int


class Backend:
    """Abstract array backend: the documented contract every agvi algorithm is written against.

    Parameters
    ----------
    precision : {"float32", "float64"} or None
        Floating dtype of every array the backend creates. ``None`` takes the framework's own
        default (NumPy: float64; torch: float32; JAX: float64 when ``jax_enable_x64`` is already
        on, else float32).
    device : str or None
        Where created arrays live, e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``. ``None`` takes the
        framework's default device.

    Raises
    ------
    ValueError
        If ``precision`` is not one of the names above, or ``device`` is absent on this machine.

    Notes
    -----
    Subclasses bind the framework's functions to the names in :data:`CONTRACT` (as instance
    attributes, so a call costs no extra Python frame) and override what the generic
    implementations below cannot express. The generic control flow runs Python loops on concrete
    values; the generic ``vmap`` loops and stacks.

    Capability flags (class attributes):

    - ``has_jit``: :meth:`jit` compiles (otherwise it returns the function unchanged).
    - ``has_vmap``: :meth:`vmap` is a native vectorising transform (otherwise a loop).
    - ``supports_forward_mode``: :meth:`jvp` is native forward mode (otherwise it is computed
      exactly by the double-VJP transpose trick, at the cost of two reverse passes).
    - ``compiles_control_flow``: ``cond``/``while_loop``/``scan`` are traced into a compiled
      program, so their bodies see abstract values (otherwise they run eagerly in Python).
    - ``has_mutable_arrays``: :meth:`assign_` writes in place (otherwise it returns the value).
    """

    name = "abstract"
    has_jit = False
    has_vmap = False
    supports_forward_mode = False
    compiles_control_flow = False
    #: :meth:`compile_pure` compiles (JAX, torch); otherwise it returns the function unchanged.
    compiles_pure = False
    #: Arrays can be written in place (:meth:`assign_` mutates; torch).
    has_mutable_arrays = False
    #: Extra that installs the framework (used in error messages).
    install_extra = None

    def __init__(self, precision: str | None = None, device: str | None = None):
        self._check_precision(precision)
        self.precision = precision or self._default_precision()
        self.device = device

    # ------------------------------------------------------------------ identity
    @staticmethod
    def _check_precision(precision):
        """Raise ``ValueError`` unless ``precision`` is "float32", "float64" or None."""
        if precision not in (None, "float32", "float64"):
            raise ValueError(
                f"precision must be 'float32', 'float64' or None, got {precision!r}")

    def _default_precision(self) -> str:
        return "float64"

    def __repr__(self):
        return f"{type(self).__name__}(precision={self.precision!r}, device={self.device!r})"

    # ------------------------------------------------------------------ framework primitives
    # Each backend implements these; the defaults use ``self.xp`` where its NumPy-style function
    # has the documented meaning (true of autograd.numpy and jax.numpy), else they raise.
    def _missing(self, what):
        raise NotImplementedError(f"backend {self.name!r} does not implement {what}")

    @property
    def xp(self):
        """The array namespace (``autograd.numpy``, ``array_api_compat.torch``, ``jax.numpy``)."""
        return self._missing("xp")

    @property
    def float_dtype(self):
        """The framework dtype of floating arrays under :attr:`precision`."""
        return self.dtype(self.precision)

    @property
    def int_dtype(self):
        """The framework's default integer dtype (int64; int32 on JAX without x64)."""
        return self.dtype("int64")

    def dtype(self, name: str):
        """Framework dtype named ``name`` (``"float32"``, ``"float64"``, ``"int32"``,
        ``"int64"``, ``"uint32"``, ``"bool"``)."""
        return self._missing("dtype")

    def dtype_of(self, x):
        """Framework dtype of the array ``x``."""
        return x.dtype

    def astype(self, x, dtype):
        """``x`` converted to ``dtype`` (differentiable between floating dtypes)."""
        return self._missing("astype")

    def asarray(self, x, dtype=None):
        """Convert ``x`` (Python scalars, nested lists, NumPy arrays, this framework's arrays) to
        an Array on :attr:`device`.

        Floating input without ``dtype`` becomes :attr:`float_dtype`; integer input
        :attr:`int_dtype`; boolean stays boolean; this framework's arrays keep their dtype.

        Raises
        ------
        TypeError
            If ``x`` is an array of another framework (the message names both).
        """
        return self._missing("asarray")

    def to_numpy(self, x):
        """A NumPy copy of the Array ``x`` (detached from any gradient, moved to the host)."""
        return self._missing("to_numpy")

    def is_array(self, x) -> bool:
        """Whether ``x`` is an array of this framework (tracers and autograd boxes included)."""
        return self._missing("is_array")

    def device_of(self, x):
        """The device of the Array ``x`` as a string such as ``"cpu"`` or ``"cuda:0"``."""
        return "cpu"

    def to_device(self, x, device):
        """The Array ``x`` moved to ``device`` (a string)."""
        return x

    def available_devices(self) -> list:
        """Names of the devices this framework can use here, e.g. ``["cpu", "cuda:0"]``."""
        return ["cpu"]

    # creation ---------------------------------------------------------------------------------
    def zeros(self, shape, dtype=None):
        """Array of zeros, shape ``shape``, dtype ``dtype`` (default :attr:`float_dtype`)."""
        return self.xp.zeros(shape, dtype=dtype or self.float_dtype)

    def ones(self, shape, dtype=None):
        """Array of ones, shape ``shape``, dtype ``dtype`` (default :attr:`float_dtype`)."""
        return self.xp.ones(shape, dtype=dtype or self.float_dtype)

    def full(self, shape, fill_value, dtype=None):
        """Array of ``fill_value`` (a Python scalar), shape ``shape``."""
        return self.xp.full(shape, fill_value, dtype=dtype or self.float_dtype)

    def zeros_like(self, x):
        """Zeros with the shape, dtype and device of ``x``."""
        return self.xp.zeros_like(x)

    def ones_like(self, x):
        """Ones with the shape, dtype and device of ``x``."""
        return self.xp.ones_like(x)

    def full_like(self, x, fill_value):
        """``fill_value`` with the shape, dtype and device of ``x``."""
        return self.xp.full_like(x, fill_value)

    def eye(self, n: int, dtype=None):
        """Identity matrix, shape (n, n)."""
        return self.xp.eye(n, dtype=dtype or self.float_dtype)

    def arange(self, start, stop=None, step=1, dtype=None):
        """Evenly spaced values in [start, stop) (integers unless ``dtype`` says otherwise)."""
        if stop is None:
            start, stop = 0, start
        return self.xp.arange(start, stop, step, dtype=dtype or self.int_dtype)

    def linspace(self, start, stop, num: int, dtype=None):
        """``num`` evenly spaced values from ``start`` to ``stop`` inclusive, shape (num,)."""
        return self.xp.linspace(start, stop, num, dtype=dtype or self.float_dtype)

    # shape manipulation -----------------------------------------------------------------------
    def reshape(self, x, shape):
        """``x`` with shape ``shape`` (one entry may be -1)."""
        return self.xp.reshape(x, shape)

    def broadcast_to(self, x, shape):
        """``x`` broadcast to ``shape``."""
        return self.xp.broadcast_to(x, shape)

    def broadcast_arrays(self, *xs):
        """The arrays broadcast against each other (a list)."""
        return list(self.xp.broadcast_arrays(*xs))

    def expand_dims(self, x, axis: int):
        """``x`` with a new axis of length 1 at ``axis``."""
        return self.xp.expand_dims(x, axis)

    def squeeze(self, x, axis):
        """``x`` without the length-1 axis (or tuple of axes) ``axis``."""
        return self.xp.squeeze(x, axis)

    def moveaxis(self, x, source, destination):
        """``x`` with axis ``source`` moved to ``destination``."""
        return self.xp.moveaxis(x, source, destination)

    def swapaxes(self, x, axis1: int, axis2: int):
        """``x`` with two axes exchanged."""
        return self.xp.swapaxes(x, axis1, axis2)

    def matrix_transpose(self, x):
        """Transpose of the last two axes: (..., m, n) -> (..., n, m)."""
        return self.swapaxes(x, -1, -2)

    def concatenate(self, xs, axis: int = 0):
        """Join a sequence of arrays along an existing axis."""
        return self.xp.concatenate(list(xs), axis=axis)

    def stack(self, xs, axis: int = 0):
        """Join a sequence of arrays of one shape along a new axis."""
        return self.xp.stack(list(xs), axis=axis)

    def flip(self, x, axis):
        """``x`` reversed along ``axis``."""
        return self.xp.flip(x, axis)

    def tile(self, x, reps):
        """``x`` repeated ``reps`` (tuple of ints) times per axis (``numpy.tile``)."""
        return self.xp.tile(x, reps)

    def repeat(self, x, repeats: int, axis: int):
        """Each element of ``x`` repeated ``repeats`` times along ``axis``."""
        return self.xp.repeat(x, repeats, axis=axis)

    def tril(self, x, k: int = 0):
        """Lower triangle of the last two axes (entries above diagonal ``k`` set to zero)."""
        return self.xp.tril(x, k)

    def triu(self, x, k: int = 0):
        """Upper triangle of the last two axes (entries below diagonal ``k`` set to zero)."""
        return self.xp.triu(x, k)

    def diagonal(self, x, offset: int = 0):
        """Diagonal of the last two axes: shape (..., n, n) -> (..., n)."""
        # Written on the transposed axes (offset negated, same values): autograd can only
        # differentiate diagonal(axis1=-1, axis2=-2).
        return self.xp.diagonal(x, -offset, axis1=-1, axis2=-2)

    def where(self, condition, x, y):
        """Elementwise ``x`` where ``condition`` else ``y`` (broadcasting; differentiable in
        ``x`` and ``y``)."""
        return self.xp.where(condition, x, y)

    def take(self, x, indices, axis: int):
        """Elements of ``x`` at integer ``indices`` along ``axis`` (``numpy.take``)."""
        return self.xp.take(x, indices, axis=axis)

    def take_along_axis(self, x, indices, axis: int):
        """``numpy.take_along_axis``: ``indices`` has the rank of ``x``."""
        return self.xp.take_along_axis(x, indices, axis=axis)

    def cumsum(self, x, axis: int):
        """Cumulative sum along ``axis``."""
        return self.xp.cumsum(x, axis=axis)

    def cumprod(self, x, axis: int):
        """Cumulative product along ``axis``."""
        return self.xp.cumprod(x, axis=axis)

    def sort(self, x, axis: int = -1):
        """``x`` sorted ascending along ``axis``."""
        return self.xp.sort(x, axis=axis)

    def argsort(self, x, axis: int = -1):
        """Indices that sort ``x`` ascending along ``axis`` (stable)."""
        return self.xp.argsort(x, axis=axis, kind="stable")

    def clip(self, x, min=None, max=None):
        """``x`` limited to [min, max] (either may be None)."""
        return self.xp.clip(x, min, max)

    # reductions -------------------------------------------------------------------------------
    def sum(self, x, axis=None, keepdims=False):
        """Sum over ``axis`` (int, tuple of ints, or None for all)."""
        return self.xp.sum(x, axis=axis, keepdims=keepdims)

    def mean(self, x, axis=None, keepdims=False):
        """Mean over ``axis``."""
        return self.xp.mean(x, axis=axis, keepdims=keepdims)

    def prod(self, x, axis=None, keepdims=False):
        """Product over ``axis``."""
        return self.xp.prod(x, axis=axis, keepdims=keepdims)

    def max(self, x, axis=None, keepdims=False):
        """Maximum over ``axis``."""
        return self.xp.max(x, axis=axis, keepdims=keepdims)

    def min(self, x, axis=None, keepdims=False):
        """Minimum over ``axis``."""
        return self.xp.min(x, axis=axis, keepdims=keepdims)

    def argmax(self, x, axis: int = -1):
        """Index of the (first) maximum along ``axis``."""
        return self.xp.argmax(x, axis=axis)

    def argmin(self, x, axis: int = -1):
        """Index of the (first) minimum along ``axis``."""
        return self.xp.argmin(x, axis=axis)

    def any(self, x, axis=None, keepdims=False):
        """Logical or over ``axis``."""
        return self.xp.any(x, axis=axis, keepdims=keepdims)

    def all(self, x, axis=None, keepdims=False):
        """Logical and over ``axis``."""
        return self.xp.all(x, axis=axis, keepdims=keepdims)

    def var(self, x, axis=None, keepdims=False, ddof=0):
        """Variance over ``axis`` with ``ddof`` delta degrees of freedom."""
        return self.xp.var(x, axis=axis, keepdims=keepdims, ddof=ddof)

    def logsumexp(self, x, axis=None, keepdims=False):
        """log(sum(exp(x))) over ``axis``, stable (and its gradient) for large |x|."""
        return self._missing("logsumexp")

    # linear algebra ---------------------------------------------------------------------------
    def matmul(self, a, b):
        """Matrix product with batch broadcasting (``a @ b``)."""
        return self.xp.matmul(a, b)

    def einsum(self, subscripts: str, *operands):
        """Einstein summation (``numpy.einsum``)."""
        return self.xp.einsum(subscripts, *operands)

    def cholesky(self, a):
        """Lower Cholesky factor of symmetric positive-definite ``a``, shape (..., n, n)."""
        return self.xp.linalg.cholesky(a)

    def solve_triangular(self, a, b, lower: bool = True, trans: bool = False):
        """Solve ``a x = b`` (``a.T x = b`` with ``trans``) for triangular ``a``.

        Parameters
        ----------
        a : Array, shape (..., n, n), lower (``lower=True``) or upper triangular.
        b : Array, shape (..., n, k).

        Returns
        -------
        Array, shape (..., n, k).
        """
        return self._missing("solve_triangular")

    def solve(self, a, b):
        """Solve ``a x = b`` for square ``a`` (..., n, n) and ``b`` (..., n, k)."""
        return self.xp.linalg.solve(a, b)

    def inv(self, a):
        """Matrix inverse of ``a`` (..., n, n)."""
        return self.xp.linalg.inv(a)

    def slogdet(self, a):
        """(sign, log|det a|) of ``a`` (..., n, n); both shape (...)."""
        return tuple(self.xp.linalg.slogdet(a))

    def eigh(self, a):
        """Eigenvalues (ascending, shape (..., n)) and eigenvectors (columns, (..., n, n)) of the
        symmetric ``a``."""
        return tuple(self.xp.linalg.eigh(a))

    # functional updates -----------------------------------------------------------------------
    def index_update(self, x, index, value):
        """A copy of ``x`` with ``x[index] = value`` (``x.at[index].set(value)``), differentiable
        in ``x`` and ``value``. ``index``: an int, slice, integer Array or a tuple of them."""
        return self._missing("index_update")

    def index_add(self, x, index, value):
        """A copy of ``x`` with ``x[index] += value`` (repeated indices accumulate)."""
        return self._missing("index_add")

    def dynamic_slice(self, x, start, size: int, axis: int = 0):
        """``x[start:start + size]`` along ``axis`` with a (possibly traced) integer ``start``
        and a static ``size``; ``start`` is clamped so that the slice fits (``lax`` semantics)."""
        return self._missing("dynamic_slice")

    def dynamic_index(self, x, index, axis: int = 0):
        """``x[index]`` along ``axis`` with a (possibly traced) integer ``index``."""
        return self._missing("dynamic_index")

    def dynamic_update_index(self, x, index, value, axis: int = 0):
        """A copy of ``x`` with the slice at (possibly traced) ``index`` along ``axis`` replaced
        by ``value`` (whose shape is that of ``x`` without ``axis``)."""
        return self._missing("dynamic_update_index")

    # bit operations (integer arrays) ----------------------------------------------------------
    def bitwise_and(self, x, y):
        """Elementwise ``x & y`` of integer arrays."""
        return x & y

    def bitwise_or(self, x, y):
        """Elementwise ``x | y`` of integer arrays."""
        return x | y

    def bitwise_xor(self, x, y):
        """Elementwise ``x ^ y`` of integer arrays."""
        return x ^ y

    def left_shift(self, x, n):
        """Elementwise ``x << n`` of integer arrays."""
        return x << n

    def right_shift(self, x, n):
        """Elementwise ``x >> n`` of non-negative integer arrays."""
        return x >> n

    # special functions (framework-specific; each differentiable where the maths allows) ------
    def _bind_elementwise(self, namespace, renames=None):
        """Bind :data:`UNARY_FUNCTIONS` and :data:`BINARY_FUNCTIONS` from ``namespace`` as
        instance attributes (no wrapper frame per call); ``renames`` maps agvi names to the
        namespace's where they differ."""
        renames = renames or {}
        for name in UNARY_FUNCTIONS + BINARY_FUNCTIONS:
            setattr(self, name, getattr(namespace, renames.get(name, name)))

    def gammaln(self, x):
        """log|Gamma(x)|."""
        return self._missing("gammaln")

    def digamma(self, x):
        """d/dx log Gamma(x)."""
        return self._missing("digamma")

    def polygamma(self, n: int, x):
        """n-th derivative of the digamma function (``n`` a Python int)."""
        return self._missing("polygamma")

    def erf(self, x):
        """Error function."""
        return self._missing("erf")

    def erfc(self, x):
        """Complementary error function 1 - erf(x)."""
        return self._missing("erfc")

    def erfinv(self, x):
        """Inverse error function on (-1, 1)."""
        return self._missing("erfinv")

    def ndtr(self, x):
        """Standard normal CDF."""
        return self._missing("ndtr")

    def ndtri(self, p):
        """Standard normal quantile function (inverse of :meth:`ndtr`) on (0, 1)."""
        return self._missing("ndtri")

    def log_ndtr(self, x):
        """log of the standard normal CDF, accurate far into the lower tail."""
        return self._missing("log_ndtr")

    def xlogy(self, x, y):
        """x * log(y), 0 where x == 0 (the value and its gradient w.r.t. ``y``; the gradient
        w.r.t. ``x`` is log(y), 0 where x == y == 0)."""
        return self._missing("xlogy")

    def i0e(self, x):
        """Exponentially scaled modified Bessel function of order 0: exp(-|x|) I0(x)."""
        return self._missing("i0e")

    def i1e(self, x):
        """Exponentially scaled modified Bessel function of order 1: exp(-|x|) I1(x)."""
        return self._missing("i1e")

    def gammainc(self, a, x):
        """Regularised lower incomplete gamma P(a, x); differentiable in ``x``."""
        return self._missing("gammainc")

    def gammaincc(self, a, x):
        """Regularised upper incomplete gamma Q(a, x) = 1 - P(a, x); differentiable in ``x``."""
        return self._missing("gammaincc")

    # random primitives ------------------------------------------------------------------------
    def key(self, seed: int):
        """A random key from a non-negative int ``seed``: uint32 Array of shape (2,)."""
        return self._missing("key")

    def split(self, key, num: int = 2):
        """``num`` new independent keys from ``key``: uint32 Array of shape (num, 2)."""
        return self._missing("split")

    def fold_in(self, key, data: int):
        """A new key from ``key`` and the integer ``data`` (shape (2,))."""
        return self._missing("fold_in")

    def key_data(self, key):
        """The key as a NumPy uint32 array of shape (..., 2) (for saving and comparing)."""
        return np.asarray(self.to_numpy(key), dtype=np.uint32)

    def normal(self, key, shape=(), dtype=None):
        """Standard normal draws, shape ``shape``, dtype ``dtype`` (default float_dtype)."""
        return self._missing("normal")

    def uniform(self, key, shape=(), dtype=None, minval=0.0, maxval=1.0):
        """Uniform draws on [minval, maxval), shape ``shape``."""
        return self._missing("uniform")

    def gamma(self, key, alpha, shape=None):
        """Standard Gamma(alpha, 1) draws, reparameterised: differentiable in ``alpha`` by
        implicit reparameterisation (Figurnov et al. 2018, eq. 6).

        Parameters
        ----------
        alpha : Array of concentrations (> 0), broadcast to ``shape``.
        shape : tuple or None
            Result shape; default ``alpha``'s shape.
        """
        return self._missing("gamma")

    def poisson(self, key, rate, shape=None):
        """Poisson draws with mean ``rate`` (broadcast to ``shape``), integer-valued floats."""
        return self._missing("poisson")

    def binomial(self, key, total_count, probs, shape=None):
        """Binomial draws (``total_count`` trials, success probability ``probs``), broadcast to
        ``shape``, integer-valued floats."""
        return self._missing("binomial")

    def randint(self, key, shape, minval: int, maxval: int):
        """Uniform integers in [minval, maxval), shape ``shape``, dtype :attr:`int_dtype`."""
        return self._missing("randint")

    def permutation(self, key, n: int):
        """A uniformly random permutation of ``range(n)``, shape (n,), integers."""
        return self._missing("permutation")

    # autodiff primitives ----------------------------------------------------------------------
    def grad(self, f: Callable, argnums=0, has_aux: bool = False):
        """Gradient of the scalar ``f`` with respect to its ``argnums`` argument(s) (pytrees of
        floating Arrays). Returns a callable giving the gradient with the argument's structure
        (a tuple of them for a tuple ``argnums``; ``(grad, aux)`` with ``has_aux``)."""
        return self._missing("grad")

    def value_and_grad(self, f: Callable, argnums=0, has_aux: bool = False):
        """Like :meth:`grad` but returns ``(value, grad)`` (``((value, aux), grad)`` with
        ``has_aux``)."""
        return self._missing("value_and_grad")

    def vjp(self, f: Callable, *primals, has_aux: bool = False):
        """Reverse mode: ``(out, vjp_fn)`` (``(out, vjp_fn, aux)`` with ``has_aux``) where
        ``vjp_fn(cotangent)`` returns a tuple with one cotangent per primal. Pytrees allowed."""
        return self._missing("vjp")

    def jvp(self, f: Callable, primals: Sequence, tangents: Sequence):
        """Forward mode: ``(f(*primals), J @ tangents)``; ``primals`` and ``tangents`` are
        tuples of Arrays of matching shapes. Exact on every backend; native where
        :attr:`supports_forward_mode`."""
        return self._missing("jvp")

    def stop_gradient(self, x):
        """``x`` with no gradient flowing through it."""
        return self._missing("stop_gradient")

    def custom_vjp(self, fun: Callable, fwd: Callable, bwd: Callable):
        """``fun`` with a user-defined reverse-mode derivative.

        Parameters
        ----------
        fun : callable
            ``fun(*arrays) -> Array``: the primal computation.
        fwd : callable
            ``fwd(*arrays) -> (out, residuals)``; residuals a tuple of Arrays.
        bwd : callable
            ``bwd(residuals, g) -> tuple`` with one cotangent per argument of ``fun``.

        Returns
        -------
        callable computing ``fun`` whose VJP is ``bwd`` (composes with grad, vmap and jit).
        """
        return self._missing("custom_vjp")

    # ------------------------------------------------------------------ arrays
    def _check_foreign(self, x, argname="x"):
        """Raise ``TypeError`` if ``x`` is an array of another framework than this backend's."""
        fw = framework_of(x)
        if fw is not None and fw != "numpy" and fw != self.name:
            raise TypeError(
                f"{argname} is a {fw} array ({type(x).__name__}) but the active backend is "
                f"{self.name!r}; mixing {fw} and {self.name} arrays in one call is not supported. "
                f"Convert it (e.g. with numpy.asarray) or use agvi.use_backend({fw!r}).")

    def shape(self, x) -> tuple:
        """Static shape of ``x`` as a tuple of Python ints."""
        return tuple(int(s) for s in x.shape)

    def ndim(self, x) -> int:
        """Number of dimensions of ``x`` (a Python int)."""
        return len(x.shape)

    def size(self, x) -> int:
        """Number of elements of ``x`` (a Python int)."""
        return int(math.prod(self.shape(x)))

    @staticmethod
    def broadcast_shapes(*shapes) -> tuple:
        """Broadcast shape of ``shapes`` (tuples of ints) by NumPy's rules.

        Raises
        ------
        ValueError
            If the shapes do not broadcast.
        """
        return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))

    def is_floating(self, x) -> bool:
        """Whether the array ``x`` has a floating dtype."""
        return np.issubdtype(np.dtype(str(x.dtype).replace("torch.", "")), np.floating)

    def finfo(self, dtype=None) -> FInfo:
        """Machine limits of ``dtype`` (default :attr:`float_dtype`) as an :class:`FInfo`."""
        name = str(dtype if dtype is not None else self.float_dtype).replace("torch.", "")
        f = np.finfo(np.dtype(name))
        return FInfo(float(f.eps), float(f.tiny), float(f.max), float(f.min), int(f.bits))

    def one_hot(self, indices, num_classes: int, dtype=None):
        """One-hot encoding.

        Parameters
        ----------
        indices : Array of ints, shape (...)
        num_classes : int

        Returns
        -------
        Array, shape (..., num_classes), dtype ``dtype`` (default :attr:`float_dtype`).
        """
        classes = self.arange(num_classes, dtype=self.dtype_of(indices))
        return self.astype(self.expand_dims(indices, -1) == classes,
                           dtype if dtype is not None else self.float_dtype)

    def diag_embed(self, x):
        """Batched diagonal matrices: shape (..., n) -> (..., n, n) with ``x`` on the diagonal."""
        n = self.shape(x)[-1]
        return self.expand_dims(x, -1) * self.eye(n, dtype=self.dtype_of(x))

    def norm(self, x, axis=-1, keepdims=False):
        """Euclidean norm over ``axis`` (an int or tuple of ints)."""
        return self.sqrt(self.sum(x * x, axis=axis, keepdims=keepdims))

    def std(self, x, axis=None, keepdims=False, ddof=0):
        """Standard deviation over ``axis`` with ``ddof`` delta degrees of freedom."""
        return self.sqrt(self.var(x, axis=axis, keepdims=keepdims, ddof=ddof))

    def assign_(self, x, value):
        """Write ``value`` into the Array ``x`` in place where the framework has mutable arrays
        (torch; outside autograd), and return the updated array; elsewhere return ``value``.

        Not part of :data:`CONTRACT`: it exists for the borch-style step functions, whose users
        keep references to their parameter tensors. Algorithms stay functional.
        """
        return value

    def cho_solve(self, chol, b):
        """Solve ``A x = b`` given the lower Cholesky factor ``chol`` of ``A``.

        Parameters
        ----------
        chol : Array, shape (..., n, n), lower triangular.
        b : Array, shape (..., n, k).

        Returns
        -------
        Array, shape (..., n, k).
        """
        y = self.solve_triangular(chol, b, lower=True)
        return self.solve_triangular(chol, y, lower=True, trans=True)

    def popcount(self, x):
        """Number of set bits of each element of the non-negative integer array ``x``.

        Written with shifts and masks so that it runs (and compiles) on every backend; used by
        NUTS's U-turn checkpoint indexing (Hoffman and Gelman 2014; NumPyro's iterative NUTS).
        Valid for values below 2**32.
        """
        x = x - self.bitwise_and(self.right_shift(x, 1), 0x55555555)
        x = self.bitwise_and(x, 0x33333333) + self.bitwise_and(self.right_shift(x, 2), 0x33333333)
        x = self.bitwise_and(x + self.right_shift(x, 4), 0x0F0F0F0F)
        x = x + self.right_shift(x, 8)
        x = x + self.right_shift(x, 16)
        return self.bitwise_and(x, 0x3F)

    # ------------------------------------------------------------------ special functions
    def betaln(self, a, b):
        """log B(a, b) = gammaln(a) + gammaln(b) - gammaln(a + b)."""
        return self.gammaln(a) + self.gammaln(b) - self.gammaln(a + b)

    def expit(self, x):
        """Logistic sigmoid 1 / (1 + exp(-x))."""
        return 1.0 / (1.0 + self.exp(-x))

    def logit(self, p):
        """log(p / (1 - p)) for p in (0, 1)."""
        return self.log(p) - self.log1p(-p)

    def softplus(self, x):
        """log(1 + exp(x)), stable for large |x|."""
        return self.logaddexp(x, self.zeros_like(x))

    def log_expit(self, x):
        """log(expit(x)) = -softplus(-x), stable for large |x|."""
        return -self.softplus(-x)

    def xlog1py(self, x, y):
        """x * log1p(y), 0 where x == 0 (the value and its gradient w.r.t. ``y``)."""
        # y is replaced only where x == 0 and y == -1 (0 * log(0)), so that d/dx = log1p(y)
        # everywhere else, including at x == 0
        safe = self.where(self.logical_and(x == 0, y == -1), self.zeros_like(y), y)
        return x * self.log1p(safe)

    def softmax(self, x, axis=-1):
        """exp(x) / sum(exp(x)) along ``axis``."""
        return self.exp(self.log_softmax(x, axis=axis))

    def log_softmax(self, x, axis=-1):
        """x - logsumexp(x) along ``axis``."""
        return x - self.logsumexp(x, axis=axis, keepdims=True)

    def multigammaln(self, a, d: int):
        """Log multivariate gamma function of dimension ``d`` (an int), elementwise in ``a``."""
        j = self.arange(d, dtype=self.dtype_of(a)) if self.is_array(a) else self.arange(d)
        return (d * (d - 1) / 4.0) * math.log(math.pi) + self.sum(
            self.gammaln(self.expand_dims(a, -1) - j / 2.0), axis=-1)

    # ------------------------------------------------------------------ random (derived draws)
    # Backends implement key, split, fold_in, key_data, normal, uniform, gamma, poisson,
    # binomial, randint and permutation. Every other draw is derived here from those, so that a
    # backend fed shared noise (agvi.testing.SharedNoise) reproduces all of them draw for draw.
    def _draw_shape(self, shape, *params):
        if shape is None:
            return self.broadcast_shapes(*[self.shape(self.asarray(p)) for p in params])
        return tuple(shape)

    def exponential(self, key, shape=(), dtype=None):
        """Standard exponential draws, shape ``shape``, by inversion ``-log1p(-U)``."""
        return -self.log1p(-self.uniform(key, shape, dtype=dtype))

    def gumbel(self, key, shape=(), dtype=None):
        """Standard Gumbel draws, shape ``shape``, by inversion ``-log(-log U)``."""
        tiny = self.finfo(dtype).tiny
        u = self.uniform(key, shape, dtype=dtype, minval=tiny, maxval=1.0)
        return -self.log(-self.log(u))

    def bernoulli(self, key, p, shape=None):
        """Boolean draws with success probability ``p`` (broadcast to ``shape``)."""
        p = self.asarray(p)
        shape = self._draw_shape(shape, p)
        return self.uniform(key, shape, dtype=self.dtype_of(p)) < p

    def categorical(self, key, logits, axis=-1, shape=None):
        """Integer draws from unnormalised log-probabilities by the Gumbel-max trick.

        Parameters
        ----------
        logits : Array, shape (..., K) (categories along ``axis``).
        shape : tuple or None
            Batch shape of the result; default the batch shape of ``logits``.

        Returns
        -------
        Array of ints, shape ``shape``.
        """
        logits = self.moveaxis(self.asarray(logits), axis, -1)
        batch = self.shape(logits)[:-1]
        shape = batch if shape is None else tuple(shape)
        g = self.gumbel(key, shape + self.shape(logits)[-1:], dtype=self.dtype_of(logits))
        return self.argmax(logits + g, axis=-1)

    def beta(self, key, a, b, shape=None):
        """Reparameterised Beta(a, b) draws as G_a / (G_a + G_b) of two gamma draws."""
        a, b = self.asarray(a), self.asarray(b)
        shape = self._draw_shape(shape, a, b)
        ka, kb = self.split(key, 2)
        ga = self.gamma(ka, a, shape)
        gb = self.gamma(kb, b, shape)
        return ga / (ga + gb)

    def dirichlet(self, key, alpha, shape=None):
        """Reparameterised Dirichlet draws, alpha shape (..., K), result ``shape + (K,)``."""
        alpha = self.asarray(alpha)
        shape = self.shape(alpha)[:-1] if shape is None else tuple(shape)
        g = self.gamma(key, alpha, shape + self.shape(alpha)[-1:])
        return g / self.sum(g, axis=-1, keepdims=True)

    def multivariate_normal(self, key, mean, scale_tril, shape=None):
        """Draws ``mean + L z`` with ``z`` standard normal.

        Parameters
        ----------
        mean : Array, shape (..., d)
        scale_tril : Array, shape (..., d, d), lower Cholesky factor of the covariance.
        shape : tuple or None
            Batch shape of the result (default the broadcast batch shape).

        Returns
        -------
        Array, shape ``shape + (d,)``.
        """
        mean, scale_tril = self.asarray(mean), self.asarray(scale_tril)
        d = self.shape(mean)[-1]
        batch = self.broadcast_shapes(self.shape(mean)[:-1], self.shape(scale_tril)[:-2])
        shape = batch if shape is None else tuple(shape)
        z = self.normal(key, shape + (d,), dtype=self.dtype_of(mean))
        return mean + self.squeeze(self.matmul(scale_tril, self.expand_dims(z, -1)), -1)

    # ------------------------------------------------------------------ autodiff (generic)
    def _argnums_tuple(self, argnums):
        return (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def jacobian(self, f: Callable, argnums=0, mode: str = "reverse", chunk_size: int | None = None,
                 has_aux: bool = False):
        """Jacobian of ``f`` with respect to array arguments, in forward or reverse mode.

        Parameters
        ----------
        f : callable
            ``f(*args) -> Array`` of shape ``out_shape`` (or ``(Array, aux)`` with ``has_aux``).
        argnums : int or tuple of int
            Positions of the differentiated arguments; each must be an Array of shape
            ``in_shape_i`` (ravel pytrees first with :meth:`ravel_pytree`).
        mode : {"reverse", "forward"}
            Reverse mode computes one VJP per output element (cheap when the output is small);
            forward mode one JVP per input element (cheap when the input is small).
        chunk_size : int or None
            How many basis vectors are pushed through one vectorised VJP/JVP (semantics of
            ``torch.func.jacrev(chunk_size=...)``). ``None`` pushes them all at once; ``1`` one at
            a time (least memory).

        Returns
        -------
        callable
            ``jac(*args)`` returning an Array of shape ``out_shape + in_shape`` (a tuple of them
            when ``argnums`` is a tuple; ``(jac, aux)`` with ``has_aux``).

        Raises
        ------
        ValueError
            If ``mode`` is not "reverse" or "forward", or ``chunk_size`` is not a positive int.
        """
        if mode not in ("reverse", "forward"):
            raise ValueError(f"mode must be 'reverse' or 'forward', got {mode!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
        nums = self._argnums_tuple(argnums)

        def jac(*args):
            args = list(args)

            def f_of(*xs):
                a = list(args)
                for i, x in zip(nums, xs):
                    a[i] = x
                return f(*a)

            primals = tuple(args[i] for i in nums)
            if mode == "reverse":
                out, pullback, *aux = self.vjp(f_of, *primals, has_aux=has_aux)
                out_shape = self.shape(out)
                m = int(math.prod(out_shape))
                eye = self.eye(m, dtype=self.dtype_of(out))
                rows = self._chunked(lambda e: pullback(self.reshape(e, out_shape)), eye,
                                     chunk_size)
                res = tuple(self.reshape(r, out_shape + self.shape(p))
                            for r, p in zip(rows, primals))
            else:
                res, aux = [], []
                for k, p in enumerate(primals):
                    in_shape = self.shape(p)
                    n = int(math.prod(in_shape))
                    eye = self.eye(n, dtype=self.dtype_of(p))

                    def push(e, k=k, in_shape=in_shape):
                        tangents = tuple(self.reshape(e, in_shape) if j == k else self.zeros_like(q)
                                         for j, q in enumerate(primals))
                        return (self._jvp_aux if has_aux else self.jvp)(f_of, primals, tangents)[1]

                    (cols,) = self._chunked(lambda e: (push(e),), eye, chunk_size)
                    if has_aux and not aux:
                        aux = [f_of(*primals)[1]]
                    out_shape = self.shape(cols)[1:]
                    res.append(self.moveaxis(self.reshape(cols, (n,) + out_shape), 0, -1)
                               if out_shape else cols)
                    res[-1] = self.reshape(res[-1], out_shape + in_shape)
                res = tuple(res)
            res = res[0] if isinstance(argnums, int) else res
            return (res, aux[0]) if has_aux else res

        return jac

    def _jvp_aux(self, f, primals, tangents):
        return self.jvp(lambda *xs: f(*xs)[0], primals, tangents)

    def _chunked(self, fn, basis, chunk_size):
        """Apply ``fn`` (basis row -> tuple of Arrays) to every row of ``basis``, vectorised in
        chunks, and stack each output along a new leading axis."""
        n = self.shape(basis)[0]
        step = n if chunk_size is None else min(chunk_size, n)
        pieces = [self.vmap(fn)(basis[i:i + step]) for i in range(0, n, step)]
        return tuple(self.concatenate([p[j] for p in pieces], axis=0)
                     for j in range(len(pieces[0])))

    def hessian(self, f: Callable, argnums: int = 0):
        """Hessian of the scalar ``f`` with respect to the Array argument ``argnums``.

        Returns a callable giving an Array of shape ``in_shape + in_shape`` (forward over reverse).
        """
        return self.jacobian(self.grad(f, argnums=argnums), argnums=argnums, mode="forward")

    def hvp(self, f: Callable, primals: Sequence, tangents: Sequence):
        """Hessian-vector product of the scalar ``f`` (forward over reverse, Pearlmutter 1994).

        Parameters
        ----------
        primals, tangents : sequences of Arrays with matching shapes (one per argument of ``f``).

        Returns
        -------
        tuple of Arrays, one per argument: ``H @ tangents``.
        """
        nums = tuple(range(len(primals)))
        g = self.grad(f, argnums=nums)
        return self.jvp(g, tuple(primals), tuple(tangents))[1]

    # ------------------------------------------------------------------ control flow (generic)
    def cond(self, pred, true_fun: Callable, false_fun: Callable, *operands):
        """``true_fun(*operands)`` if ``pred`` else ``false_fun(*operands)`` (``lax.cond``)."""
        return true_fun(*operands) if bool(pred) else false_fun(*operands)

    def switch(self, index, branches: Sequence[Callable], *operands):
        """``branches[index](*operands)`` with ``index`` clamped to the valid range."""
        i = min(max(int(index), 0), len(branches) - 1)
        return branches[i](*operands)

    def while_loop(self, cond_fun: Callable, body_fun: Callable, init_val):
        """Repeat ``val = body_fun(val)`` while ``cond_fun(val)``; returns the final ``val``.

        Not differentiable in reverse mode on JAX (as ``lax.while_loop``); agvi never does so.
        """
        val = init_val
        while bool(cond_fun(val)):
            val = body_fun(val)
        return val

    def fori_loop(self, lower: int, upper: int, body_fun: Callable, init_val):
        """``val = body_fun(i, val)`` for ``i`` in ``range(lower, upper)``; returns ``val``."""
        val = init_val
        for i in range(int(lower), int(upper)):
            val = body_fun(i, val)
        return val

    def scan(self, f: Callable, init, xs=None, length: int | None = None, reverse: bool = False):
        """Loop with a carry and stacked outputs (``lax.scan`` semantics).

        Parameters
        ----------
        f : callable
            ``f(carry, x) -> (carry, y)``; ``x`` is one leading-axis slice of ``xs`` (a pytree).
        init : pytree
            Initial carry.
        xs : pytree of Arrays with a common leading axis of length ``length``, or None.
        length : int or None
            Required when ``xs`` is None.
        reverse : bool
            Iterate from the last slice to the first (outputs stay in input order).

        Returns
        -------
        (carry, ys) with every leaf of ``ys`` stacked on a new leading axis of size ``length``.
        """
        leaves, treedef = self.tree_flatten(xs)
        n = length if not leaves else self.shape(leaves[0])[0]
        if n is None:
            raise ValueError("scan needs `length` when `xs` is None")
        order = range(n - 1, -1, -1) if reverse else range(n)
        carry, ys = init, [None] * n
        for i in order:
            x = self.tree_unflatten(treedef, [leaf[i] for leaf in leaves]) if leaves else None
            carry, ys[i] = f(carry, x)
        if n == 0 or ys[0] is None:
            return carry, None
        return carry, self.tree_map(lambda *y: self.stack(y), *ys)

    def map(self, f: Callable, xs):
        """``f`` applied to each leading-axis slice of the pytree ``xs``, outputs stacked."""
        return self.scan(lambda c, x: (c, f(x)), None, xs)[1]

    # ------------------------------------------------------------------ transforms (generic)
    def jit(self, fun: Callable, static_argnums=(), static_argnames=(), donate_argnums=()):
        """Compile ``fun`` where the framework can (``has_jit``); otherwise return it unchanged."""
        return fun

    def compile_pure(self, fun: Callable) -> Callable:
        """``fun`` compiled for repeated calls, where the framework can trace it.

        For a pure function of Arrays (pytrees of Arrays and Python scalars) with no random
        draws, called many times with inputs of the same shapes: a log density's value and
        gradient inside a sampler. Python scalar arguments are static (a new value compiles
        again). JAX: ``jax.jit``. torch: a graph traced once per input
        signature and run by TorchScript (:mod:`agvi.backends._torch_trace`); a function the
        tracer cannot record (Python control flow on values, host conversions, random draws)
        runs eagerly. Elsewhere ``fun`` unchanged. The results equal ``fun``'s up to rounding.
        """
        return fun

    def host_function(self, fun: Callable, x, *args) -> Callable:
        """``x -> fun(x, *args)`` between host NumPy arrays, for loops that keep their state on
        the host (the eager NUTS transition) and call ``fun`` once per step.

        Parameters
        ----------
        fun : callable
            ``fun(x, *args)`` returning a pytree of Arrays, usually a :meth:`compile_pure`
            function (a log density's value and gradient).
        x : numpy.ndarray
            An example of the varying argument: the returned function is for host arrays of
            its shape and dtype.
        *args
            The fixed arguments (Arrays, Python scalars).

        Returns
        -------
        callable
            ``call(x: numpy.ndarray) -> list`` of the NumPy leaves of ``fun(x, *args)`` in tree
            order. The leaves may share memory with ``x``, the arguments or each other: read
            them, never write into them. Here: ``asarray``, the call and ``to_numpy``; torch
            runs the graph :meth:`compile_pure` has traced for this signature directly, with
            what depends on ``args`` alone computed once (about 13 us less a call on a
            100-dimensional Gaussian's value and gradient).
        """
        asarray, to_numpy, leaves = self.asarray, self.to_numpy, self.tree_leaves

        def call(x):
            return [to_numpy(leaf) for leaf in leaves(fun(asarray(x), *args))]

        return call

    def vmap(self, fun: Callable, in_axes=0, out_axes=0):
        """Vectorise ``fun`` over an axis of its arguments (``jax.vmap`` semantics).

        Parameters
        ----------
        in_axes : int, None, or a tuple with one int/None per positional argument
            The mapped axis of each argument (None: not mapped). Pytree arguments are mapped leaf
            by leaf along the same axis.
        out_axes : int
            Where the mapped axis goes in every output leaf.

        Returns
        -------
        callable with the same signature; outputs gain the mapped axis.
        """
        def looped(*args):
            axes = in_axes if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)
            sizes = {self.shape(leaf)[a] for arg, a in zip(args, axes) if a is not None
                     for leaf in self.tree_leaves(arg)}
            if len(sizes) != 1:
                raise ValueError(f"vmap: mapped axes must have one common size, got {sizes}")
            (n,) = sizes
            outs = []
            for i in range(n):
                sliced = [arg if a is None else self.tree_map(
                    lambda leaf, a=a, i=i: self.moveaxis(leaf, a, 0)[i], arg)
                    for arg, a in zip(args, axes)]
                outs.append(fun(*sliced))
            return self.tree_map(lambda *o: self.stack(o, axis=out_axes), *outs)

        return looped

    def pure_callback(self, fn: Callable, result_shape_dtypes, *args):
        """Call the host (NumPy) function ``fn`` on ``args`` converted to NumPy arrays.

        Parameters
        ----------
        fn : callable
            ``fn(*numpy_arrays) -> numpy array or pytree of them``; not differentiated through.
        result_shape_dtypes : pytree of ``(shape, dtype_name)`` pairs
            The static shapes and dtype names (e.g. ``"float64"``, ``"uint32"``) of the result,
            needed where the call is compiled (JAX).

        Returns
        -------
        The result as arrays of this backend, on :attr:`device`.
        """
        out = fn(*[self.to_numpy(a) for a in args])
        return self.tree_map(lambda o, sd: self.asarray(np.asarray(o, dtype=sd[1]),
                                                        dtype=self.dtype(sd[1])),
                             out, result_shape_dtypes, is_leaf=_is_shape_dtype)

    # ------------------------------------------------------------------ pytrees (optree)
    @staticmethod
    def tree_flatten(tree, is_leaf=None):
        """Leaves (list) and structure of a pytree (None is an empty subtree, as in JAX)."""
        return optree.tree_flatten(tree, is_leaf=is_leaf, none_is_leaf=False)

    @staticmethod
    def tree_unflatten(treedef, leaves):
        """Rebuild a pytree of structure ``treedef`` from ``leaves``."""
        return optree.tree_unflatten(treedef, leaves)

    @staticmethod
    def tree_map(f, tree, *rest, is_leaf=None):
        """Apply ``f`` leafwise over pytrees of one structure."""
        return optree.tree_map(f, tree, *rest, is_leaf=is_leaf, none_is_leaf=False)

    @staticmethod
    def tree_leaves(tree, is_leaf=None):
        """The leaves of a pytree, in flattening order."""
        return optree.tree_leaves(tree, is_leaf=is_leaf, none_is_leaf=False)

    @staticmethod
    def tree_structure(tree, is_leaf=None):
        """The structure (treedef) of a pytree."""
        return optree.tree_structure(tree, is_leaf=is_leaf, none_is_leaf=False)

    def ravel_pytree(self, tree):
        """Flatten a pytree of floating Arrays into one vector.

        Returns
        -------
        flat : Array, shape (n,), the leaves raveled and concatenated in flattening order.
        unravel : callable
            ``unravel(flat) -> pytree`` of the original structure, shapes and dtypes.
        """
        leaves, treedef = self.tree_flatten(tree)
        shapes = [self.shape(leaf) for leaf in leaves]
        sizes = [int(math.prod(s)) for s in shapes]
        if leaves:
            flat = self.concatenate([self.reshape(leaf, (-1,)) for leaf in leaves], axis=0)
        else:
            flat = self.zeros((0,))

        def unravel(vec):
            out, start = [], 0
            for s, n in zip(shapes, sizes):
                out.append(self.reshape(vec[start:start + n], s))
                start += n
            return self.tree_unflatten(treedef, out)

        return flat, unravel


def _is_shape_dtype(x):
    return (isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple)
            and isinstance(x[1], str))
