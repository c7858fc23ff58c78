"""PyTorch tensors differentiated by ``torch.func``: eager execution, native vmap and forward mode.

Every contract entry maps to a ``torch`` / ``torch.special`` / ``torch.linalg`` / ``torch.func``
call with the documented (NumPy) semantics. Elementwise functions are torch's own, bound as
instance attributes (no wrapper frame), except the few that torch rejects with a Python scalar
operand (``maximum``, ``minimum``, ``arctan2``, ``logaddexp``, comparisons, logical operations),
which convert the scalar first.

Precision and dtypes. ``precision=None`` is float32; ``"float64"`` creates float64 tensors by
passing ``dtype=`` explicitly everywhere. torch's global default dtype is never read for what the
backend creates, and never changed. The integer dtype is int64.

Devices. ``device=None`` is ``"cpu"``; ``"cuda"`` (the current CUDA device), ``"cuda:N"`` and
``"mps"`` are accepted where present. Every array the backend creates is placed on the device;
:meth:`TorchBackend.asarray` moves torch tensors there and keeps their dtype.

Random numbers. Keys are host NumPy ``uint32`` arrays of shape (2,), made, split and folded by
:mod:`agvi.backends.host_random` exactly as on the NumPy backend (so ``key``, ``split`` and
``fold_in`` give identical keys on both). On a CUDA or MPS device each draw comes from a fresh
``torch.Generator(device=...)`` seeded with the 64-bit key (Philox on CUDA). On the CPU, draws
come from the key's NumPy Philox generator (:func:`agvi.backends.host_random.generator`, the NumPy
backend's own, so CPU draws equal the NumPy backend's) and are copied into a tensor: torch's CPU
generator is an MT19937 that keeps only the low 32 bits of its seed, so keys differing in their
first word would repeat the same numbers. Nothing is cached or seeded globally.

Vectorised keys. On the CPU, :meth:`TorchBackend.vmap` over a stack of host keys (as the ELBOs
vectorise particles, ``vmap(fn)(split(key, n))``) runs ``fn`` once: the keys enter as an int64
tensor batched by ``torch.func.vmap`` and each random primitive that receives a batched key (or
batched parameters) draws example by example on the host from that example's key, with the
numbers of the unbatched call; the draws are stacked into a batched tensor. The general case goes
through custom operators (``agvi::host_normal``, ...; registered on first use with
``torch.library.custom_op`` and ``register_vmap``), so it composes with nested ``vmap``,
``grad`` and ``jvp``; a key batched by the innermost ``vmap`` takes a direct path that skips the
operator dispatch. A function that needs a per-example host value (``to_numpy``, Python control
flow on a batched value) makes the call fall back to a loop, with the same numbers.

Gamma draws are reparameterised (Figurnov et al. 2018): the derivative of a draw with respect to
its concentration is ``torch._standard_gamma_grad`` in float32 (relative error up to ~1e-4) and,
in float64, the accurate host routine :func:`agvi.backends._gamma_grad.standard_gamma_grad`
(~1e-14), which inside ``vmap`` runs on the whole batch at once through the custom operator
``agvi::standard_gamma_grad``.

Autodiff is ``torch.func`` (``grad_and_value``, ``vjp``, ``jvp``, ``vmap``): functional,
composable, with native forward mode. Arguments that are not tensors (dicts, NamedTuples, optree
pytrees, NumPy arrays, Python floats) are flattened with optree first, so every pytree of the
base class is accepted; a lone tensor argument takes the direct path. ``has_aux`` outputs may hold
anything (torch.func itself accepts only tensors there). ``custom_vjp``, ``gammainc`` /
``gammaincc`` (torch has no forward-mode rule for them) and the gamma reparameterisation are
``torch.autograd.Function`` subclasses with ``setup_context`` and ``generate_vmap_rule = True``,
so they compose with ``grad``, ``vmap`` and (except ``custom_vjp``, as on JAX) ``jvp``. Such a
Function costs several hundred microseconds inside ``torch.func.grad``, so each is skipped when
no argument carries a derivative.

Special functions are ``torch.special``'s, with float64 accuracy repairs where torch falls short of
SciPy by more than 1e-10: ``ndtr`` (torch's underflows below x ~ -8) is ``erfc(-x/sqrt 2)/2``;
``polygamma(1, x)`` takes its value from ``zeta(2, x)`` (torch's trigamma is good to ~5e-10), and
the first derivative of ``digamma`` is corrected the same way; ``gammainc``/``gammaincc`` use
Temme's expansion where torch's loses digits (a > 20, x near a). ``xlogy``/``xlog1py`` follow
the contract's conventions at x == 0.

Limits (all raise, none is silent): :meth:`TorchBackend.to_numpy` and so ``pure_callback`` cannot
see one example's value inside ``vmap``; a ``while_loop`` whose predicate is batched inside
``vmap`` is not supported (``cond`` and ``switch`` select, as ``jax.vmap`` does); inside
``vmap`` on a CUDA or MPS device, random draws must use an unbatched key and unbatched
parameters (a mapped stack of keys makes :meth:`TorchBackend.vmap` loop there); ``gammainc`` is
not differentiable in ``a``. ``jit`` is the identity (``has_jit`` is False); ``compile_pure``
traces a pure function into a TorchScript graph per input signature (:mod:`._torch_trace`).

References
----------
Paszke et al. (2019), "PyTorch: an imperative style, high-performance deep learning library".
Horace He and Richard Zou (2021), "functorch: JAX-like composable function transforms for PyTorch".
Figurnov, Mohamed and Mnih (2018), "Implicit reparameterization gradients", eq. 6.
"""

from __future__ import annotations

import math
import threading
from typing import Any, NamedTuple

import array_api_compat.torch as _xp_torch
import numpy as np
import optree
import torch
import torch.func as tfunc
from torch._C import _functorch as _fc
from torch._C._functorch import peek_interpreter_stack as _peek_interpreter_stack

from . import host_random
from ._torch_trace import TracedFunction, check_not_tracing, tracing
from .base import RANDOM_PRIMITIVES as _RANDOM_PRIMITIVES
from .base import Backend, FInfo

__all__ = ["TorchBackend"]

_Tensor = torch.Tensor
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int32": torch.int32,
           "int64": torch.int64, "uint32": torch.uint32, "bool": torch.bool}
# NumPy dtype of each torch dtype the backend converts from the host
_NP_OF = {torch.float32: np.float32, torch.float64: np.float64, torch.int32: np.int32,
          torch.int64: np.int64, torch.uint32: np.uint32, torch.bool: np.bool_,
          torch.float16: np.float16, torch.int16: np.int16, torch.int8: np.int8,
          torch.uint8: np.uint8}
_PY_SCALARS = (bool, int, float)
_SQRT1_2 = math.sqrt(0.5)
def _np_dtype(dtype):
    """The NumPy dtype of a floating torch dtype."""
    return np.float64 if dtype == torch.float64 else np.float32


# NumPy names -> torch functions where the names differ (torch.equal is not elementwise).
_RENAMES = {"power": "pow", "equal": "eq", "not_equal": "ne", "less": "lt", "less_equal": "le",
            "greater": "gt", "greater_equal": "ge"}
# Binary functions whose torch version rejects a Python scalar operand.
_TENSOR_ONLY = ("maximum", "minimum", "arctan2", "logaddexp", "equal", "not_equal", "less",
                "less_equal", "greater", "greater_equal", "logical_and", "logical_or")


# --------------------------------------------------------------------------- functorch helpers
def _is_wrapped(x) -> bool:
    return _fc.is_functorch_wrapped_tensor(x)


def _unwrapped(x):
    """``x`` without its ``torch.func`` wrappers (call under ``_DisableFuncTorch``)."""
    while _is_wrapped(x):
        x = _fc.get_unwrapped(x)
    return x


class _BatchedHostError(RuntimeError):
    """A host (NumPy) value was asked of a tensor batched by ``torch.func.vmap``;
    :meth:`TorchBackend.vmap` over host keys catches it and loops over the examples instead."""


def _host_value(x: torch.Tensor) -> np.ndarray:
    """A NumPy copy of the value of ``x``, seen through ``torch.func`` grad/jvp wrappers.

    Raises
    ------
    RuntimeError
        (:class:`_BatchedHostError`) If ``x`` is batched by ``torch.func.vmap`` (one example's
        value is not defined there).
    """
    with torch._C._DisableFuncTorch():
        while _is_wrapped(x):
            if _fc.is_batchedtensor(x):
                raise _BatchedHostError(
                    "a torch array inside B.vmap has no per-example value on the host: "
                    "to_numpy / pure_callback / host random draws cannot run on a batched "
                    "(vmapped) tensor; move the host computation outside vmap or use a loop")
            x = _fc.get_unwrapped(x)
        t = x.detach()
        if t.device.type != "cpu":
            return t.cpu().numpy()
        return np.array(t.numpy(), copy=True)


def _batched(x) -> bool:
    """Whether ``x`` is a tensor batched by ``torch.func.vmap`` (at any level)."""
    if not isinstance(x, _Tensor) or not _is_wrapped(x):
        return False
    with torch._C._DisableFuncTorch():
        while _is_wrapped(x):
            if _fc.is_batchedtensor(x):
                return True
            x = _fc.get_unwrapped(x)
    return False


def _batched_error(exc: RuntimeError) -> bool:
    """Whether ``exc`` is torch.func.vmap refusing data-dependent Python control flow."""
    return str(exc).startswith("vmap:")


# --------------------------------------------------------------------------- autograd Functions
def _gamma_dz_dalpha(alpha, z):
    """d z / d alpha of standard gamma draws ``z`` (implicit reparameterisation)."""
    a = alpha.expand_as(z) if alpha.shape != z.shape else alpha
    if z.dtype == torch.float64:
        try:
            from ._gamma_grad import standard_gamma_grad
            g = standard_gamma_grad(_host_value(a), _host_value(z))
            return torch.from_numpy(np.ascontiguousarray(g, dtype=np.float64)).to(z.device)
        except _BatchedHostError:  # batched inside vmap: the operator's vmap rule unbatches
            return _operator("standard_gamma_grad")(a.detach(), z.detach())
    return torch._standard_gamma_grad(a.to(z.dtype), z)


