"""Cross-backend agreement: the same computations on every installed backend, in one process, in
float64 and fed identical noise (agvi.testing.SharedNoise), compared with the NumPy oracle at
``RTOL`` (DESIGN.md section 8). Discrete outcomes (argmaxes, accept decisions, iteration counts,
integer draws) must be equal. The largest relative error per backend is printed at the end of
the session (see conftest.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import agvi
from agvi.backends.base import BINARY_FUNCTIONS, UNARY_FUNCTIONS
from agvi.testing.agreement import AGREEMENT_ATOL, AGREEMENT_RTOL, assert_agree, run_on_all
from agvi.testing.shared_noise import DERIVED_DRAWS, RANDOM_PRIMITIVES, SharedNoise

#: Agreement tolerance with the NumPy oracle in float64 (DESIGN.md section 8).
RTOL = AGREEMENT_RTOL
#: Absolute tolerance for entries that are zero up to round-off.
ATOL = AGREEMENT_ATOL
assert RTOL == 1e-10

RNG = np.random.default_rng(20240611)

# ------------------------------------------------------------------ fixed inputs
X = RNG.uniform(-2.7, 2.7, size=(3, 4))          # general reals, no half-integers
X = np.where(np.abs(X - np.round(X)) > 0.45, X + 0.1, X)
POS = RNG.uniform(0.2, 4.0, size=(3, 4))         # positive
UNIT = RNG.uniform(0.05, 0.95, size=(3, 4))      # (0, 1)
SYM = RNG.uniform(-0.9, 0.9, size=(3, 4))        # (-1, 1)
GT1 = RNG.uniform(1.1, 4.0, size=(3, 4))         # > 1
Y4 = RNG.uniform(0.5, 2.5, size=(4,))            # broadcasting second operand
SPECIALS = np.array([0.0, -0.0, 1.5, -np.inf, np.inf, np.nan, 3.0, -2.0])

UNARY_INPUT = {"log": POS, "sqrt": POS, "reciprocal": POS, "log1p": POS, "arcsin": SYM,
               "arccos": SYM, "arctanh": SYM, "arccosh": GT1, "isfinite": SPECIALS,
               "isnan": SPECIALS, "isinf": SPECIALS, "logical_not": X > 0}
# smooth where the input lies: their gradients are compared too
UNARY_SMOOTH = {"abs", "negative", "exp", "expm1", "log", "log1p", "sqrt", "square",
                "reciprocal", "sin", "cos", "tan", "tanh", "sinh", "cosh", "arcsin", "arccos",
                "arctan", "arcsinh", "arccosh", "arctanh"}
BINARY_INPUT = {"power": (POS, Y4), "floor_divide": (X * 3, Y4), "remainder": (X * 3, Y4),
                "logical_and": (X > 0, Y4 > 1.2), "logical_or": (X > 0, Y4 > 1.2),
                "divide": (X, Y4)}
BINARY_SMOOTH = {"add", "subtract", "multiply", "divide", "power", "maximum", "minimum",
                 "arctan2", "logaddexp"}

# special functions: (inputs, positions of the differentiated arguments); xlogy and xlog1py get
# exact zeros in x, where the contract fixes the derivative convention
SPECIAL_CASES = {
    "gammaln": ((POS,), (0,)), "digamma": ((POS,), (0,)), "erf": ((X,), (0,)),
    "erfc": ((X,), (0,)), "erfinv": ((SYM,), (0,)), "ndtr": ((X,), (0,)),
    "ndtri": ((UNIT,), (0,)), "log_ndtr": ((np.array([-40.0, -8.0, -1.0, 0.0, 2.0, 9.0]),), (0,)),
    "xlogy": ((np.where(X > 0, X, 0.0), POS), (0, 1)),
    "xlog1py": ((np.where(X > 0, X, 0.0), UNIT), (0, 1)),
    "expit": ((X * 5,), (0,)), "logit": ((UNIT,), (0,)), "softplus": ((X * 20,), (0,)),
    "log_expit": ((X * 20,), (0,)), "i0e": ((X * 3,), (0,)), "i1e": ((X * 3,), (0,)),
    "betaln": ((POS, POS[::-1]), (0, 1)), "gammainc": ((POS, POS[:, ::-1]), (1,)),
    "gammaincc": ((POS, POS[:, ::-1]), (1,)),
}

# ------------------------------------------------------------------ models
# Eight schools, non-centred: z = (mu, log tau, eta_1..8), a 10-d hierarchical log density.
SCHOOLS_Y = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
Z0 = RNG.normal(size=10) * 0.7
# logistic regression with fixed data
LR_X = RNG.normal(size=(40, 5))
LR_Y = (RNG.uniform(size=40) < 1 / (1 + np.exp(-LR_X @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]))))
BETA0 = RNG.normal(size=5) * 0.5


def schools_logp(B, z):
    """Log density of the non-centred eight-schools model (Student-t likelihood), shape ()."""
    y, sigma = B.asarray(SCHOOLS_Y), B.asarray(SCHOOLS_SIGMA)
    mu, log_tau, eta = z[0], z[1], z[2:]
    tau = B.exp(log_tau)
    theta = mu + tau * eta
    nu = 5.0
    r = (y - theta) / sigma
    norm = B.gammaln(B.asarray((nu + 1) / 2)) - B.gammaln(B.asarray(nu / 2))
    lik = B.sum(norm - 0.5 * math.log(nu * math.pi) - B.log(sigma)
                - (nu + 1) / 2 * B.log1p(r * r / nu))
    prior = (-0.5 * B.square(mu / 5.0) + math.log(2 / (5 * math.pi))
             - B.log1p(B.square(tau / 5.0)) + log_tau - 0.5 * B.sum(eta * eta))
    return lik + prior


def lr_loglik_terms(B, beta, x, y):
    """Per-observation log-likelihood of the logistic regression, shape (N,)."""
    eta = B.matmul(x, beta)
    return B.where(y, B.log_expit(eta), B.log_expit(-eta))


def lr_logp(B, beta, x, y):
    """Logistic regression log posterior with a N(0, 2^2) prior, shape ()."""
    return B.sum(lr_loglik_terms(B, beta, x, y)) - 0.125 * B.sum(beta * beta)


# ================================================================== elementwise and special
@pytest.mark.parametrize("name", UNARY_FUNCTIONS)
def test_unary(agree, name):
    x = UNARY_INPUT.get(name, X)

    def fn(B, x):
        f = getattr(B, name)
        out = {"value": f(x)}
        if name in UNARY_SMOOTH:
            out["grad"] = B.grad(lambda v: B.sum(f(v) * B.asarray(POS)))(x)
        return out

    agree(fn, x)


@pytest.mark.parametrize("name", BINARY_FUNCTIONS)
def test_binary(agree, name):
    x, y = BINARY_INPUT.get(name, (X, Y4))

    def fn(B, x, y):
        f = getattr(B, name)
        out = {"value": f(x, y)}
        if name in BINARY_SMOOTH:
            out["grad"] = B.grad(lambda a, b: B.sum(f(a, b) * B.asarray(UNIT)),
                                 argnums=(0, 1))(x, y)
        return out

    agree(fn, x, y)


@pytest.mark.parametrize("name", sorted(SPECIAL_CASES))
def test_special(agree, name):
    args, diff = SPECIAL_CASES[name]

    def fn(B, *args):
        f = getattr(B, name)
        return {"value": f(*args),
                "grad": B.grad(lambda *a: B.sum(f(*a)), argnums=diff)(*args)}

    agree(fn, *args)


def test_polygamma(agree):
    def fn(B, p):
        return {"polygamma1": B.polygamma(1, p), "polygamma2": B.polygamma(2, p),
                "dpolygamma1": B.grad(lambda v: B.sum(B.polygamma(1, v)))(p)}

    agree(fn, POS)


def test_special_reductions(agree):
    def fn(B, x, p):
        return {
            "multigammaln": B.multigammaln(p + 2.0, 3),
            "logsumexp": B.logsumexp(x * 30, axis=1),
            "logsumexp_all": B.logsumexp(x, axis=None, keepdims=False),
            "dlogsumexp": B.grad(lambda v: B.sum(B.logsumexp(v * 30, axis=0) ** 2))(x),
            "softmax": B.softmax(x, axis=-1), "log_softmax": B.log_softmax(x * 50, axis=0),
            "dlog_softmax": B.grad(lambda v: B.sum(B.log_softmax(v, axis=-1)[:, 0]))(x),
        }

    agree(fn, X, POS)


# ================================================================== arrays, reductions, linalg
def test_reductions(agree):
    def fn(B, x, b):
        out = {}
        for r in ("sum", "mean", "prod", "max", "min", "var", "std"):
            f = getattr(B, r)
            out[r] = [f(x), f(x, axis=1), f(x, axis=(0, 2), keepdims=True)]
        out["var_ddof"] = B.var(x, axis=0, ddof=1)
        out["std_ddof"] = B.std(x, axis=-1, ddof=1)
        out["argmax"] = [B.argmax(x, axis=0), B.argmax(x, axis=-1)]
        out["argmin"] = [B.argmin(x, axis=1)]
        out["any_all"] = [B.any(b), B.all(b, axis=0), B.any(b, axis=(1, 2), keepdims=True)]
        out["norm"] = [B.norm(x), B.norm(x, axis=(1, 2))]
        out["cum"] = [B.cumsum(x, axis=1), B.cumprod(x, axis=2)]
        out["sort"] = [B.sort(x, axis=-1), B.argsort(x, axis=0)]
        out["grads"] = B.grad(lambda v: B.sum(B.std(v, axis=0)) + B.sum(B.max(v, axis=1))
                              + B.prod(B.mean(v, axis=(0, 1))))(x)
        return out

    x = RNG.normal(size=(3, 4, 5))
    agree(fn, x, x > 0.3)


def test_array_ops(agree):
    def fn(B, x, idx):
        out = {
            "where": B.where(x > 0, x, -2 * x), "take": B.take(x, idx, axis=1),
            "tal": B.take_along_axis(x, B.argsort(x, axis=1), axis=1),
            "one_hot": B.one_hot(idx, 5), "clip": B.clip(x, -0.5, 0.7),
            "tril": B.tril(B.reshape(x, (4, 3)), -1), "triu": B.triu(B.reshape(x, (3, 4)), 1),
            "diag": B.diagonal(B.reshape(x[:, :3], (3, 3))), "diag_embed": B.diag_embed(x),
            "concat": B.concatenate([x, 2 * x], axis=1), "stack": B.stack([x, x * x], axis=-1),
            "flip": B.flip(x, 0), "tile": B.tile(x, (2, 1)), "repeat": B.repeat(x, 2, axis=1),
            "moveaxis": B.moveaxis(B.stack([x, x]), 0, -1),
            "index_update": B.index_update(x, (1, slice(None)), 7.0),
            "index_add": B.index_add(x, (B.asarray([0, 2, 0]), idx), B.ones((3,))),
            "dynamic_slice": B.dynamic_slice(x, 2, 2, axis=1),
            "dynamic_index": B.dynamic_index(x, 1, axis=0),
            "dynamic_update_index": B.dynamic_update_index(x, 2, B.zeros((3,)), axis=1),
            "linspace": B.linspace(-1.0, 2.0, 7), "arange": B.arange(2, 11, 3),
        }
        return out

    agree(fn, RNG.normal(size=(3, 4)), np.array([3, 0, 3]))


def _updates(B, v, idx):
    u = B.index_add(v, (0, 1), 3.0 * v[2, 1])
    u = B.index_update(u, (2, slice(0, 2)), u[0, :2] ** 2)
    u = B.dynamic_update_index(u, 1, B.dynamic_index(u, 3, axis=1) * 2.0, axis=1)
    u = B.concatenate([u, B.dynamic_slice(u, 1, 2, axis=1)], axis=1)
    return B.sum(B.sin(u) * B.where(u > 0, u, 2.0 * u))


def _gathers(B, v, idx):
    return B.sum(B.take(v, idx, axis=1) ** 2) + B.sum(
        B.take_along_axis(v, B.argsort(v, axis=1), axis=1)[:, 0])


def _diagonals(B, v, idx):
    sq = B.matmul(v, B.matrix_transpose(v))
    return B.sum(B.diagonal(sq) ** 2) + B.sum(B.tril(sq) * B.triu(sq))


@pytest.mark.parametrize("f", [_updates, _gathers, _diagonals], ids=lambda f: f.__name__[1:])
def test_array_ops_gradients(agree, f):
    agree(lambda B, x, idx: B.grad(lambda v: f(B, v, idx))(x), RNG.normal(size=(3, 4)),
          np.array([3, 0, 3]))


def test_linear_algebra(agree):
    m = RNG.normal(size=(2, 5, 5))
    spd = m @ np.swapaxes(m, -1, -2) + 5 * np.eye(5)
    rhs = RNG.normal(size=(2, 5, 3))

    def fn(B, a, b):
        def sym(A):
            return 0.5 * (A + B.matrix_transpose(A))

        L = B.cholesky(a)
        w, v = B.eigh(a)
        sign, logdet = B.slogdet(a)
        # eigenvectors up to sign: compare V diag(w) V^T and |V|
        return {
            "matmul": B.matmul(a, b), "einsum": B.einsum("bij,bjk->bik", a, b),
            "einsum2": B.einsum("bii->b", a), "chol": L,
            "tri_lower": B.solve_triangular(L, b, lower=True),
            "tri_trans": B.solve_triangular(L, b, lower=True, trans=True),
            "tri_upper": B.solve_triangular(B.matrix_transpose(L), b, lower=False),
            "cho_solve": B.cho_solve(L, b), "solve": B.solve(a, b), "inv": B.inv(a),
            "slogdet": (sign, logdet), "eigvals": w, "abs_eigvecs": B.abs(v),
            "recon": B.matmul(v * B.expand_dims(w, -2), B.matrix_transpose(v)),
            # gradients with respect to a symmetric matrix: the conventions differ (autograd
            # differentiates one triangle, JAX and torch the symmetrised input), so the matrix
            # is symmetrised inside the function, which makes the gradient unique
            "grad_logdet_chol": B.grad(lambda A: B.sum(
                B.log(B.sum(B.cholesky(sym(A)) * B.eye(5), axis=-1))))(a),
            "grad_quad": B.grad(lambda A, bb: B.sum(bb * B.cho_solve(B.cholesky(sym(A)), bb)),
                                argnums=(0, 1))(a, b),
            "grad_slogdet_solve": B.grad(
                lambda A: B.sum(B.slogdet(A)[1]) + B.sum(B.solve(A, b) ** 2))(a),
            "grad_inv_tri": B.grad(lambda A, bb: B.sum(B.inv(A) ** 2) + B.sum(
                B.solve_triangular(B.tril(A), bb, lower=True)), argnums=(0, 1))(a, b),
            "grad_eigh": B.grad(lambda A: B.sum(B.eigh(sym(A))[0] ** 2)
                                + B.sum(B.abs(B.eigh(sym(A))[1][..., 0])))(a),
        }

    agree(fn, spd, rhs)


# ================================================================== autodiff of log densities
def test_value_and_grad(agree):
    def fn(B, z, beta, x, y):
        f = lambda v: schools_logp(B, v)  # noqa: E731
        vg = B.value_and_grad(f)(z)
        vg_aux = B.value_and_grad(lambda v: (f(v), {"tau": B.exp(v[1])}), has_aux=True)(z)
        lr = B.value_and_grad(lr_logp, argnums=1)(B, beta, x, y)
        tree = B.grad(lambda p: schools_logp(B, B.concatenate([p["mu_tau"], p["eta"]])))(
            {"mu_tau": z[:2], "eta": z[2:]})
        flat, unravel = B.ravel_pytree({"a": z[:3], "b": (beta, B.reshape(z[3:], (7, 1)))})
        return {"schools": vg, "aux": vg_aux, "lr": lr, "tree": tree, "flat": flat,
                "unravel": unravel(flat * 2.0)}

    agree(fn, Z0, BETA0, LR_X, LR_Y)


def test_vjp_jvp_hvp(agree):
    def fn(B, z, beta, x, y):
        terms = lambda b: lr_loglik_terms(B, b, x, y)  # noqa: E731
        out, pullback = B.vjp(terms, beta)
        ct = B.asarray(np.linspace(-1.0, 1.0, 40))
        out_tree, pullback_tree = B.vjp(lambda a, b: {"s": B.sum(a * b), "p": a * B.exp(b)},
                                        z[:5], beta)
        f = lambda v: schools_logp(B, v)  # noqa: E731
        tangent = B.asarray(np.arange(10.0) / 10 - 0.3)
        return {
            "vjp": (out, pullback(ct)),
            "vjp_tree": (out_tree, pullback_tree({"s": B.asarray(2.0), "p": beta})),
            "jvp": B.jvp(terms, (beta,), (beta * 0.5 + 1.0,)),
            "jvp_grad": B.jvp(B.grad(f), (z,), (tangent,)),
            "hvp": B.hvp(f, (z,), (tangent,)),
            "hvp_lr": B.hvp(lambda b: lr_logp(B, b, x, y), (beta,), (beta,)),
        }

    agree(fn, Z0, BETA0, LR_X, LR_Y)


@pytest.mark.parametrize("mode,chunk_size", [("reverse", None), ("reverse", 3),
                                             ("forward", None), ("forward", 1)])
def test_jacobian(agree, mode, chunk_size):
    def fn(B, z, beta, x, y):
        jac_terms = B.jacobian(lambda b: lr_loglik_terms(B, b, x, y), mode=mode,
                               chunk_size=chunk_size)(beta)
        hess = B.jacobian(B.grad(lambda v: schools_logp(B, v)), mode=mode,
                          chunk_size=chunk_size)(z)
        two = B.jacobian(lambda a, b: B.tanh(a[:5] * b) + B.sum(a), argnums=(0, 1), mode=mode,
                         chunk_size=chunk_size)(z, beta)
        aux = B.jacobian(lambda b: (B.exp(b) * 2.0, B.sum(b)), mode=mode, has_aux=True,
                         chunk_size=chunk_size)(beta)
        return {"terms": jac_terms, "hess": hess, "two": two, "aux": aux}

    agree(fn, Z0, BETA0, LR_X, LR_Y)


def test_hessian(agree):
    def fn(B, z, beta, x, y):
        return {"schools": B.hessian(lambda v: schools_logp(B, v))(z),
                "lr": B.hessian(lambda b: lr_logp(B, b, x, y))(beta)}

    agree(fn, Z0, BETA0, LR_X, LR_Y)


# ================================================================== control flow and transforms
def test_control_flow(agree):
    def fn(B, z, beta, x, y):
        # scan: AR(1) filter with pytree carry and outputs, forwards and reversed
        def step(carry, xt):
            h, total = carry
            h = 0.8 * h + B.tanh(xt)
            return (h, total + h), {"h": h, "sq": h * h}

        scan_f = B.scan(step, (B.zeros(()), B.zeros(())), z)
        scan_r = B.scan(step, (B.zeros(()), B.zeros(())), z, reverse=True)
        scan_len = B.scan(lambda c, _: (c * 1.5, c), B.asarray(1.0), None, length=6)

        # while_loop: Newton's method for sqrt(a); the iteration count must match exactly
        a = B.sum(z * z)

        def newton_cond(s):
            return (B.abs(s[0] * s[0] - a) > 1e-12 * a) & (s[1] < 100)

        root, iters = B.while_loop(newton_cond, lambda s: (0.5 * (s[0] + a / s[0]), s[1] + 1),
                                   (a, B.asarray(0)))

        # fori_loop: 25 steps of gradient ascent on the logistic regression log posterior
        g = B.grad(lambda b: lr_logp(B, b, x, y))
        beta_hat = B.fori_loop(0, 25, lambda i, b: b + 0.01 * g(b), beta)
        counted = B.fori_loop(2, 7, lambda i, c: c * 1.1 + i, B.asarray(0.5))

        cond_t = B.cond(a > 1.0, lambda u: B.sin(u), lambda u: B.cos(u), z)
        cond_f = B.cond(a < 1.0, lambda u: B.sin(u), lambda u: B.cos(u), z)
        branches = [lambda u: u * 2.0, lambda u: B.exp(u), lambda u: -u]
        switched = [B.switch(i, branches, beta) for i in (0, 1, 2, 5)]
        mapped = B.map(lambda r: B.sum(B.log_expit(r)), x)
        # gradient through scan and cond
        d_scan = B.grad(lambda v: B.scan(step, (B.zeros(()), B.zeros(())), v)[0][1])(z)
        d_cond = B.grad(lambda v: B.cond(B.sum(v) > 0, lambda u: B.sum(u ** 3),
                                         lambda u: B.sum(B.sin(u)), v))(beta)
        return {"scan_f": scan_f, "scan_r": scan_r, "scan_len": scan_len, "root": root,
                "iters": iters, "beta_hat": beta_hat, "counted": counted, "cond_t": cond_t,
                "cond_f": cond_f, "switch": switched, "map": mapped, "d_scan": d_scan,
                "d_cond": d_cond}

    agree(fn, Z0, BETA0, LR_X, LR_Y)


def test_vmap_and_jit(agree):
    zs = RNG.normal(size=(7, 10)) * 0.5

    def fn(B, zs, beta, x, y):
        f = lambda v: schools_logp(B, v)  # noqa: E731
        logps = B.vmap(f)(zs)
        grads = B.vmap(B.grad(f))(zs)
        betas = B.stack([beta, 2 * beta, -beta])
        lr = B.vmap(lr_logp, in_axes=(None, 0, None, None))(B, betas, x, y)
        out1 = B.vmap(lambda v, s: B.exp(v) * s, in_axes=(1, None), out_axes=1)(zs, beta[0])
        pair = B.vmap(lambda a, b: (B.sum(a * b), a - b))(zs, B.flip(zs, 0))
        jf = B.jit(B.value_and_grad(f))
        jit_vg = jf(zs[0])
        jit_again = jf(zs[1])
        return {"logps": logps, "grads": grads, "lr": lr, "out1": out1, "pair": pair,
                "jit": (jit_vg, jit_again)}

    agree(fn, zs, BETA0, LR_X, LR_Y)


# ================================================================== shared noise: draws
def _all_draws(B):
    k = B.key(42)
    ks = B.split(k, 24)
    alpha = B.asarray([0.3, 1.0, 4.5])
    probs = B.asarray([0.1, 0.5, 0.93])
    logits = B.asarray(np.log([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]]))
    mean = B.asarray([1.0, -1.0, 0.5])
    L = B.asarray(np.array([[1.0, 0, 0], [0.5, 2.0, 0], [-0.3, 0.2, 0.7]]))
    return {
        "key": k, "key_big": B.key(2**70 + 3), "split": ks, "split1": B.split(ks[0], 1),
        "fold_in": B.fold_in(k, 7), "fold_in_big": B.fold_in(ks[1], 2**40),
        "key_data": B.key_data(ks[:3]),
        "normal": B.normal(ks[2], (4, 3)), "normal_scalar": B.normal(ks[3]),
        "uniform": B.uniform(ks[4], (5,)),
        "uniform_range": B.uniform(ks[5], (2, 3), minval=-2.0, maxval=3.0),
        "gamma": B.gamma(ks[6], alpha, (4, 3)), "gamma_default": B.gamma(ks[7], alpha),
        "gamma_tiny": B.gamma(ks[8], B.asarray(0.05), (6,)),
        "poisson": B.poisson(ks[9], B.asarray([0.5, 3.0, 120.0])),
        "poisson_shape": B.poisson(ks[10], B.asarray(2.0), (2, 4)),
        "binomial": B.binomial(ks[11], 20, probs), "binomial_shape": B.binomial(
            ks[12], B.asarray([5, 50]), B.asarray(0.3), (3, 2)),
        "randint": B.randint(ks[13], (3, 4), -3, 7), "permutation": B.permutation(ks[14], 11),
        "exponential": B.exponential(ks[15], (5,)), "gumbel": B.gumbel(ks[16], (2, 3)),
        "bernoulli": B.bernoulli(ks[17], probs), "bernoulli_shape": B.bernoulli(
            ks[18], probs, (4, 3)),
        "categorical": B.categorical(ks[19], logits),
        "categorical_shape": B.categorical(ks[20], logits, shape=(5, 2)),
        "beta": B.beta(ks[21], alpha, probs * 3),
        "dirichlet": B.dirichlet(ks[22], B.stack([alpha, B.flip(alpha, 0)])),
        "multivariate_normal": B.multivariate_normal(ks[23], mean, L, shape=(6,)),
        "multivariate_normal_default": B.multivariate_normal(k, mean, L),
    }


def test_random_draws(agree):
    # ``agree`` compares every leaf: the float draws to round-off, keys and integers exactly
    res = agree(_all_draws)
    for method in RANDOM_PRIMITIVES + DERIVED_DRAWS + ("key_data",):
        assert any(k == method or k.startswith(method + "_") for k in res), method


def test_random_under_jit_and_vmap(agree):
    def fn(B):
        k = B.key(3)
        ks = B.split(k, 4)
        alpha = B.asarray([0.5, 2.0, 9.0])
        draw = lambda kk: {  # noqa: E731
            "n": B.normal(kk, (3,)), "u": B.uniform(kk, (2,)),
            "g": B.gamma(B.fold_in(kk, 1), alpha), "c": B.categorical(kk, B.zeros((4,))),
            "s": B.split(kk, 3), "r": B.randint(kk, (2,), 0, 9),
        }
        return {"jit": B.jit(draw)(k), "vmap": B.vmap(draw)(ks),
                "jit_vmap": B.jit(B.vmap(draw))(ks),
                "vmap_alpha": B.vmap(lambda kk, a: B.gamma(kk, a, (2,)))(ks[:3], alpha),
                "fold_traced": B.fori_loop(0, 3, lambda i, acc: acc + B.normal(
                    B.fold_in(k, i), ()), B.zeros(()))}

    agree(fn)


def test_gamma_reparameterised_gradients(agree):
    def fn(B, alpha, w):
        k = B.key(11)

        def loss(a):
            return B.sum(w * B.gamma(k, a, (5, 3)))

        def loss_beta(a, b):
            return B.sum(B.log(B.beta(k, a, b, (4, 3))) * w[:4])

        def loss_dir(a):
            return B.sum(B.dirichlet(k, a, (6,))[:, 0] ** 2)

        return {"gamma": B.value_and_grad(loss)(alpha),
                "gamma_scalar": B.grad(lambda a: B.sum(B.gamma(k, a, (7,))))(alpha[1]),
                "beta": B.grad(loss_beta, argnums=(0, 1))(alpha, B.flip(alpha, 0)),
                "dirichlet": B.grad(loss_dir)(alpha),
                "jit_gamma": B.jit(B.grad(loss))(alpha)}

    agree(fn, np.array([0.2, 1.0, 6.5]), RNG.uniform(0.5, 1.5, size=(5, 3)))


# ================================================================== small algorithms
def rwm_chain(B, z0, n_steps=20, scale=0.3):
    """Random-walk Metropolis on the eight-schools density: positions, log densities and
    accept decisions of every step."""
    keys = B.split(B.key(2024), n_steps)

    def step(state, key):
        z, lp = state
        k1, k2 = B.split(key)
        prop = z + scale * B.normal(k1, B.shape(z))
        lp_prop = schools_logp(B, prop)
        accept = B.log(B.uniform(k2, ())) < lp_prop - lp
        z = B.where(accept, prop, z)
        lp = B.where(accept, lp_prop, lp)
        return (z, lp), {"z": z, "lp": lp, "accept": accept}

    return B.scan(step, (z0, schools_logp(B, z0)), keys)


def hmc_chain(B, z0, n_steps=20, n_leapfrog=5, step_size=0.15):
    """HMC with a leapfrog integrator on the eight-schools density (a fori_loop inside a scan)."""
    grad = B.grad(lambda v: schools_logp(B, v))

    def leapfrog(z, p):
        def body(i, zp):
            z, p = zp
            p = p + 0.5 * step_size * grad(z)
            z = z + step_size * p
            p = p + 0.5 * step_size * grad(z)
            return z, p

        return B.fori_loop(0, n_leapfrog, body, (z, p))

    def step(z, key):
        k1, k2 = B.split(key)
        p = B.normal(k1, B.shape(z))
        z_new, p_new = leapfrog(z, p)
        log_ratio = (schools_logp(B, z_new) - 0.5 * B.sum(p_new * p_new)
                     - schools_logp(B, z) + 0.5 * B.sum(p * p))
        accept = B.log(B.uniform(k2, ())) < log_ratio
        z = B.where(accept, z_new, z)
        return z, {"z": z, "log_ratio": log_ratio, "accept": accept}

    return B.scan(step, z0, B.split(B.fold_in(B.key(7), 1), n_steps))


def test_random_walk_metropolis(agree):
    res = agree(lambda B, z: rwm_chain(B, z), Z0)
    n_acc = int(np.sum(res[1]["accept"]))
    assert 0 < n_acc < 20, "the chain should both accept and reject (the test covers both)"


def test_hmc_trajectory(agree):
    res = agree(lambda B, z: {"eager": hmc_chain(B, z),
                              "jit": B.jit(lambda v: hmc_chain(B, v))(z)}, Z0)
    assert 0 < int(np.sum(res["eager"][1]["accept"])) <= 20


# ================================================================== SharedNoise on NumPy itself
def test_shared_noise_numpy_is_numpy_bit_for_bit(ref):
    S = SharedNoise(ref)
    assert S is SharedNoise(ref) and SharedNoise(S) is S
    assert isinstance(S, type(ref)) and S.name == "numpy" and S.precision == "float64"
    shared, plain = _all_draws(S), _all_draws(ref)
    assert shared.keys() == plain.keys()
    for name in plain:
        a, b = np.asarray(shared[name]), np.asarray(plain[name])
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a, b), f"SharedNoise(numpy).{name} differs from NumpyBackend's"
    # reparameterised gamma gradients too (same host formula, same operations)
    alpha = np.array([0.4, 2.5])
    g_shared = S.grad(lambda a: S.sum(S.gamma(S.key(5), a, (3, 2)) ** 2))(alpha)
    g_plain = ref.grad(lambda a: ref.sum(ref.gamma(ref.key(5), a, (3, 2)) ** 2))(alpha)
    assert np.array_equal(g_shared, g_plain)
    # results through agvi.random under use_backend
    import agvi.random as rnd
    with agvi.use_backend(S):
        k1 = rnd.split(rnd.key(9), 3)
    assert np.array_equal(k1, ref.split(ref.key(9), 3))


def test_shared_noise_rejects_non_backend():
    with pytest.raises(TypeError, match="backend must be a Backend"):
        SharedNoise("numpy")


def test_assert_agree_reports_backend_and_leaf(ref):
    good = {"numpy": {"a": np.array([1.0, 2.0]), "n": np.array([1, 2])}}
    assert assert_agree(good) == {}
    bad = dict(good, other={"a": np.array([1.0, 2.0 + 1e-6]), "n": np.array([1, 2])})
    with pytest.raises(AssertionError, match=r"other vs numpy.*\['a'\].*relative error"):
        assert_agree(bad)
    bad_int = dict(good, other={"a": np.array([1.0, 2.0]), "n": np.array([1, 3])})
    with pytest.raises(AssertionError, match=r"\['n'\].*discrete values differ"):
        assert_agree(bad_int)
    res = run_on_all(lambda B, x: B.exp(x), np.array([0.0, 1.0]), backends=[ref])
    assert list(res) == ["numpy"] and np.allclose(res["numpy"], [1.0, math.e])
