"""NumPy arrays differentiated by autograd: the default backend and the agreement oracle.

Every operation maps to an ``autograd.numpy`` / ``autograd.scipy`` function that has a gradient,
or to a primitive defined here with its VJP (``ndtri``, ``xlogy``, ``i0e``, ``i1e``, the
reparameterised gamma draw). There is no compiler: :meth:`jit` is the identity, control flow runs
as Python loops, :meth:`vmap` loops and stacks, and forward mode is computed exactly by the
double-VJP transpose trick.
"""

from __future__ import annotations

import autograd
import autograd.numpy as anp
import autograd.scipy.special as asp
import autograd.scipy.stats.norm as anorm
import numpy as np
import scipy.special as ssp
from autograd.extend import defvjp, defvjp_argnums, primitive
from autograd.numpy.numpy_boxes import ArrayBox

from . import host_random
from .base import Backend

__all__ = ["NumpyBackend"]

_DTYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64,
           "uint32": np.uint32, "bool": np.bool_}


def _unbroadcast(g, shape):
    """Sum ``g`` over the axes that broadcasting added or stretched to reach its shape."""
    while anp.ndim(g) > len(shape):
        g = anp.sum(g, axis=0)
    for axis, n in enumerate(shape):
        if n == 1 and g.shape[axis] != 1:
            g = anp.sum(g, axis=axis, keepdims=True)
    return g


def _broadcast_to(x, shape):
    """``anp.broadcast_to`` that autograd can differentiate when it adds leading axes (its own
    VJP asserts that the number of dimensions is unchanged)."""
    shape = tuple(shape)
    extra = len(shape) - np.ndim(x)
    if extra > 0:
        x = anp.reshape(x, (1,) * extra + np.shape(x))
    return anp.broadcast_to(x, shape)


def _keep_dtype(out, x):
    """``out`` cast to the floating dtype of ``x`` (SciPy-backed functions return float64)."""
    dt = getattr(x, "dtype", None)
    if dt is not None and np.issubdtype(dt, np.floating) and out.dtype != dt:
        return out.astype(dt)
    return out


# --- primitives that autograd lacks -------------------------------------------------------------
@primitive
def _ndtri(p):
    return ssp.ndtri(p)


defvjp(_ndtri, lambda ans, p: lambda g: g * np.sqrt(2 * np.pi) * np.exp(0.5 * ans * ans))


@primitive
def _xlogy(x, y):
    return ssp.xlogy(x, y)


def _xlogy_dx(x, y):
    # d/dx x log(y) = log(y), also at x == 0; 0 where x == y == 0 (the convention of the value)
    both = (x == 0) & (y == 0)
    with np.errstate(divide="ignore"):
        return np.where(both, 0.0, np.log(np.where(both, 1.0, y)))


defvjp(_xlogy,
       lambda ans, x, y: lambda g: _unbroadcast(g * _xlogy_dx(x, y), np.shape(x)),
       lambda ans, x, y: lambda g: _unbroadcast(
           g * np.where(x == 0, 0.0, x / np.where(x == 0, 1.0, y)), np.shape(y)))


@primitive
def _i0e(x):
    return ssp.i0e(x)


@primitive
def _i1e(x):
    return ssp.i1e(x)


defvjp(_i0e, lambda ans, x: lambda g: g * (ssp.i1e(x) - np.sign(x) * ans))
# d/dx i1e(x) = i0e(x) - i1e(x) (sign(x) + 1/x); the limit at x = 0 is 1/2.
defvjp(_i1e, lambda ans, x: lambda g: g * np.where(
    x == 0, 0.5, ssp.i0e(x) - ans * (np.sign(x) + 1.0 / np.where(x == 0, 1.0, x))))


@primitive
def _gamma_draw(alpha, z):
    """Identity in ``z`` (the raw draw); carries the implicit-reparameterisation VJP to alpha."""
    return z


def _gamma_draw_vjp(ans, alpha, z):
    from ._gamma_grad import standard_gamma_grad  # numpy/scipy only; loaded on first use

    return lambda g: _unbroadcast(
        g * standard_gamma_grad(np.broadcast_to(alpha, np.shape(ans)), ans), np.shape(alpha))


defvjp(_gamma_draw, _gamma_draw_vjp)