class _GammaReparam(torch.autograd.Function):
    """``f(alpha, z) = z`` whose derivative in ``alpha`` is ``dz/dalpha`` (Figurnov et al.
    2018, eq. 6); ``z`` is the (non-differentiable) raw draw."""

    generate_vmap_rule = True

    @staticmethod
    def forward(alpha, z):
        return z.view_as(z)

    @staticmethod
    def setup_context(ctx, inputs, output):
        alpha, _ = inputs
        ctx.save_for_backward(alpha, output)
        ctx.save_for_forward(alpha, output)

    @staticmethod
    def backward(ctx, g):
        alpha, z = ctx.saved_tensors
        return (g * _gamma_dz_dalpha(alpha, z)).sum_to_size(alpha.shape), None

    @staticmethod
    def jvp(ctx, alpha_dot, z_dot):
        alpha, z = ctx.saved_tensors
        return alpha_dot * _gamma_dz_dalpha(alpha, z)


def _gamma_density(a, x):
    """Gamma(a, 1) density at ``x``: d P(a, x) / dx."""
    return torch.exp(torch.special.xlogy(a - 1.0, x) - x - torch.special.gammaln(a))


_GAMMAINC_A_MSG = ("{name}(a, x) is differentiable in x only (as on the other backends); a "
                   "gradient with respect to the shape a was requested")


def _visibly_nonzero(t) -> bool:
    try:
        return bool(torch.any(t != 0))
    except RuntimeError:  # batched inside vmap
        return False


def _s_minus_log1p(s):
    """``s - log1p(s)`` for ``s > -1`` without cancellation near 0 (series for |s| < 1/4)."""
    small = torch.abs(s) < 0.25
    t = torch.where(small, s, 0.0)
    acc = torch.zeros_like(t)
    for j in range(28, -1, -1):  # s^2 sum_j (-s)^j / (j + 2); 0.25^29 < 2^-58
        acc = acc * t + (-1.0) ** j / (j + 2)
    return torch.where(small, t * t * acc, s - torch.log1p(s))


def _igamma_temme(a, x, upper):
    """Temme's uniform asymptotic expansion of Q(a, x) (``upper``) or P(a, x), for a > 20 and
    |x - a| < max(0.3 a, 4.5 sqrt(a)) (about Cephes ``igam.c``'s ``asymptotic_series`` region).

    ``Q = erfc(eta sqrt(a/2))/2 + exp(-a eta^2/2) / sqrt(2 pi a) sum_k C_k(eta) a^-k`` with
    ``eta^2/2 = lam - 1 - log(lam)``, ``lam = x/a`` (Temme 1979; DiDonato and Morris 1986), the
    Taylor coefficients of ``C_k`` being those of :mod:`agvi.backends._gamma_grad`.
    """
    from ._gamma_grad import _temme_coefficients
    d = torch.tensor(_temme_coefficients(), dtype=a.dtype, device=a.device)  # (K, N)
    s = (x - a) / a
    eta = torch.sign(s) * torch.sqrt(2.0 * _s_minus_log1p(s))
    powers = torch.pow(torch.unsqueeze(eta, -1),
                       torch.arange(d.shape[1], dtype=a.dtype, device=a.device))
    apow = torch.pow(torch.unsqueeze(a, -1),
                     -torch.arange(d.shape[0], dtype=a.dtype, device=a.device))
    series = torch.sum(torch.matmul(powers, d.T) * apow, dim=-1)
    sgn = 1.0 if upper else -1.0
    return (0.5 * torch.special.erfc(sgn * eta * torch.sqrt(0.5 * a))
            + sgn * torch.exp(-0.5 * a * eta * eta) / torch.sqrt(2.0 * math.pi * a) * series)


def _igamma(a, x, upper):
    """P(a, x) or Q(a, x) (``upper``), values only.

    torch's float64 ``igamma``/``igammac`` lose about seven digits (relative error up to ~2e-9)
    where they use Temme's expansion (a > 20, x near a); there the expansion is
    evaluated here instead (relative error ~1e-15 against mpmath).
    """
    out = torch.special.gammaincc(a, x) if upper else torch.special.gammainc(a, x)
    if out.dtype != torch.float64:
        return out
    a, x = torch.broadcast_tensors(a.to(out.dtype), x.to(out.dtype))
    # Cephes' asymptotic region: |x - a| < 0.3 a, or < 4.5 sqrt(a) for a > 200
    region = (a > 20.0) & (torch.abs(x - a) < torch.clamp(4.5 * torch.sqrt(a), min=0.3 * a))
    safe_a = torch.where(region, a, 30.0)
    safe_x = torch.where(region, x, 30.0)
    return torch.where(region, _igamma_temme(safe_a, safe_x, upper), out)


class _GammaInc(torch.autograd.Function):
    """Regularised incomplete gamma P(a, x) (``upper``: Q = 1 - P) with derivatives in ``x`` in
    both modes (torch has no forward-mode rule for ``igamma``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(a, x, upper):
        return _igamma(a, x, upper)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, x, upper = inputs
        ctx.upper = upper
        ctx.save_for_backward(a, x)
        ctx.save_for_forward(a, x)

    @staticmethod
    def backward(ctx, g):
        a, x = ctx.saved_tensors
        if ctx.needs_input_grad[0]:
            raise NotImplementedError(
                _GAMMAINC_A_MSG.format(name="gammaincc" if ctx.upper else "gammainc"))
        d = _gamma_density(a, x)
        gx = g * (-d if ctx.upper else d)
        return None, gx.sum_to_size(x.shape), None

    @staticmethod
    def jvp(ctx, a_dot, x_dot, _):
        a, x = ctx.saved_tensors
        # torch.func hands every input a tangent (zeros where there is none): raise only for a
        # tangent in `a` that is visibly non-zero (inside vmap it cannot be inspected).
        if a_dot is not None and _visibly_nonzero(a_dot):
            raise NotImplementedError(
                _GAMMAINC_A_MSG.format(name="gammaincc" if ctx.upper else "gammainc"))
        d = _gamma_density(a, x)
        return x_dot * (-d if ctx.upper else d)


class _CustomMeta(NamedTuple):
    """Static description of one custom_vjp call (passed to the Function as a non-tensor)."""

    n_args: int
    n_out: int
    out_def: Any
    res_def: Any
    res_static: tuple  # per residual leaf: None for a tensor (a Function input), else the value


def _make_custom_function(bwd):
    """A ``torch.autograd.Function`` whose backward is ``bwd``.

    Its inputs are ``(meta, *args, *out_leaves, *residual_tensors)``, all computed by ``fwd``
    *outside* the Function, in the differentiated graph: the Function returns views of the
    output leaves and sends cotangents to ``args`` only (through ``bwd``), so the graph of
    ``fwd`` carries no first-order gradient, while a higher-order derivative of ``bwd(res, g)``
    reaches ``args`` through the residuals (as with ``jax.custom_vjp``).
    """

    class _CustomVJP(torch.autograd.Function):
        generate_vmap_rule = True

        @staticmethod
        def forward(meta, *inputs):
            outs = inputs[meta.n_args:meta.n_args + meta.n_out]
            return tuple(o.view_as(o) for o in outs)

        @staticmethod
        def setup_context(ctx, inputs, output):
            meta = inputs[0]
            ctx.meta = meta
            args = inputs[1:1 + meta.n_args]
            ctx.shapes = tuple(a.shape if isinstance(a, _Tensor) else None for a in args)
            ctx.save_for_backward(*inputs[1 + meta.n_args + meta.n_out:])

        @staticmethod
        def backward(ctx, *grads):
            meta = ctx.meta
            saved = iter(ctx.saved_tensors)
            res = optree.tree_unflatten(
                meta.res_def, [next(saved) if v is None else v for v in meta.res_static])
            g = optree.tree_unflatten(meta.out_def, list(grads))
            cts = tuple(bwd(res, g))
            if len(cts) != meta.n_args:
                raise ValueError(f"custom_vjp: bwd returned {len(cts)} cotangents for "
                                 f"{meta.n_args} arguments; it must return one per argument "
                                 "of fun")
            n_rest = meta.n_out + len(ctx.saved_tensors)
            # None for non-tensor arguments; a broadcast cotangent is summed to its argument
            return (None,
                    *(None if shape is None or not isinstance(ct, _Tensor)
                      else ct if ct.shape == shape else ct.sum_to_size(shape)
                      for ct, shape in zip(cts, ctx.shapes, strict=True)),
                    *(None,) * n_rest)

    return _CustomVJP


# --------------------------------------------------------------------------- batched host keys
# Inside TorchBackend.vmap a stack of host keys is an int64 tensor batched by torch.func.vmap.
# On the CPU a random primitive given a batched key (or batched parameters) draws example by
# example on the host (host_random, exactly as the unbatched call) and returns the stacked draws
# with a batch dimension, so the vectorised result equals the loop draw for draw: directly when
# the key is batched by the innermost vmap (TorchBackend._batched_host), else through the custom
# operators below, whose vmap rules torch applies level by level. Operator arguments: (key,
# arrays and static arguments..., out_dtype); the host function gets the key as uint32 NumPy
# and arrays as NumPy; torch converts its result to out_dtype, as the unbatched primitive does.
def _split_host(k, num):
    return host_random.split(k, num).astype(np.int64)


def _fold_in_host(k, data):
    return host_random.fold_in(k, data).astype(np.int64)


def _uniform_host(k, shape, minval, maxval, np_dtype):
    return host_random.uniform(k, shape, np.dtype(np_dtype), minval, maxval)


def _split_many(keys, num):
    return host_random.split_many(keys, num).astype(np.int64)


def _fold_in_many(keys, data):
    return host_random.fold_in_many(keys, data).astype(np.int64)


_MANY = {"split": _split_many, "fold_in": _fold_in_many}


def _host_stack(name, keys, args) -> np.ndarray:
    """The host draws of primitive ``name`` for each key of ``keys`` (n, 2) uint32 with the
    same other arguments, stacked along a new leading axis."""
    many = _MANY.get(name)
    if many is not None and host_random.batched_hash_ok():
        return many(keys, *args)
    host = _HOST_OPERATORS[name][1]
    return np.stack([np.asarray(host(k, *args)) for k in keys])


_S = "int[] shape"
_HOST_OPERATORS = {  # primitive -> (operator schema, host function)
    "split": ("int num", _split_host),
    "fold_in": ("int data", _fold_in_host),
    "normal": (_S, host_random.normal),
    "uniform": (f"{_S}, float minval, float maxval, str np_dtype", _uniform_host),
    "gamma": (f"Tensor alpha, {_S}", host_random.standard_gamma),
    "poisson": (f"Tensor rate, {_S}", host_random.poisson),
    "binomial": (f"Tensor total_count, Tensor probs, {_S}", host_random.binomial),
    "randint": (f"{_S}, int minval, int maxval", host_random.randint),
    "permutation": ("int n", host_random.permutation),
}
_OPERATORS: dict = {}
_OPERATORS_LOCK = threading.Lock()


def _pick(values, mapped, i):
    """Example ``i`` of the mapped values (leading batch axis); the others as they are."""
    return [v[i] if m else v for v, m in zip(values, mapped, strict=True)]


def _host_kernel(name, stacked=False):
    """The CPU kernel of the host operators of primitive ``name``: its draws from ``key``
    ((2,) int64), or (``stacked``) from every key of ``key`` ((n, 2)), stacked
    (:func:`_host_stack`)."""
    host = _HOST_OPERATORS[name][1]

    def impl(key, *args):
        *args, dtype = args
        vals = [a.detach().numpy() if isinstance(a, _Tensor) else a for a in args]
        key = host_random.as_key(key.detach().numpy())
        out = _host_stack(name, key, vals) if stacked else host(key, *vals)
        return torch.from_numpy(np.asarray(out)).to(dtype)

    return impl


def _host_operator(name, host):
    """The custom operator ``agvi::host_<name>`` running ``host`` (see above), with its
    vmap rule."""
    schema = f"(Tensor key, {_HOST_OPERATORS[name][0]}, ScalarType dtype) -> Tensor"
    op = torch.library.custom_op(f"agvi::host_{name}", _host_kernel(name), mutates_args=(),
                                 schema=schema)
    op.register_fake(_fake_draw(host, stacked=False))

    def rule(info, in_dims, *args):
        *args, dtype = args
        mapped = [isinstance(a, _Tensor) and d is not None
                  for a, d in zip(args, in_dims, strict=False)]
        args = [a.movedim(d, 0) if m else a for a, d, m in zip(args, in_dims, mapped, strict=False)]
        if tracing():   # fake tensors have no values: record the draws instead
            if mapped[0] and not any(mapped[1:]):
                return _traced_operator(name, stacked=True)(*args, dtype), 0
            return torch.stack([op(*_pick(args, mapped, i), dtype)
                                for i in range(info.batch_size)]), 0
        try:
            vals = [_host_value(a) if isinstance(a, _Tensor) else a for a in args]
        except _BatchedHostError:  # batched by an enclosing vmap too: one call per example
            return torch.stack([op(*_pick(args, mapped, i), dtype)
                                for i in range(info.batch_size)]), 0
        vals[0] = host_random.as_key(vals[0])  # validates every key at once
        if mapped[0] and not any(mapped[1:]):
            out = _host_stack(name, vals[0], vals[1:])
        else:
            out = np.stack([np.asarray(host(*_pick(vals, mapped, i)))
                            for i in range(info.batch_size)])
        return torch.from_numpy(out).to(dtype), 0

    op.register_vmap(rule)
    return op


def _fake_draw(host, stacked):
    """The shape function of a host operator (for tracing on fake tensors): the host function
    run once on a fixed key and parameters of ones of the same shapes."""
    def fake(key, *args):
        *args, dtype = args
        vals = [np.ones(tuple(a.shape)) if isinstance(a, _Tensor) else a for a in args]
        shape = np.shape(host(host_random.key(0), *vals))
        return key.new_empty(((key.shape[0],) if stacked else ()) + shape, dtype=dtype)

    return fake


_TRACE_LIBRARY: list = []


def _traced_operator(name, stacked):
    """``agvi::traced_<name>(key, ...)`` (``stacked``: ``agvi::traced_stack_<name>(keys (n, 2),
    ...)``, the draws of every key of a stack, :func:`_host_stack`): what a graph traced by
    :meth:`TorchBackend.compile_pure` records for a draw. Plain CPU kernels with a shape
    function, registered through ``torch.library.Library``: a call costs about 10 us, against
    15 us through ``custom_op``'s autograd and compiler wrappers (keys need neither)."""
    op_name = f"traced_{'stack_' if stacked else ''}{name}"
    op = _OPERATORS.get(op_name)
    if op is not None:
        return op
    with _OPERATORS_LOCK:
        op = _OPERATORS.get(op_name)
        if op is None:
            if not _TRACE_LIBRARY:
                _TRACE_LIBRARY.append(torch.library.Library("agvi", "FRAGMENT"))
            lib = _TRACE_LIBRARY[0]
            lib.define(f"{op_name}(Tensor key, {_HOST_OPERATORS[name][0]}, ScalarType dtype) "
                       "-> Tensor")
            lib.impl(op_name, _host_kernel(name, stacked), "CPU")
            torch.library.register_fake(f"agvi::{op_name}",
                                        _fake_draw(_HOST_OPERATORS[name][1], stacked), lib=lib)
            op = _OPERATORS[op_name] = getattr(torch.ops.agvi, op_name).default
    return op


def _standard_gamma_grad_operator():
    """``agvi::standard_gamma_grad(alpha, z)``: the host routine (float64) as an elementwise
    operator whose vmap rule applies it to the whole batch at once."""
    from ._gamma_grad import standard_gamma_grad

    def impl(alpha, z):
        g = standard_gamma_grad(_host_value(alpha), _host_value(z))
        return torch.from_numpy(np.ascontiguousarray(g, dtype=np.float64)).to(z.device)

    op = torch.library.custom_op("agvi::standard_gamma_grad", impl, mutates_args=(),
                                 schema="(Tensor alpha, Tensor z) -> Tensor")

    def rule(info, in_dims, alpha, z):
        n = info.batch_size
        # the same logical shape per example: one (n, ...) array each
        alpha, z = (x.unsqueeze(0).expand(n, *x.shape) if d is None else x.movedim(d, 0)
                    for x, d in zip((alpha, z), in_dims, strict=True))
        try:
            g = standard_gamma_grad(_host_value(alpha), _host_value(z))
        except _BatchedHostError:  # batched by an enclosing vmap too
            return op(alpha, z), 0
        return torch.from_numpy(np.ascontiguousarray(g, dtype=np.float64)).to(z.device), 0

    op.register_vmap(rule)
    return op


def _operator(name):
    """The custom operator of the primitive ``name`` (registered on first use; the first call
    of any custom operator imports ``torch._dynamo``, about a second, as ``torch.func.grad``
    through an ``autograd.Function`` does)."""
    op = _OPERATORS.get(name)
    if op is None:
        with _OPERATORS_LOCK:  # torch refuses to register an operator twice
            op = _OPERATORS.get(name)
            if op is None:
                op = _OPERATORS[name] = (
                    _standard_gamma_grad_operator() if name == "standard_gamma_grad"
                    else _host_operator(name, _HOST_OPERATORS[name][1]))
    return op