@primitive
def _scatter(value, index, shape, add):
    """Zeros of ``shape`` with ``value`` written (or accumulated) at ``index``."""
    out = np.zeros(shape, dtype=np.result_type(value))
    if add:
        np.add.at(out, index, value)
    else:
        out[index] = value
    return out


defvjp(_scatter, lambda ans, value, index, shape, add: lambda g: g[index])


@primitive
def _take_along_axis(x, indices, axis):
    return np.take_along_axis(x, indices, axis=axis)


def _take_along_axis_vjp(ans, x, indices, axis):
    def vjp(g):
        # scatter-add g back to the gathered positions (repeated indices accumulate)
        grids = np.indices(np.shape(g), sparse=True)
        ax = axis % np.ndim(g)
        index = tuple(np.broadcast_to(indices, np.shape(g)) if d == ax else grids[d]
                      for d in range(np.ndim(g)))
        return _scatter(g, index, np.shape(x), True)  # differentiable again (jvp, hessians)

    return vjp


defvjp(_take_along_axis, _take_along_axis_vjp)


@primitive
def _diagonal(x, offset):
    return np.diagonal(x, offset, axis1=-2, axis2=-1)


def _diagonal_vjp(ans, x, offset):
    def vjp(g):
        i = np.arange(np.shape(g)[-1])
        return _scatter(g, (Ellipsis, i + max(-offset, 0), i + max(offset, 0)), np.shape(x), False)

    return vjp


defvjp(_diagonal, _diagonal_vjp)


def _index_set(x, index, value, add=False):
    if not isinstance(x, ArrayBox) and not isinstance(value, ArrayBox):
        out = np.array(x, copy=True)
        if add:
            np.add.at(out, index, value)
        else:
            out[index] = value
        return out
    target_shape = np.shape(np.empty(np.shape(x))[index])
    placed = _scatter(_broadcast_to(value, target_shape), index, np.shape(x), add)
    if add:
        return x + placed
    mask = np.zeros(np.shape(x), dtype=bool)
    mask[index] = True
    return anp.where(mask, placed, x)