# --------------------------------------------------------------------------- the backend
class TorchBackend(Backend):
    """PyTorch backend (name ``"torch"``, alias ``"pytorch"``): ``torch.func`` autodiff, native
    ``vmap`` and forward mode, eager Python control flow.

    Parameters
    ----------
    precision : {"float32", "float64"} or None
        Floating dtype of every created array; ``None`` is float32. Passed explicitly to every
        creation call; torch's global default dtype is neither used nor changed.
    device : str, torch.device or None
        ``None`` or ``"cpu"``; ``"cuda"`` (the current CUDA device), ``"cuda:N"``, ``"mps"``.
    trace : bool
        :meth:`compile_pure` traces pure functions into graphs (default), which SVI uses for
        its step and MCMC for the log density's gradient; with False everything runs eagerly
        (Python side effects in a model, guide or loss then happen at every call, as in Pyro),
        and ``compiles_pure`` is False.

    Raises
    ------
    ValueError
        If ``precision`` is not one of the above, or ``device`` is not a device name or is not
        present on this machine (the message lists :meth:`available_devices`).

    Notes
    -----
    See the module docstring for random numbers (host keys; NumPy Philox draws on the CPU,
    ``torch.Generator`` elsewhere), pytrees (optree, with a direct path for tensors) and the
    limits of ``vmap``.
    """

    name = "torch"
    install_extra = "torch"
    has_jit = False
    has_vmap = True
    supports_forward_mode = True
    compiles_control_flow = False
    compiles_pure = True

    def __init__(self, precision=None, device=None, trace=True):
        self._check_precision(precision)
        if not isinstance(trace, bool):
            raise ValueError(f"trace must be True or False, got {trace!r}")
        self.compiles_pure = trace
        dev = self._resolve_device(device)
        super().__init__(precision=precision, device=None)
        self._device = dev
        self.device = _device_name(dev)
        self._cpu = dev.type == "cpu"
        self._float = _DTYPES[self.precision]
        self._int = torch.int64
        self._bind_elementwise(torch, _RENAMES)
        for name in _TENSOR_ONLY:
            setattr(self, name, self._scalar_operands(getattr(torch, _RENAMES.get(name, name))))

    def _default_precision(self) -> str:
        return "float32"

    def __reduce__(self):
        # the bound closures are not picklable: rebuild from the constructor arguments
        return (type(self), (self.precision, self.device))

    # ------------------------------------------------------------------ devices
    def _resolve_device(self, device) -> torch.device:
        """The ``torch.device`` named by ``device`` (None: the CPU), checked to exist here."""
        if device is None:
            return torch.device("cpu")
        if isinstance(device, torch.device):
            device = str(device)
        if not isinstance(device, str):
            raise ValueError(f"device must be a string such as 'cpu' or 'cuda:0', a "
                             f"torch.device or None, got {device!r}")
        kind, _, num = device.strip().lower().partition(":")
        if kind == "gpu":
            kind = "cuda"
        if kind not in ("cpu", "cuda", "mps") or (num and not num.isdigit()):
            raise ValueError(f"device {device!r} is not a device name; expected 'cpu', 'cuda', "
                             f"'cuda:N' or 'mps' (available here: {self.available_devices()})")
        if kind == "cpu":
            return torch.device("cpu")
        if kind == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(num) if num else (torch.cuda.current_device() if count else 0)
            if index >= count:
                raise ValueError(
                    f"device {device!r} is not available to torch on this machine; available "
                    f"devices: {self.available_devices()} (a GPU needs a CUDA build of torch "
                    f"and a visible GPU)")
            return torch.device("cuda", index)
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"device {device!r} is not available to torch on this machine; "
                             f"available devices: {self.available_devices()}")
        return torch.device("mps")

    def available_devices(self) -> list:
        """Names of the devices torch can use here.

        Returns
        -------
        list of str
            ``"cpu"``, then ``"cuda:0"``, ``"cuda:1"``, ... and ``"mps"`` where present.
        """
        names = ["cpu"]
        if torch.cuda.is_available():
            names.extend(f"cuda:{i}" for i in range(torch.cuda.device_count()))
        if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
            names.append("mps")
        return names

    def device_of(self, x):
        """The device of ``x`` as ``"cpu"``, ``"cuda:N"`` or ``"mps"`` (host arrays: ``"cpu"``)."""
        if isinstance(x, _Tensor):
            return _device_name(x.device)
        return "cpu"

    def to_device(self, x, device):
        """``x`` (a tensor or host array) moved to ``device``.

        Raises
        ------
        ValueError
            If ``device`` is unknown or absent here.
        """
        dev = self._resolve_device(device)
        if not isinstance(x, _Tensor):
            x = self.asarray(x)
        return x.to(dev)

    # ------------------------------------------------------------------ dtypes
    @property
    def xp(self):
        return _xp_torch

    @property
    def float_dtype(self):
        return self._float

    @property
    def int_dtype(self):
        return self._int

    def dtype(self, name):
        """The torch dtype named ``name`` (a torch dtype is returned as is).

        Raises
        ------
        ValueError
            If ``name`` is not one of "float32", "float64", "int32", "int64", "uint32", "bool".
        """
        if isinstance(name, torch.dtype):
            return name
        try:
            key = name if isinstance(name, str) else str(np.dtype(name))
            return _DTYPES[key.replace("torch.", "")]
        except (KeyError, TypeError):
            raise ValueError(f"unknown dtype name {name!r}; expected one of "
                             f"{list(_DTYPES)}") from None

    def _dt(self, dtype):
        """A torch dtype from None (float_dtype), a torch dtype, a name or a NumPy dtype."""
        if dtype is None:
            return self._float
        if isinstance(dtype, torch.dtype):
            return dtype
        return self.dtype(dtype)

    def astype(self, x, dtype):
        dtype = self._dt(dtype)
        if isinstance(x, _Tensor):
            return x if x.dtype == dtype else x.to(dtype)
        return self.asarray(x, dtype=dtype)

    def is_floating(self, x) -> bool:
        if isinstance(x, _Tensor):
            return x.is_floating_point()
        return super().is_floating(x)

    def finfo(self, dtype=None) -> FInfo:
        f = torch.finfo(self._dt(dtype))
        return FInfo(float(f.eps), float(f.tiny), float(f.max), float(f.min), int(f.bits))

    # ------------------------------------------------------------------ arrays
    def is_array(self, x) -> bool:
        return isinstance(x, _Tensor)  # functorch-wrapped tensors included

    def asarray(self, x, dtype=None):
        """Convert ``x`` to a tensor on :attr:`device`.

        Torch tensors keep their dtype (unless ``dtype`` is given) and move to the device; host
        data (NumPy arrays, Python scalars and nested lists) is copied: floating input becomes
        :attr:`float_dtype`, integer input int64 (``uint32``, the key dtype, stays ``uint32``),
        booleans stay boolean. Lists of tensors are stacked (differentiably).

        Raises
        ------
        TypeError
            If ``x`` is an array of another framework (JAX): the message names both.
        """
        if isinstance(x, _Tensor):
            if dtype is not None:
                dtype = self._dt(dtype)
                if x.dtype != dtype or x.device != self._device:
                    return x.to(device=self._device, dtype=dtype)
                return x
            return x if x.device == self._device else x.to(self._device)
        kind = type(x)
        if kind is float and (dtype is None or dtype is self._float):
            # Python floats (distribution parameters): 2x cheaper than the NumPy route below
            return torch.scalar_tensor(x, dtype=self._float, device=self._device)
        if (kind is np.ndarray and self._cpu and x.dtype == _NP_OF[self._float]
                and (dtype is None or dtype is self._float)):
            # host float vectors on the hot paths of the eager samplers: copy, no checks needed
            return torch.from_numpy(x.copy())
        self._check_foreign(x)
        if isinstance(x, (list, tuple)) and x and any(
                isinstance(leaf, _Tensor) for leaf in optree.tree_leaves(list(x))):
            out = torch.stack([self.asarray(e) for e in x])
            return out if dtype is None else out.to(self._dt(dtype))
        arr = np.asarray(x)
        if dtype is None:
            kind = arr.dtype.kind
            if kind == "f":
                dtype = self._float
            elif kind in "iu" and arr.dtype != np.uint32:
                dtype = self._int
            elif kind in "biu":
                dtype = _DTYPES["bool" if kind == "b" else "uint32"]
        else:
            dtype = self._dt(dtype)
        np_dtype = _NP_OF.get(dtype)
        # a fresh C-contiguous copy: no aliasing of the caller's (possibly read-only) memory
        host = np.array(arr, dtype=np_dtype if np_dtype is not None else arr.dtype,
                        order="C", copy=True)
        out = torch.from_numpy(host)
        if dtype is not None and out.dtype != dtype:
            out = out.to(dtype)
        return out if self._cpu else out.to(self._device)

    def to_numpy(self, x):
        """A NumPy copy of ``x``: detached, on the host; also inside ``torch.func.grad`` / ``jvp``.

        Raises
        ------
        RuntimeError
            Inside ``vmap`` on a batched tensor (no single value exists there).
        """
        if isinstance(x, _Tensor):
            if x.device.type == "cpu" and not x.requires_grad and not _is_wrapped(x):
                return x.numpy().copy()   # the common case, without _host_value's unwrapping
            return _host_value(x)
        return np.array(x, copy=True)

    def shape(self, x) -> tuple:
        return tuple(x.shape)

    def ndim(self, x) -> int:
        return x.dim()

    def size(self, x) -> int:
        return x.numel()

    # creation (explicit dtype and device) -----------------------------------------------------
    def zeros(self, shape, dtype=None):
        return torch.zeros(_shape(shape), dtype=self._dt(dtype), device=self._device)

    def ones(self, shape, dtype=None):
        return torch.ones(_shape(shape), dtype=self._dt(dtype), device=self._device)

    def full(self, shape, fill_value, dtype=None):
        if isinstance(fill_value, _Tensor):  # keep a traced fill value differentiable
            return self.zeros(shape, dtype) + fill_value
        return torch.full(_shape(shape), fill_value, dtype=self._dt(dtype), device=self._device)

    def zeros_like(self, x):
        return torch.zeros_like(x)

    def ones_like(self, x):
        return torch.ones_like(x)

    def full_like(self, x, fill_value):
        if isinstance(fill_value, _Tensor):
            return torch.zeros_like(x) + fill_value
        return torch.full_like(x, fill_value)

    def eye(self, n, dtype=None):
        return torch.eye(int(n), dtype=self._dt(dtype), device=self._device)

    def arange(self, start, stop=None, step=1, dtype=None):
        if stop is None:
            start, stop = 0, start
        return torch.arange(_num(start), _num(stop), _num(step),
                            dtype=self._int if dtype is None else self._dt(dtype),
                            device=self._device)

    def linspace(self, start, stop, num, dtype=None):
        return torch.linspace(start, stop, int(num), dtype=self._dt(dtype), device=self._device)

    # shape manipulation -------------------------------------------------------------------------
    def reshape(self, x, shape):
        return torch.reshape(x, _shape(shape))

    def broadcast_to(self, x, shape):
        return torch.broadcast_to(x, _shape(shape))

    def broadcast_arrays(self, *xs):
        return list(torch.broadcast_tensors(*xs))

    def expand_dims(self, x, axis):
        if isinstance(axis, int):
            return torch.unsqueeze(x, axis)
        nd = x.dim() + len(axis)
        for a in sorted(a % nd for a in axis):
            x = torch.unsqueeze(x, a)
        return x

    def squeeze(self, x, axis=None):
        """``x`` without the length-1 axis (or tuple of axes) ``axis`` (None: all of them).

        Raises
        ------
        ValueError
            If a named axis does not have length 1 (as NumPy; torch would silently keep it).
        """
        if axis is None:
            return torch.squeeze(x)
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        shape = x.shape
        for a in axes:
            if shape[a] != 1:
                raise ValueError(f"squeeze: axis {a} of an array of shape {tuple(shape)} has "
                                 f"length {shape[a]}, expected 1")
        return torch.squeeze(x, axes)

    def moveaxis(self, x, source, destination):
        return torch.movedim(x, source, destination)

    def swapaxes(self, x, axis1, axis2):
        return torch.swapaxes(x, axis1, axis2)

    def matrix_transpose(self, x):
        return torch.transpose(x, -1, -2)

    def concatenate(self, xs, axis=0):
        return torch.cat(list(xs), dim=axis)

    def stack(self, xs, axis=0):
        return torch.stack(list(xs), dim=axis)

    def flip(self, x, axis=None):
        if axis is None:
            axis = tuple(range(x.dim()))
        return torch.flip(x, (axis,) if isinstance(axis, int) else tuple(axis))

    def tile(self, x, reps):
        return torch.tile(x, (reps,) if isinstance(reps, int) else tuple(reps))

    def repeat(self, x, repeats, axis):
        return torch.repeat_interleave(x, repeats, dim=axis)

    def tril(self, x, k=0):
        return torch.tril(x, diagonal=k)

    def triu(self, x, k=0):
        return torch.triu(x, diagonal=k)

    def diagonal(self, x, offset=0):
        return torch.diagonal(x, offset=offset, dim1=-2, dim2=-1)

    def diag_embed(self, x):
        return torch.diag_embed(x)

    def where(self, condition, x, y):
        if not isinstance(condition, _Tensor):
            condition = self.asarray(condition)
        if not isinstance(x, _Tensor) and not isinstance(y, _Tensor):
            x = self.asarray(x)  # two Python scalars would give torch's default dtype
        return torch.where(condition, x, y)

    def take(self, x, indices, axis=None):
        if not isinstance(indices, _Tensor):
            indices = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=x.device)
        if axis is None:
            return torch.reshape(x, (-1,))[indices]
        return x[(slice(None),) * (axis % x.dim()) + (indices,)]

    def take_along_axis(self, x, indices, axis):
        return torch.take_along_dim(x, indices, dim=axis)

    def cumsum(self, x, axis):
        return torch.cumsum(x, dim=axis)

    def cumprod(self, x, axis):
        return torch.cumprod(x, dim=axis)

    def sort(self, x, axis=-1):
        return torch.sort(x, dim=axis, stable=True).values

    def argsort(self, x, axis=-1):
        return torch.argsort(x, dim=axis, stable=True)

    def clip(self, x, min=None, max=None):
        if min is None and max is None:
            return x
        return torch.clamp(x, min=min, max=max)

    # reductions ---------------------------------------------------------------------------------
    def sum(self, x, axis=None, keepdims=False):
        return torch.sum(x, dim=axis, keepdim=keepdims)

    def mean(self, x, axis=None, keepdims=False):
        if not x.is_floating_point():  # NumPy averages integers in floating point
            x = x.to(self._float)
        return torch.mean(x, dim=axis, keepdim=keepdims)

    def prod(self, x, axis=None, keepdims=False):
        if axis is None:
            out = torch.prod(x)
            return out.reshape((1,) * x.dim()) if keepdims else out
        if isinstance(axis, int):
            return torch.prod(x, dim=axis, keepdim=keepdims)
        nd = x.dim()
        axes = sorted((a % nd for a in axis), reverse=True)
        for a in axes:
            x = torch.prod(x, dim=a, keepdim=keepdims)
        return x

    def max(self, x, axis=None, keepdims=False):
        return torch.amax(x, dim=() if axis is None else axis, keepdim=keepdims)

    def min(self, x, axis=None, keepdims=False):
        return torch.amin(x, dim=() if axis is None else axis, keepdim=keepdims)

    def argmax(self, x, axis=-1):
        return torch.argmax(x, dim=axis)

    def argmin(self, x, axis=-1):
        return torch.argmin(x, dim=axis)

    def any(self, x, axis=None, keepdims=False):
        return torch.any(x, dim=axis, keepdim=keepdims)

    def all(self, x, axis=None, keepdims=False):
        return torch.all(x, dim=axis, keepdim=keepdims)

    def var(self, x, axis=None, keepdims=False, ddof=0):
        return torch.var(x, dim=axis, correction=ddof, keepdim=keepdims)

    def std(self, x, axis=None, keepdims=False, ddof=0):
        return torch.std(x, dim=axis, correction=ddof, keepdim=keepdims)

    def norm(self, x, axis=-1, keepdims=False):
        # vector_norm's derivative at 0 is 0 (a subgradient), not the nan of sqrt(sum(x**2))
        return torch.linalg.vector_norm(x, dim=axis, keepdim=keepdims)

    def logsumexp(self, x, axis=None, keepdims=False):
        if axis is None:
            if x.dim() == 0:
                return x
            axis = tuple(range(x.dim()))
        return torch.logsumexp(x, dim=axis, keepdim=keepdims)

    # linear algebra -----------------------------------------------------------------------------
    def matmul(self, a, b):
        return torch.matmul(a, b)

    def einsum(self, subscripts, *operands):
        return torch.einsum(subscripts, *operands)

    def cholesky(self, a):
        return torch.linalg.cholesky(a)

    def solve_triangular(self, a, b, lower=True, trans=False):
        if trans:  # a.T is triangular on the other side
            return torch.linalg.solve_triangular(torch.transpose(a, -1, -2), b, upper=lower)
        return torch.linalg.solve_triangular(a, b, upper=not lower)

    def cho_solve(self, chol, b):
        return torch.cholesky_solve(b, chol, upper=False)

    def solve(self, a, b):
        return torch.linalg.solve(a, b)

    def inv(self, a):
        return torch.linalg.inv(a)

    def slogdet(self, a):
        sign, logdet = torch.linalg.slogdet(a)
        return sign, logdet

    def eigh(self, a):
        w, v = torch.linalg.eigh(a)
        return w, v

    # functional updates -------------------------------------------------------------------------
    def _flat_positions(self, x, index):
        """Flat positions of ``x[index]`` (an int64 tensor of the indexed shape)."""
        return torch.arange(x.numel(), device=x.device).reshape(x.shape)[index]

    def _index_put(self, x, index, value, accumulate):
        """Out-of-place ``x[index] = value`` (or ``+=``) through flat positions: differentiable
        in ``x`` and ``value`` and vmappable whichever of them is batched."""
        pos = self._flat_positions(x, index)
        value = torch.broadcast_to(self._operand(value, x), pos.shape)
        out = torch.index_put(torch.reshape(x, (-1,)), (torch.reshape(pos, (-1,)),),
                              torch.reshape(value, (-1,)), accumulate=accumulate)
        return torch.reshape(out, x.shape)

    def index_update(self, x, index, value):
        if not isinstance(x, _Tensor):
            x = self.asarray(x)
        index = _torch_index(index, x.device)
        value = self._operand(value, x)
        out = x.clone()
        try:
            out[index] = value
        except RuntimeError as exc:
            if not _batched_error(exc):
                raise
            # inside vmap with a batched value and an unbatched x: no in-place write possible
            return self._index_put(x, index, value, accumulate=False)
        return out

    def index_add(self, x, index, value):
        if not isinstance(x, _Tensor):
            x = self.asarray(x)
        return self._index_put(x, _torch_index(index, x.device), value, accumulate=True)

    def dynamic_slice(self, x, start, size, axis=0):
        axis = axis % x.dim()
        n = x.shape[axis]
        size = int(size)
        try:
            s = int(start)
        except RuntimeError as exc:  # a batched start inside vmap: gather instead
            if not _batched_error(exc):
                raise
            s = torch.clamp(start, 0, n - size)
            return torch.index_select(x, axis, s + torch.arange(size, device=x.device))
        s = min(max(s, 0), n - size)
        return torch.narrow(x, axis, s, size)

    def dynamic_index(self, x, index, axis=0):
        axis = axis % x.dim()
        try:
            i = int(index)
        except RuntimeError as exc:
            if not _batched_error(exc):
                raise
            i = torch.where(index < 0, index + x.shape[axis], index)
            return torch.squeeze(torch.index_select(x, axis, torch.reshape(i, (1,))), axis)
        return torch.select(x, axis, i)

    def dynamic_update_index(self, x, index, value, axis=0):
        axis = axis % x.dim()
        try:
            i = int(index)
        except RuntimeError as exc:
            if not _batched_error(exc):
                raise
            n = x.shape[axis]
            i = torch.where(index < 0, index + n, index)
            shape = [1] * x.dim()
            shape[axis] = n
            mask = torch.reshape(torch.arange(n, device=x.device) == i, shape)
            return torch.where(mask, torch.unsqueeze(self._operand(value, x), axis), x)
        return self.index_update(x, (slice(None),) * axis + (i,), value)

    # elementwise helpers ------------------------------------------------------------------------
    def _operand(self, v, like):
        """``v`` as a tensor to combine with the tensor ``like`` (Python scalars take ``like``'s
        dtype where the kinds agree, as NumPy's weak scalars; floats with integers take
        :attr:`float_dtype`)."""
        if isinstance(v, _Tensor):
            return v if v.dtype == like.dtype else v.to(like.dtype)
        if isinstance(v, _PY_SCALARS):
            if like.is_floating_point() or (isinstance(v, int) and like.dtype != torch.bool) \
                    or isinstance(v, bool):
                dtype = like.dtype
            else:
                dtype = self._float if isinstance(v, float) else self._int
            return torch.tensor(v, dtype=dtype, device=like.device)
        return self.asarray(v).to(like.dtype)

    def _scalar_operands(self, fn):
        """``fn(x1, x2)`` accepting a Python scalar (or host array) on either side."""
        def op(x1, x2):
            if isinstance(x1, _Tensor):
                if not isinstance(x2, _Tensor):
                    x2 = self._scalar_like(x2, x1)
            elif isinstance(x2, _Tensor):
                x1 = self._scalar_like(x1, x2)
            else:
                x1, x2 = self.asarray(x1), self.asarray(x2)
            return fn(x1, x2)

        op.__name__ = op.__qualname__ = getattr(fn, "__name__", "op")
        op.__doc__ = f"torch.{op.__name__} accepting a Python scalar operand."
        return op

    def _scalar_like(self, v, like):
        if isinstance(v, _PY_SCALARS):
            return self._operand(v, like)
        return self.asarray(v)

    # special functions --------------------------------------------------------------------------
    gammaln = staticmethod(torch.special.gammaln)

    def digamma(self, x):
        out = torch.special.digamma(x)
        if x.dtype != torch.float64 or not (x.requires_grad or _is_wrapped(x)):
            return out
        # torch differentiates digamma with its trigamma, accurate to ~5e-10 only. Add a term
        # whose value is exactly 0 and whose derivative is the error of that trigamma against
        # zeta(2, x), so first derivatives are accurate to rounding (second ones stay torch's).
        x0 = x.detach()
        err = torch.special.zeta(2.0, x0) - torch.special.polygamma(1, x0)
        return out + (x - x0) * torch.where(torch.isfinite(err), err, 0.0)
    erf = staticmethod(torch.special.erf)
    erfc = staticmethod(torch.special.erfc)
    erfinv = staticmethod(torch.special.erfinv)

    def ndtr(self, x):
        # torch.special.ndtr is 1/2 (1 + erf(x/sqrt 2)): it loses all digits below x ~ -8 and
        # flushes to 0 there; erfc keeps full relative accuracy in the lower tail (as SciPy).
        return 0.5 * torch.special.erfc(x * -_SQRT1_2)
    ndtri = staticmethod(torch.special.ndtri)
    log_ndtr = staticmethod(torch.special.log_ndtr)
    expit = staticmethod(torch.special.expit)
    i0e = staticmethod(torch.special.i0e)
    i1e = staticmethod(torch.special.i1e)
    def log_expit(self, x):
        # torch.nn.functional.logsigmoid is exact too but takes milliseconds per call on small
        # tensors when several threads contend; -softplus(-x) costs one logaddexp
        return -self.softplus(-x)

    def polygamma(self, n, x):
        n = int(n)
        out = torch.special.polygamma(n, x)
        if n != 1:
            return out
        # torch's trigamma is an asymptotic series accurate to ~5e-10 only; the Hurwitz zeta
        # zeta(2, x) is accurate to rounding. Its value is taken, torch's derivatives kept
        # (zeta has no forward-mode rule; d/dx trigamma = polygamma(2, x) is accurate).
        return out + (torch.special.zeta(2.0, x.detach()) - out.detach())

    def logit(self, p):
        return torch.special.logit(p)

    def softplus(self, x):
        # torch's kernel returns x itself above `threshold`; at 40 the omitted log1p(exp(-x))
        # is below half an ulp of x in float64, so the result is exact (and logaddexp(x, 0)
        # costs a quarter more, forward and backward)
        return torch.nn.functional.softplus(x, threshold=40.0)

    def _pair(self, x, y):
        """Both operands as tensors (a Python scalar takes the other operand's dtype)."""
        if not isinstance(x, _Tensor):
            x = self._scalar_like(x, y) if isinstance(y, _Tensor) else self.asarray(x)
        if not isinstance(y, _Tensor):
            y = self._scalar_like(y, x)
        return x, y

    def xlogy(self, x, y):
        x, y = self._pair(x, y)
        # torch's xlogy has d/dy = x / y, nan at x == y == 0: y is replaced by 1 there only, so
        # the value and d/dy are 0 where x == 0 and d/dx = log(y) elsewhere (the contract)
        return torch.special.xlogy(x, torch.where((x == 0) & (y == 0), 1.0, y))

    def xlog1py(self, x, y):
        x, y = self._pair(x, y)
        return torch.special.xlog1py(x, torch.where((x == 0) & (y == -1), 0.0, y))

    def softmax(self, x, axis=-1):
        if isinstance(axis, int):
            return torch.softmax(x, dim=axis)
        return super().softmax(x, axis=axis)

    def log_softmax(self, x, axis=-1):
        if isinstance(axis, int):
            return torch.log_softmax(x, dim=axis)
        return super().log_softmax(x, axis=axis)

    def _gammainc(self, a, x, upper):
        if not isinstance(x, _Tensor):
            x = self.asarray(x)
        if not isinstance(a, _Tensor):
            a = self._scalar_like(a, x)
        if not (x.requires_grad or a.requires_grad or _is_wrapped(x) or _is_wrapped(a)):
            return _igamma(a, x, upper)  # nothing to differentiate: skip the Function
        return _GammaInc.apply(a, x, upper)

    def gammainc(self, a, x):
        """Regularised lower incomplete gamma P(a, x), differentiable in ``x`` (both modes).

        Raises
        ------
        NotImplementedError
            When a derivative with respect to ``a`` is requested.
        """
        return self._gammainc(a, x, False)

    def gammaincc(self, a, x):
        """Regularised upper incomplete gamma Q(a, x), differentiable in ``x`` (both modes).

        Raises
        ------
        NotImplementedError
            When a derivative with respect to ``a`` is requested.
        """
        return self._gammainc(a, x, True)

    def multigammaln(self, a, d):
        if not isinstance(a, _Tensor):
            a = self.asarray(a)
        if not a.is_floating_point():
            a = a.to(self._float)
        j = torch.arange(int(d), dtype=a.dtype, device=a.device)
        return (d * (d - 1) / 4.0) * math.log(math.pi) + torch.sum(
            torch.special.gammaln(torch.unsqueeze(a, -1) - j / 2.0), dim=-1)

    # ------------------------------------------------------------------ random
    @staticmethod
    def _host_key(key):
        check_not_tracing("a random draw")   # a traced graph would freeze the numbers
        return host_random.as_key(_host_value(key) if isinstance(key, _Tensor) else key)

    def _batched_draw(self, key, *params) -> bool:
        """Whether a CPU draw has its key or an array parameter batched by ``vmap`` (see
        :meth:`vmap`), or a tensor key while :meth:`compile_pure` traces; it is then drawn by
        :meth:`_batched_host` (through the custom operators, which a trace records)."""
        return self._cpu and (_batched(key) or any(_batched(p) for p in params)
                              or (isinstance(key, _Tensor) and tracing()))

    @staticmethod
    def _batched_host(name, key, params, static, dtype):
        """The primitive ``name`` drawn per example on the host (see the batched host keys
        section): ``host(key, *params, *static)`` converted to ``dtype``.

        Fast path, the usual case (particles): the key is batched by the innermost ``vmap``
        over a plain tensor and no parameter is batched; the draws are stacked and given that
        vmap's batch dimension directly (what ``torch.func.vmap`` does to its inputs), which
        saves the custom operator's dispatch (about 0.1 ms a call). Anything else goes
        through the operator, whose vmap rule torch applies level by level.
        """
        if (isinstance(key, _Tensor) and _fc.is_batchedtensor(key)
                and _fc.maybe_get_level(key) == _fc.current_level()
                and not _is_wrapped(_fc.get_unwrapped(key))
                and not any(_batched(p) for p in params)):
            level, bdim = _fc.maybe_get_level(key), _fc.maybe_get_bdim(key)
            with torch._C._DisableFuncTorch():
                keys = _fc.get_unwrapped(key).movedim(bdim, 0)
                if tracing():
                    out = _traced_operator(name, stacked=True)(
                        keys, *(_unwrapped(p).detach() for p in params), *static, dtype)
                else:
                    vals = [_host_value(p) for p in params]
                    keys = host_random.as_key(keys.numpy())
                    out = torch.from_numpy(_host_stack(name, keys, (*vals, *static))).to(dtype)
            return _fc._add_batch_dim(out, 0, level)
        if not isinstance(key, _Tensor):
            key = torch.from_numpy(host_random.as_key(key).astype(np.int64))
        if tracing() and not _is_wrapped(key) and not any(_is_wrapped(p) for p in params):
            return _traced_operator(name, stacked=False)(key, *(p.detach() for p in params),
                                                         *static, dtype)
        return _operator(name)(key, *(p.detach() for p in params), *static, dtype)

    def key(self, seed):
        """A host key (NumPy uint32, shape (2,)); identical to the NumPy backend's.

        Raises
        ------
        ValueError
            If ``seed`` is negative or not an int.
        """
        return host_random.key(seed)

    def split(self, key, num=2):
        """``num`` keys from ``key``: NumPy uint32 of shape (num, 2) (an int64 tensor when
        ``key`` is batched inside :meth:`vmap`)."""
        num = int(num)
        if self._batched_draw(key):
            if num < 1:
                raise ValueError(f"num must be a positive int, got {num}")
            return self._batched_host("split", key, (), (num,), torch.int64)
        return host_random.split(self._host_key(key), num)

    def fold_in(self, key, data):
        """A key from ``key`` and the integer ``data``: NumPy uint32 of shape (2,) (an int64
        tensor when ``key`` is batched inside :meth:`vmap`)."""
        if self._batched_draw(key):
            return self._batched_host("fold_in", key, (), (int(data),), torch.int64)
        return host_random.fold_in(self._host_key(key), int(data))

    def _generator(self, key):
        """A fresh ``torch.Generator`` on the (non-CPU) device, seeded with the 64-bit key."""
        g = torch.Generator(device=self._device)
        g.manual_seed(host_random.seed_int(self._host_key(key)))
        return g

    def _host_draws(self, arr, dtype):
        # fresh host draws (NumPy returns a Python scalar for shape ()): no copy needed
        out = torch.from_numpy(np.asarray(arr))
        return out if out.dtype == dtype else out.to(dtype)

    def _draw_dtype(self, dtype):
        dtype = self._dt(dtype)
        return dtype if dtype.is_floating_point else self._float

    def normal(self, key, shape=(), dtype=None):
        """Standard normal draws, shape ``shape`` (``dtype`` default :attr:`float_dtype`; a
        non-floating ``dtype`` is read as :attr:`float_dtype`)."""
        dtype, shape = self._draw_dtype(dtype), _shape(shape)
        if self._batched_draw(key):
            return self._batched_host("normal", key, (), (list(shape),), dtype)
        if self._cpu:
            return self._host_draws(host_random.normal(self._host_key(key), shape), dtype)
        return torch.randn(shape, generator=self._generator(key), dtype=dtype,
                           device=self._device)

    def uniform(self, key, shape=(), dtype=None, minval=0.0, maxval=1.0):
        """Uniform draws on [minval, maxval), shape ``shape`` (differentiable in array bounds)."""
        dtype, shape = self._draw_dtype(dtype), _shape(shape)
        scalar = isinstance(minval, (int, float)) and isinstance(maxval, (int, float))
        if self._batched_draw(key):
            lo, hi = (float(minval), float(maxval)) if scalar else (0.0, 1.0)
            u = self._batched_host("uniform", key, (),
                                   (list(shape), lo, hi, _np_dtype(dtype).__name__), dtype)
            if scalar:
                return u
        elif self._cpu:
            if scalar:  # the NumPy backend's numbers
                return self._host_draws(host_random.uniform(
                    self._host_key(key), shape, _np_dtype(dtype), minval, maxval), dtype)
            u = self._host_draws(
                host_random.uniform(self._host_key(key), shape, _np_dtype(dtype)), dtype)
        else:
            u = torch.rand(shape, generator=self._generator(key), dtype=dtype,
                           device=self._device)
            if scalar and minval == 0.0 and maxval == 1.0:
                return u
        lo = self._operand(minval, u)
        hi = self._operand(maxval, u)
        return lo + (hi - lo) * u

    def _float_param(self, x):
        x = self.asarray(x)
        return x if x.is_floating_point() else x.to(self._float)

    def gamma(self, key, alpha, shape=None):
        """Standard Gamma(alpha, 1) draws, reparameterised in ``alpha`` (see the module
        docstring for the accuracy of the derivative)."""
        alpha = self._float_param(alpha)
        shape = tuple(alpha.shape) if shape is None else _shape(shape)
        if self._batched_draw(key, alpha):
            z = self._batched_host("gamma", key, (alpha,), (list(shape),), alpha.dtype)
        elif self._cpu:
            z = self._host_draws(host_random.standard_gamma(
                self._host_key(key), _host_value(alpha), shape), alpha.dtype)
        else:
            with torch.no_grad():
                a = torch.broadcast_to(alpha.detach(), shape).contiguous()
                z = torch._standard_gamma(a, generator=self._generator(key))
        if not (alpha.requires_grad or _is_wrapped(alpha)):
            return z  # nothing to differentiate: skip the autograd.Function
        return _GammaReparam.apply(alpha, z)

    def poisson(self, key, rate, shape=None):
        rate = self._float_param(rate)
        shape = tuple(rate.shape) if shape is None else _shape(shape)
        if self._batched_draw(key, rate):
            return self._batched_host("poisson", key, (rate,), (list(shape),), self._float)
        if self._cpu:
            return self._host_draws(
                host_random.poisson(self._host_key(key), _host_value(rate), shape), self._float)
        with torch.no_grad():
            r = torch.broadcast_to(rate.detach(), shape).contiguous()
            return torch.poisson(r, generator=self._generator(key)).to(self._float)

    def binomial(self, key, total_count, probs, shape=None):
        n = self._float_param(total_count)
        p = self._float_param(probs)
        shape = (self.broadcast_shapes(tuple(n.shape), tuple(p.shape)) if shape is None
                 else _shape(shape))
        if self._batched_draw(key, n, p):
            return self._batched_host("binomial", key, (n, p), (list(shape),), self._float)
        if self._cpu:
            draws = host_random.binomial(
                self._host_key(key), _host_value(n), _host_value(p), shape)
            return self._host_draws(draws, self._float)
        with torch.no_grad():
            nn = torch.broadcast_to(n.detach().to(torch.float64), shape).contiguous()
            pp = torch.broadcast_to(p.detach().to(torch.float64), shape).contiguous()
            return torch.binomial(nn, pp, generator=self._generator(key)).to(self._float)

    def randint(self, key, shape, minval, maxval):
        shape = _shape(shape)
        if self._batched_draw(key):
            return self._batched_host("randint", key, (), (list(shape), int(minval), int(maxval)),
                                      self._int)
        if self._cpu:
            return self._host_draws(
                host_random.randint(self._host_key(key), shape, minval, maxval), self._int)
        return torch.randint(int(minval), int(maxval), shape, generator=self._generator(key),
                             dtype=self._int, device=self._device)

    def permutation(self, key, n):
        if self._batched_draw(key):
            return self._batched_host("permutation", key, (), (int(n),), self._int)
        if self._cpu:
            return self._host_draws(host_random.permutation(self._host_key(key), n), self._int)
        return torch.randperm(int(n), generator=self._generator(key), dtype=self._int,
                              device=self._device)

    # ------------------------------------------------------------------ autodiff
    def _flat_call(self, f, args, nums):
        """Rewrite ``f`` as a function of the optree leaves of ``args[nums]`` (host leaves
        converted to tensors); returns ``(g, leaves, rebuild)``."""
        flat = [optree.tree_flatten(args[i], none_is_leaf=False) for i in nums]
        counts = [len(leaves) for leaves, _ in flat]
        leaves = [leaf if isinstance(leaf, _Tensor) else self.asarray(leaf)
                  for ls, _ in flat for leaf in ls]

        def rebuild(leaf_list):
            out, start = [], 0
            for (_, treedef), c in zip(flat, counts, strict=True):
                out.append(optree.tree_unflatten(treedef, list(leaf_list[start:start + c])))
                start += c
            return out

        def g(*leaf_list):
            new = list(args)
            for i, tree in zip(nums, rebuild(leaf_list), strict=True):
                new[i] = tree
            return f(*new)

        return g, leaves, rebuild

    @staticmethod
    def _direct(args, argnums):
        """Whether the differentiated arguments are all tensors (torch.func's direct path)."""
        if isinstance(argnums, int):
            return isinstance(args[argnums], _Tensor)
        return all(isinstance(args[i], _Tensor) for i in argnums)

    def _flat_value_and_grad(self, f, args, argnums, nums, has_aux):
        """value_and_grad through optree leaves (pytrees torch.func does not know, host data)."""
        g_fn, leaves, rebuild = self._flat_call(f, args, nums)
        if not leaves:
            return f(*args), (rebuild([])[0] if isinstance(argnums, int) else tuple(rebuild([])))
        grads, out = tfunc.grad_and_value(
            g_fn, argnums=tuple(range(len(leaves))), has_aux=has_aux)(*leaves)
        grads = rebuild(grads)
        return out, grads[0] if isinstance(argnums, int) else tuple(grads)

    has_mutable_arrays = True

    def assign_(self, x, value):
        with torch.no_grad():
            x.copy_(value)
        return x

    @staticmethod
    def _eager_ok(args, nums):
        """Whether plain eager autograd may compute the gradient: differentiated arguments that
        are tensors, or pytrees of tensors, not part of an outer autograd graph, and no
        torch.func transform active. Eager backward costs about a third of
        torch.func.grad_and_value per call (the MCMC/SVI hot path)."""
        if _peek_interpreter_stack() is not None:
            return False
        for i in nums:
            arg = args[i]
            if isinstance(arg, _Tensor):
                if arg.requires_grad:
                    return False
                continue
            leaves = optree.tree_leaves(arg, none_is_leaf=False)
            if not leaves or not all(isinstance(leaf, _Tensor) and not leaf.requires_grad
                                     and leaf.is_floating_point() for leaf in leaves):
                return False
        return True

    def _eager_value_and_grad(self, f, args, argnums, nums, has_aux=False):
        g_fn, leaves, rebuild = self._flat_call(f, args, nums)
        xs = [leaf.detach().requires_grad_(True) for leaf in leaves]
        with torch.enable_grad():
            v = g_fn(*xs)
            if has_aux:
                v, aux = v
            # an output that does not depend on the inputs has zero gradient, as in torch.func
            gs = (torch.autograd.grad(v, xs, allow_unused=True) if v.requires_grad
                  else (None,) * len(xs))
        gs = rebuild([torch.zeros_like(x) if g is None else g for x, g in zip(xs, gs)])
        g = gs[0] if isinstance(argnums, int) else tuple(gs)
        if has_aux:
            aux = optree.tree_map(lambda a: a.detach() if isinstance(a, _Tensor) else a, aux,
                                  none_is_leaf=False)
            return (v.detach(), aux), g
        return v.detach(), g

    def value_and_grad(self, f, argnums=0, has_aux=False):
        argnums = tuple(argnums) if isinstance(argnums, list) else argnums
        nums = self._argnums_tuple(argnums)
        if not has_aux:
            direct = tfunc.grad_and_value(f, argnums=argnums)

            def value_and_grad_fn(*args):
                if self._eager_ok(args, nums):
                    return self._eager_value_and_grad(f, args, argnums, nums)
                if self._direct(args, argnums):
                    g, v = direct(*args)
                    return v, g
                return self._flat_value_and_grad(f, args, argnums, nums, False)

            return value_and_grad_fn

        def value_and_grad_aux_fn(*args):
            if self._eager_ok(args, nums):
                (v, aux), g = self._eager_value_and_grad(f, args, argnums, nums, has_aux=True)
                return (v, aux), g
            box = []
            f_aux = _tensor_aux(f, box)
            if self._direct(args, argnums):
                g, (v, aux) = tfunc.grad_and_value(f_aux, argnums=argnums, has_aux=True)(*args)
            else:
                (v, aux), g = self._flat_value_and_grad(f_aux, args, argnums, nums, True)
            return (v, _join_aux(box, aux)), g

        return value_and_grad_aux_fn

    def grad(self, f, argnums=0, has_aux=False):
        argnums = tuple(argnums) if isinstance(argnums, list) else argnums
        if has_aux:
            vg = self.value_and_grad(f, argnums=argnums, has_aux=True)

            def grad_aux_fn(*args):
                (_, aux), g = vg(*args)
                return g, aux

            return grad_aux_fn
        direct = tfunc.grad(f, argnums=argnums)
        nums = self._argnums_tuple(argnums)

        def grad_fn(*args):
            if self._eager_ok(args, nums):
                return self._eager_value_and_grad(f, args, argnums, nums)[1]
            if self._direct(args, argnums):
                return direct(*args)
            return self._flat_value_and_grad(f, args, argnums, nums, False)[1]

        return grad_fn

    def vjp(self, f, *primals, has_aux=False):
        box = []
        fn = _tensor_aux(f, box) if has_aux else f
        if all(isinstance(p, _Tensor) for p in primals):
            res = tfunc.vjp(fn, *primals, has_aux=has_aux)
            return (res[0], res[1], _join_aux(box, res[2])) if has_aux else res
        g, leaves, rebuild = self._flat_call(fn, primals, tuple(range(len(primals))))
        tree = {}

        def g_flat(*leaf_list):
            out = g(*leaf_list)
            if has_aux:
                out, aux = out
            out_leaves, tree["def"] = optree.tree_flatten(out, none_is_leaf=False)
            return (tuple(out_leaves), aux) if has_aux else tuple(out_leaves)

        res = tfunc.vjp(g_flat, *leaves, has_aux=has_aux)
        out = optree.tree_unflatten(tree["def"], list(res[0]))
        pullback_flat = res[1]

        def pullback(ct):
            cts = pullback_flat(tuple(self._tangent(c, o) for c, o in zip(
                optree.tree_leaves(ct, none_is_leaf=False), res[0], strict=True)))
            return tuple(rebuild(cts))

        return (out, pullback, _join_aux(box, res[2])) if has_aux else (out, pullback)

    def _tangent(self, t, primal):
        """``t`` as a tensor of ``primal``'s dtype and device (torch.func insists on both)."""
        if isinstance(t, _Tensor) and t.dtype == primal.dtype:
            return t
        return self._operand(t, primal) if isinstance(t, _PY_SCALARS) else \
            self.asarray(t).to(primal.dtype)

    def jvp(self, f, primals, tangents):
        primals, tangents = tuple(primals), tuple(tangents)
        if all(isinstance(p, _Tensor) for p in primals):
            tangents = tuple(self._tangent(t, p) for t, p in zip(tangents, primals, strict=True))
            return tfunc.jvp(f, primals, tangents)
        g, leaves, rebuild = self._flat_call(f, primals, tuple(range(len(primals))))
        t_leaves = [self._tangent(t, p) for t, p in zip(
            optree.tree_leaves(tangents, none_is_leaf=False), leaves, strict=True)]
        return tfunc.jvp(g, tuple(leaves), tuple(t_leaves))

    def stop_gradient(self, x):
        if isinstance(x, _Tensor):
            return x.detach()
        return optree.tree_map(lambda v: v.detach() if isinstance(v, _Tensor) else v, x,
                               none_is_leaf=False)

    def custom_vjp(self, fun, fwd, bwd):
        """``fun`` with the reverse-mode derivative ``bwd`` (a ``torch.autograd.Function`` with
        ``setup_context`` and ``generate_vmap_rule``, so it composes with ``grad`` and ``vmap``).

        ``fun`` itself runs when no argument carries a gradient; otherwise ``fwd`` computes the
        value and the residuals (in the differentiated graph, so that ``bwd`` is itself
        differentiable through them, as with ``jax.custom_vjp``). Forward mode (``jvp``) through
        the result raises, as on JAX.
        """
        function = _make_custom_function(bwd)

        def custom(*args):
            if not any(isinstance(a, _Tensor) and (a.requires_grad or _is_wrapped(a))
                       for a in args):
                return fun(*args)
            out, res = fwd(*args)
            out_leaves, out_def = optree.tree_flatten(out, none_is_leaf=False)
            out_leaves = [o if isinstance(o, _Tensor) else self.asarray(o) for o in out_leaves]
            res_leaves, res_def = optree.tree_flatten(res, none_is_leaf=False)
            res_tensors = [r for r in res_leaves if isinstance(r, _Tensor)]
            meta = _CustomMeta(len(args), len(out_leaves), out_def, res_def,
                               tuple(None if isinstance(r, _Tensor) else r for r in res_leaves))
            outs = function.apply(meta, *args, *out_leaves, *res_tensors)
            return optree.tree_unflatten(out_def, list(outs))

        custom.__name__ = getattr(fun, "__name__", "custom_vjp")
        custom.__doc__ = getattr(fun, "__doc__", None)
        return custom

    # ------------------------------------------------------------------ control flow
    def cond(self, pred, true_fun, false_fun, *operands):
        """``true_fun(*operands)`` if ``pred`` else ``false_fun(*operands)``.

        Inside ``vmap`` with a batched ``pred`` both branches run and the outputs are selected
        leaf by leaf with ``torch.where`` (what ``jax.vmap`` does to ``lax.cond``).
        """
        try:
            p = bool(pred)
        except RuntimeError as exc:
            if not _batched_error(exc):
                raise
            t, f = true_fun(*operands), false_fun(*operands)
            return optree.tree_map(lambda a, b: torch.where(pred, a, b), t, f,
                                   none_is_leaf=False)
        return true_fun(*operands) if p else false_fun(*operands)

    def switch(self, index, branches, *operands):
        """``branches[index](*operands)`` with ``index`` clamped; a batched ``index`` inside
        ``vmap`` runs every branch and selects."""
        n = len(branches)
        try:
            i = int(index)
        except RuntimeError as exc:
            if not _batched_error(exc):
                raise
            idx = torch.clamp(index, 0, n - 1)
            outs = [b(*operands) for b in branches]
            out = outs[0]
            for k in range(1, n):
                out = optree.tree_map(lambda a, b, k=k: torch.where(idx == k, b, a), out,
                                      outs[k], none_is_leaf=False)
            return out
        return branches[min(max(i, 0), n - 1)](*operands)

    # ------------------------------------------------------------------ transforms
    def jit(self, fun, static_argnums=(), static_argnames=(), donate_argnums=()):
        """The identity: torch runs eagerly (``has_jit`` is False); the arguments are accepted
        for portability and ignored."""
        return fun

    def compile_pure(self, fun):
        """``fun`` traced into a graph once per input signature (shapes, dtypes, devices, Python
        scalars) and run by TorchScript: :class:`agvi.backends._torch_trace.TracedFunction`.
        Untraceable functions, and calls with tensors that carry derivatives, run eagerly;
        with ``trace=False`` (see the class) ``fun`` itself."""
        return TracedFunction(fun) if self.compiles_pure else fun

    def host_function(self, fun, x, *args):
        """``x -> fun(x, *args)`` on host arrays (see :meth:`Backend.host_function`). Once
        ``fun``, a :meth:`compile_pure` function, has traced a graph for this signature on the
        CPU, the graph runs directly, with what depends on ``args`` alone computed once
        (:meth:`TracedFunction.partial`): the host array enters with ``torch.from_numpy`` and
        the results leave with ``Tensor.numpy``, neither copying."""
        generic = super().host_function(fun, x, *args)
        if not (isinstance(fun, TracedFunction) and self._cpu and isinstance(x, np.ndarray)
                and x.dtype == _NP_OF.get(self._float)):
            return generic
        sig = fun.signature(torch.from_numpy(x), *args)
        if sig is None:
            return generic
        tensors, key = sig
        tensors = tensors[1:]   # the arguments' tensors, after x's
        from_numpy = torch.from_numpy
        graph = None

        def call(x):
            nonlocal graph
            t = from_numpy(x) if x.flags.writeable else from_numpy(x.copy())
            if graph is None:   # until the graph is traced (the second call traces)
                graph = fun.partial(key, tensors, t)
                if graph is None:
                    return generic(x)
            return [out.numpy() for out in graph(t)]

        return call

    def vmap(self, fun, in_axes=0, out_axes=0):
        """``torch.func.vmap`` with JAX's argument names (``in_axes``, ``out_axes``).

        Random draws inside use ``randomness="same"`` (an unbatched key gives every example the
        same numbers, as in JAX).

        A mapped argument holding a stack of host keys (NumPy ``uint32`` arrays with a last axis
        of 2, e.g. ``split(key, n)``) is vectorised on the CPU: the keys enter as an int64
        tensor and each example's draws (and the keys split or folded from it) are computed on
        the host from that example's key, so the results equal a loop over the keys draw for
        draw (and the NumPy backend's). Keys made inside come back from ``vmap`` as int64
        tensors of shape (n, ..., 2), which every random primitive accepts. The call falls back
        to a Python loop over the examples, with the same numbers, when the function needs a
        per-example value that vmap cannot give (``to_numpy``, ``pure_callback``, Python control
        flow on a batched value), on another device, when the random primitives are overridden
        (:func:`agvi.testing.SharedNoise`), and when a mapped argument holds other host arrays.
        """
        in_dims = tuple(in_axes) if isinstance(in_axes, list) else in_axes
        vfun = tfunc.vmap(fun, in_dims=in_dims, out_dims=out_axes, randomness="same")
        looped = _looped_vmap(fun, in_dims, out_axes)
        own_keys = self._cpu and self._own_random()

        def mapped(*args):
            axes = in_dims if isinstance(in_dims, tuple) else (in_dims,) * len(args)
            host, vectorise, converted = False, own_keys, []
            for arg, ax in zip(args, axes, strict=False):
                if ax is None or isinstance(arg, _Tensor):
                    converted.append(arg)
                    continue
                leaves, treedef = optree.tree_flatten(arg, none_is_leaf=False)
                if not any(isinstance(leaf, np.ndarray) for leaf in leaves):
                    converted.append(arg)
                    continue
                host = True
                if vectorise and isinstance(ax, int) and all(
                        _host_key_stack(leaf, ax) for leaf in leaves
                        if isinstance(leaf, np.ndarray)):
                    converted.append(optree.tree_unflatten(treedef, [
                        torch.from_numpy(leaf.astype(np.int64))
                        if isinstance(leaf, np.ndarray) else leaf for leaf in leaves]))
                else:
                    vectorise = False
            if not host:
                return vfun(*args)
            if not vectorise:
                return looped(*args)
            try:
                return vfun(*converted, *args[len(converted):])
            except RuntimeError as exc:  # a per-example value was needed: loop instead
                if isinstance(exc, _BatchedHostError) or _batched_error(exc):
                    return looped(*args)
                raise

        return mapped

    def _own_random(self) -> bool:
        """Whether this object's random primitives are :class:`TorchBackend`'s own (a wrapper
        such as :func:`agvi.testing.SharedNoise` replaces them)."""
        cls = type(self)
        return all(getattr(cls, name) is getattr(TorchBackend, name)
                   and name not in self.__dict__ for name in _RANDOM_PRIMITIVES)