class NumpyBackend(Backend):
    """NumPy + autograd backend (name ``"numpy"``, alias ``"autograd"``).

    Parameters
    ----------
    precision : {"float32", "float64"} or None
        Default float64.
    device : None or "cpu"
        NumPy runs on the host only.

    Raises
    ------
    ValueError
        If ``device`` names anything but the CPU.
    """

    name = "numpy"
    install_extra = "autograd"

    def __init__(self, precision=None, device=None):
        if device not in (None, "cpu"):
            raise ValueError(f"the numpy backend runs on the CPU only; device={device!r} is "
                             "not available (use the torch or jax backend for GPUs)")
        super().__init__(precision=precision, device="cpu")
        self._bind_elementwise(anp)

    # arrays -------------------------------------------------------------------------------------
    @property
    def xp(self):
        return anp

    def dtype(self, name):
        try:
            return np.dtype(_DTYPES[str(name)])
        except KeyError:
            raise ValueError(
                f"unknown dtype name {name!r}; expected one of {list(_DTYPES)}") from None

    @property
    def float_dtype(self):
        return np.dtype(_DTYPES[self.precision])

    @property
    def int_dtype(self):
        return np.dtype(np.int64)

    def astype(self, x, dtype):
        return x.astype(dtype)

    def is_array(self, x):
        return isinstance(x, (np.ndarray, np.generic, ArrayBox))

    def asarray(self, x, dtype=None):
        if isinstance(x, ArrayBox):
            return x if dtype is None or x.dtype == dtype else x.astype(dtype)
        # fast paths (distribution parameters, every call of a log density): Python floats and
        # arrays already of the float dtype
        if type(x) is float and dtype is None:
            return np.asarray(x, dtype=self.float_dtype)
        if type(x) is np.ndarray and x.dtype == (self.float_dtype if dtype is None else dtype):
            return x   # (np.dtype == None is True: compare with a dtype, never with None)
        self._check_foreign(x)
        arr = np.asarray(x)
        if dtype is None:
            kind = arr.dtype.kind
            if kind == "f":
                dtype = self.float_dtype
            elif kind in "iu" and arr.dtype != np.uint32:
                dtype = self.int_dtype
            else:
                return arr
        return arr if arr.dtype == dtype else arr.astype(dtype)

    def is_floating(self, x) -> bool:
        return np.dtype(x.dtype).kind == "f"

    def to_numpy(self, x):
        while isinstance(x, ArrayBox):
            x = x._value
        return np.array(x, copy=True)

    def host_function(self, fun, x, *args):
        """``x -> fun(x, *args)`` on host arrays: here no conversion at all (see
        :meth:`Backend.host_function`)."""
        leaves = self.tree_leaves

        def call(x):
            return leaves(fun(x, *args))

        return call

    def logsumexp(self, x, axis=None, keepdims=False):
        return asp.logsumexp(x, axis=axis, keepdims=keepdims)

    def broadcast_to(self, x, shape):
        if type(x) is np.ndarray:   # a constant: no autograd primitive (2 us less a call)
            return np.broadcast_to(x, tuple(shape))
        return _broadcast_to(x, shape)

    def broadcast_arrays(self, *xs):
        shape = self.broadcast_shapes(*[np.shape(x) for x in xs])
        return [_broadcast_to(x, shape) for x in xs]

    def where(self, condition, x, y):
        # autograd's where VJP does not unbroadcast: broadcast differentiated operands first
        # (Python scalars stay as they are, so that they do not promote the result's dtype)
        shape = self.broadcast_shapes(np.shape(condition), np.shape(x), np.shape(y))
        x = _broadcast_to(x, shape) if isinstance(x, ArrayBox) else x
        y = _broadcast_to(y, shape) if isinstance(y, ArrayBox) else y
        return anp.where(condition, x, y)

    def take_along_axis(self, x, indices, axis):
        return _take_along_axis(x, np.asarray(self.to_numpy(indices)), axis)

    def diagonal(self, x, offset=0):
        return _diagonal(x, offset)

    def take(self, x, indices, axis):
        # autograd has no VJP for numpy.take; integer-array indexing has one (it accumulates)
        idx = (slice(None),) * (axis % anp.ndim(x)) + (np.asarray(self.to_numpy(indices)),)
        return x[idx]

    def sort(self, x, axis=-1):
        if not isinstance(x, ArrayBox):
            return np.sort(x, axis=axis)
        # autograd differentiates sort of 1-d arrays only; gather by the sorting permutation
        return self.take_along_axis(x, np.argsort(self.to_numpy(x), axis=axis, kind="stable"), axis)

    def cumprod(self, x, axis):
        if not isinstance(x, ArrayBox) or np.shape(x)[axis] == 0:
            return anp.cumprod(x, axis=axis)
        # autograd has no VJP for numpy.cumprod; a chain of products has one (exact with zeros)
        xs = anp.moveaxis(x, axis, 0)
        out = [xs[0]]
        for k in range(1, np.shape(xs)[0]):
            out.append(out[-1] * xs[k])
        return anp.moveaxis(anp.stack(out), 0, axis)

    def flip(self, x, axis):
        # autograd has no VJP for numpy.flip; a reversed slice has one
        axes = {a % anp.ndim(x) for a in ((axis,) if isinstance(axis, int) else axis)}
        return x[tuple(slice(None, None, -1) if i in axes else slice(None)
                       for i in range(anp.ndim(x)))]

    def solve_triangular(self, a, b, lower=True, trans=False):
        # autograd's solve_triangular is 2-d only; batch by looping over leading axes.
        from autograd.scipy.linalg import solve_triangular
        if anp.ndim(a) == 2 and anp.ndim(b) == 2:
            return solve_triangular(a, b, trans=1 if trans else 0, lower=lower)
        batch = self.broadcast_shapes(np.shape(a)[:-2], np.shape(b)[:-2])
        a = _broadcast_to(a, batch + np.shape(a)[-2:])
        b = _broadcast_to(b, batch + np.shape(b)[-2:])
        a2 = anp.reshape(a, (-1,) + np.shape(a)[-2:])
        b2 = anp.reshape(b, (-1,) + np.shape(b)[-2:])
        out = anp.stack([solve_triangular(a2[i], b2[i], trans=1 if trans else 0, lower=lower)
                         for i in range(np.shape(a2)[0])])
        return anp.reshape(out, batch + np.shape(b)[-2:])

    def slogdet(self, a):
        sign, logdet = anp.linalg.slogdet(a)
        return sign, logdet

    def index_update(self, x, index, value):
        return _index_set(x, index, value)

    def index_add(self, x, index, value):
        return _index_set(x, index, value, add=True)

    def dynamic_slice(self, x, start, size, axis=0):
        n = np.shape(x)[axis]
        start = min(max(int(start), 0), n - size)
        idx = (slice(None),) * (axis % anp.ndim(x)) + (slice(start, start + size),)
        return x[idx]

    def dynamic_index(self, x, index, axis=0):
        idx = (slice(None),) * (axis % anp.ndim(x)) + (int(index),)
        return x[idx]

    def dynamic_update_index(self, x, index, value, axis=0):
        idx = (slice(None),) * (axis % anp.ndim(x)) + (int(index),)
        return _index_set(x, idx, value)

    # special functions --------------------------------------------------------------------------
    gammaln = staticmethod(asp.gammaln)
    digamma = staticmethod(asp.digamma)
    erf = staticmethod(asp.erf)
    erfc = staticmethod(asp.erfc)
    erfinv = staticmethod(asp.erfinv)
    ndtri = staticmethod(_ndtri)
    xlogy = staticmethod(_xlogy)
    i0e = staticmethod(_i0e)
    i1e = staticmethod(_i1e)
    gammainc = staticmethod(asp.gammainc)
    gammaincc = staticmethod(asp.gammaincc)

    def polygamma(self, n, x):
        return _keep_dtype(asp.polygamma(n, x), x)

    def ndtr(self, x):
        return _keep_dtype(anorm.cdf(x), x)

    def log_ndtr(self, x):
        return _keep_dtype(anorm.logcdf(x), x)

    def expit(self, x):
        return asp.expit(x)

    def logit(self, p):
        return asp.logit(p)

    # random -------------------------------------------------------------------------------------
    def key(self, seed):
        return host_random.key(seed)

    def split(self, key, num=2):
        return host_random.split(key, num)

    def fold_in(self, key, data):
        return host_random.fold_in(key, data)

    def normal(self, key, shape=(), dtype=None):
        return host_random.normal(key, shape, np.dtype(dtype or self.float_dtype))

    def uniform(self, key, shape=(), dtype=None, minval=0.0, maxval=1.0):
        return host_random.uniform(key, shape, np.dtype(dtype or self.float_dtype), minval, maxval)

    def gamma(self, key, alpha, shape=None):
        alpha = self.asarray(alpha)
        shape = np.shape(alpha) if shape is None else tuple(shape)
        z = host_random.standard_gamma(key, self.to_numpy(alpha), shape, alpha.dtype)
        return _gamma_draw(alpha, z)

    def poisson(self, key, rate, shape=None):
        rate = self.to_numpy(self.asarray(rate))
        shape = np.shape(rate) if shape is None else tuple(shape)
        return host_random.poisson(key, rate, shape, self.float_dtype)

    def binomial(self, key, total_count, probs, shape=None):
        n = self.to_numpy(self.asarray(total_count))
        p = self.to_numpy(self.asarray(probs))
        shape = np.broadcast_shapes(np.shape(n), np.shape(p)) if shape is None else tuple(shape)
        return host_random.binomial(key, n, p, shape, self.float_dtype)

    def randint(self, key, shape, minval, maxval):
        return host_random.randint(key, shape, minval, maxval, self.int_dtype)

    def permutation(self, key, n):
        return host_random.permutation(key, n, self.int_dtype)

    # autodiff -----------------------------------------------------------------------------------
    def _leaf_fn(self, f, args, argnums):
        """Rewrite ``f`` as a function of one list of the leaves of ``args[argnums]``."""
        nums = self._argnums_tuple(argnums)
        flat = [self.tree_flatten(args[i]) for i in nums]
        counts = [len(leaves) for leaves, _ in flat]
        leaves = [leaf for ls, _ in flat for leaf in ls]

        def rebuild(leaf_list):
            out, start = [], 0
            for (_, treedef), c in zip(flat, counts):
                out.append(self.tree_unflatten(treedef, list(leaf_list[start:start + c])))
                start += c
            return out

        def g(leaf_list):
            new = list(args)
            for i, tree in zip(nums, rebuild(leaf_list)):
                new[i] = tree
            return f(*new)

        def package(grads):
            trees = rebuild(grads)
            return trees[0] if isinstance(argnums, int) else tuple(trees)

        return g, leaves, package

    def value_and_grad(self, f, argnums=0, has_aux=False):
        def vg(*args):
            if isinstance(argnums, int) and isinstance(args[argnums], np.ndarray) \
                    and args[argnums].dtype.kind == "f":
                # one array argument: differentiate it directly (autograd boxing a list of
                # leaves and rebuilding the pytree costs 40 us a call, a sampler's hot path)
                def g_one(a):
                    out = f(*args[:argnums], a, *args[argnums + 1:])
                    if has_aux:
                        out, aux_box["aux"] = out
                    return out

                aux_box = {}
                x = args[argnums]
                vjp_fn, val = autograd.make_vjp(g_one)(x)
                grad = vjp_fn(anp.ones_like(val))
                if np.shape(grad) != x.shape or np.result_type(grad) != x.dtype:
                    grad = np.broadcast_to(grad, x.shape).astype(x.dtype)  # as the input
                return ((val, _unbox(aux_box["aux"])) if has_aux else val), grad
            g, leaves, package = self._leaf_fn(f, args, argnums)
            if not leaves:
                out = f(*args)
                return out, package([])
            if has_aux:
                aux_box = {}

                def g_main(leaf_list):
                    val, aux = g(leaf_list)
                    aux_box["aux"] = aux
                    return val

                vjp_fn, val = autograd.make_vjp(g_main)(list(leaves))
                grads = vjp_fn(anp.ones_like(val))
                return (val, _unbox(aux_box["aux"])), package(grads)
            vjp_fn, val = autograd.make_vjp(g)(list(leaves))
            return val, package(vjp_fn(anp.ones_like(val)))

        return vg

    def grad(self, f, argnums=0, has_aux=False):
        vg = self.value_and_grad(f, argnums=argnums, has_aux=has_aux)

        def gradient(*args):
            val, gr = vg(*args)
            return (gr, val[1]) if has_aux else gr

        return gradient

    def vjp(self, f, *primals, has_aux=False):
        g, leaves, package = self._leaf_fn(f, primals, tuple(range(len(primals))))
        aux_box, tree_out = {}, {}

        def g_main(leaf_list):
            out = g(leaf_list)
            if has_aux:
                out, aux_box["aux"] = out
            if isinstance(out, (np.ndarray, np.generic, ArrayBox, float)):
                return out
            # pytree output: autograd traces it as one list box of its leaves
            out_leaves, tree_out["def"] = self.tree_flatten(out)
            return autograd.builtins.list(out_leaves)

        vjp_fn, out = autograd.make_vjp(g_main)(list(leaves))
        if "def" in tree_out:
            treedef = tree_out["def"]
            out = self.tree_unflatten(treedef, list(out))

            def pullback(ct):
                return package(vjp_fn(list(self.tree_leaves(ct))))
        else:
            def pullback(ct):
                return package(vjp_fn(ct))

        return (out, pullback, _unbox(aux_box["aux"])) if has_aux else (out, pullback)

    def jvp(self, f, primals, tangents):
        primals, tangents = tuple(primals), tuple(tangents)
        out, pullback = self.vjp(f, *primals)
        out_leaves, out_def = self.tree_flatten(out)
        tangent_leaves = self.tree_leaves(tangents)

        # J v = d/du <J^T u, v>: the pullback is linear in u, so its own VJP at v is J v.
        def transpose(u_leaves):
            cts = self.tree_leaves(pullback(self.tree_unflatten(out_def, list(u_leaves))))
            return sum(anp.sum(c * t) for c, t in zip(cts, tangent_leaves))

        jv = autograd.grad(transpose)([anp.zeros_like(leaf) for leaf in out_leaves])
        return out, self.tree_unflatten(out_def, list(jv))

    def stop_gradient(self, x):
        return _unbox(x)

    def custom_vjp(self, fun, fwd, bwd):
        prim = primitive(fun)

        def vjp_maker(argnums, ans, args, kwargs):
            _, res = fwd(*args)

            def pullback(g):
                cts = bwd(res, g)
                return tuple(cts[i] for i in argnums)

            return pullback

        defvjp_argnums(prim, vjp_maker)
        return prim


def _unbox(x):
    """Strip autograd boxes from every leaf of a pytree (its value, no gradient)."""
    import optree

    def strip(v):
        while isinstance(v, ArrayBox):
            v = v._value
        return v

    return optree.tree_map(strip, x, none_is_leaf=False)