# --------------------------------------------------------------------------- module helpers
def _tensor_aux(f, box):
    """``f`` returning ``(out, aux)`` rewritten to return only the tensor leaves of ``aux``
    (torch.func accepts nothing else there); the rest is kept in the list ``box``."""
    def f_tensor_aux(*args):
        out, aux = f(*args)
        leaves, treedef = optree.tree_flatten(aux, none_is_leaf=False)
        box.append((treedef, tuple(None if isinstance(v, _Tensor) else v for v in leaves)))
        return out, [v for v in leaves if isinstance(v, _Tensor)]

    return f_tensor_aux


def _join_aux(box, tensors):
    """The aux pytree from the tensors torch.func returned and the rest kept in ``box``."""
    treedef, static = box[-1]
    it = iter(tensors)
    return optree.tree_unflatten(treedef, [next(it) if v is None else v for v in static])


def _host_key_stack(leaf: np.ndarray, axis: int) -> bool:
    """Whether ``leaf``, mapped over ``axis``, is a stack of host keys (uint32, last axis 2)."""
    return (leaf.dtype == np.uint32 and leaf.ndim >= 2 and leaf.shape[-1] == 2
            and axis % leaf.ndim != leaf.ndim - 1)


def _looped_vmap(fun, in_axes, out_axes):
    """``vmap`` as a Python loop over examples, for mapped host (NumPy) leaves such as keys."""
    def take(leaf, axis, i):
        if isinstance(leaf, _Tensor):
            return torch.select(leaf, axis, i)
        return np.take(np.asarray(leaf), i, axis=axis)

    def stack(*outs):
        if isinstance(outs[0], _Tensor):
            return torch.stack(outs, dim=out_axes)
        return np.stack(outs, axis=out_axes)

    def looped(*args):
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
        sizes = {np.shape(leaf)[a] for arg, a in zip(args, axes, strict=True) if a is not None
                 for leaf in optree.tree_leaves(arg, none_is_leaf=False)}
        if len(sizes) != 1:
            raise ValueError(f"vmap: mapped axes must have one common size, got {sizes}")
        (n,) = sizes
        outs = [fun(*[arg if a is None else optree.tree_map(
            lambda leaf, a=a, i=i: take(leaf, a, i), arg, none_is_leaf=False)
            for arg, a in zip(args, axes, strict=True)]) for i in range(n)]
        return optree.tree_map(stack, *outs, none_is_leaf=False)

    return looped


def _device_name(dev: torch.device) -> str:
    """agvi's name of a torch device: "cpu", "cuda:N", "mps"."""
    if dev.type == "cuda":
        return f"cuda:{dev.index if dev.index is not None else torch.cuda.current_device()}"
    return dev.type


def _shape(shape) -> tuple:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def _num(v):
    """A Python number from a number or a 0-d tensor (torch.arange wants numbers)."""
    return v.item() if isinstance(v, _Tensor) else v


def _torch_index(index, device):
    """``index`` with NumPy integer/bool arrays converted to tensors on ``device``."""
    if isinstance(index, tuple):
        return tuple(_torch_index(i, device) for i in index)
    if isinstance(index, np.ndarray):
        return torch.as_tensor(index, device=device)
    if isinstance(index, list):
        return torch.as_tensor(np.asarray(index), device=device)
    if isinstance(index, _Tensor) and index.device != device:
        return index.to(device)
    return index
