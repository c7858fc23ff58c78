"""The generalised-VI gradient estimators: pathwise (forward and reverse mode, every chunk size)
against closed-form chain rules, score-function unbiasedness, the KL term, non-finite samples,
and the posterior estimators' densities."""

from __future__ import annotations

import math

import numpy as np
import pytest

import agvi.distributions as dist
from agvi.infer.gvi import (
    GVIGradient,
    LossGradient,
    compute_and_differentiate_loss,
    compute_and_differentiate_loss_score,
    compute_loss_and_jacobian_pathwise,
    compute_regularisation_loss,
)
from agvi.infer.posterior_estimators import (
    AffineCouplingFlowEstimator,
    DiagonalGaussianEstimator,
    FullRankGaussianEstimator,
)

A = np.array([0.7, -1.3, 2.0])


def smooth_loss(theta, data):
    """sum(a_i sin(theta_i)) + (|theta|^2)^2 / 10: non-linear, with a closed-form gradient."""
    from agvi import get_backend

    B = get_backend()
    sq = B.sum(theta * theta)
    return B.sum(data * B.sin(theta)) + sq * sq / 10.0


def smooth_grad_np(theta):
    """d smooth_loss / d theta for each row of theta (n, d), in NumPy."""
    sq = np.sum(theta**2, axis=-1, keepdims=True)
    return A * np.cos(theta) + 0.4 * sq * theta


def _np(B, x):
    return np.asarray(B.to_numpy(x))


@pytest.mark.parametrize("chunk", [1, 2, None])
@pytest.mark.parametrize("cls", [DiagonalGaussianEstimator, FullRankGaussianEstimator,
                                 AffineCouplingFlowEstimator])
def test_forward_and_reverse_gradients_agree(B64, cls, chunk):
    B = B64
    if cls is AffineCouplingFlowEstimator:
        est = cls(3, n_layers=2, hidden=4, loc=0.2, scale=0.9, key=3)
        # non-identity couplings so the chain rule runs through the networks
        est.params["layers"][0]["w2"] = 0.1 * B.normal(B.key(5), (4, 6))
    else:
        est = cls(3, loc=np.array([0.1, -0.2, 0.3]), scale=np.array([0.5, 0.8, 1.1]))
    data = B.asarray(A)
    rev = compute_loss_and_jacobian_pathwise(smooth_loss, est, data, 7, 6, diff_mode="reverse")
    fwd = compute_loss_and_jacobian_pathwise(smooth_loss, est, data, 7, 6, diff_mode="forward",
                                             jacobian_chunk_size=chunk)
    assert isinstance(rev, LossGradient) and rev.n_nonfinite == 0
    assert B.shape(rev.samples) == (6, 3) and B.shape(rev.jacobians) == (6, 3)
    np.testing.assert_array_equal(_np(B, rev.samples), _np(B, fwd.samples))
    # the per-sample Jacobians against the closed form, then reverse against forward
    np.testing.assert_allclose(_np(B, rev.jacobians), smooth_grad_np(_np(B, rev.samples)),
                               rtol=1e-10)
    np.testing.assert_allclose(_np(B, fwd.jacobians), _np(B, rev.jacobians), rtol=1e-8)
    for g_r, g_f in zip(B.tree_leaves(rev.grads), B.tree_leaves(fwd.grads)):
        np.testing.assert_allclose(_np(B, g_f), _np(B, g_r), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(float(rev.loss), float(fwd.loss), rtol=1e-12)


def test_pathwise_gradient_matches_chain_rule(B64):
    """For q = N(loc, diag(s^2)): d/dloc = mean g_i and d/dlog s = mean g_i * eps_i * s."""
    B = B64
    loc, scale = np.array([0.1, -0.2, 0.3]), np.array([0.5, 0.8, 1.1])
    est = DiagonalGaussianEstimator(3, loc=loc, scale=scale)
    res = compute_loss_and_jacobian_pathwise(smooth_loss, est, B.asarray(A), 11, 8)
    theta = _np(B, res.samples)
    g = smooth_grad_np(theta)
    eps = (theta - loc) / scale
    np.testing.assert_allclose(_np(B, res.grads["loc"]), g.mean(0), rtol=1e-10)
    np.testing.assert_allclose(_np(B, res.grads["log_scale"]), (g * eps * scale).mean(0),
                               rtol=1e-10)
    losses = A @ np.sin(theta).T + np.sum(theta**2, 1) ** 2 / 10
    np.testing.assert_allclose(_np(B, res.per_sample_losses), losses, rtol=1e-12)
    np.testing.assert_allclose(float(res.loss), losses.mean(), rtol=1e-12)


def test_full_rank_pathwise_gradient_matches_chain_rule(B64):
    """theta = loc + L eps: d/dL_jk = mean g_j eps_k (lower part); the diagonal is stored as
    log L_jj, so its entries carry an extra factor L_jj."""
    B = B64
    L = np.array([[0.6, 0.0], [0.3, 0.9]])
    est = FullRankGaussianEstimator(2, loc=np.array([0.2, -0.1]), scale_tril=L)
    res = compute_loss_and_jacobian_pathwise(smooth_loss, est, B.asarray(A[:2]), 4, 5)
    theta = _np(B, res.samples)
    g = A[:2] * np.cos(theta) + 0.4 * np.sum(theta**2, 1, keepdims=True) * theta
    eps = np.linalg.solve(L, (theta - [0.2, -0.1]).T).T
    dL = np.tril(np.einsum("ij,ik->jk", g, eps) / len(g))
    dL[np.diag_indices(2)] *= np.diag(L)
    np.testing.assert_allclose(_np(B, res.grads["loc"]), g.mean(0), rtol=1e-10)
    np.testing.assert_allclose(np.tril(_np(B, res.grads["tril"])), dL, rtol=1e-10, atol=1e-14)


def test_score_and_pathwise_estimators_are_unbiased(B64):
    """E_q[|theta - a|^2] = |loc - a|^2 + sum s^2: gradients 2 (loc - a) and 2 s^2."""
    B = B64
    a = np.array([1.0, -0.5])
    loc, scale = np.array([0.5, 0.2]), np.array([0.8, 0.6])
    est = DiagonalGaussianEstimator(2, loc=loc, scale=scale)

    def quad(theta, data):
        from agvi import get_backend

        d = theta - data
        return get_backend().sum(d * d)

    n = 2000
    exact = {"loc": 2 * (loc - a), "log_scale": 2 * scale**2}
    for fn in (compute_loss_and_jacobian_pathwise, compute_and_differentiate_loss_score):
        res = fn(quad, est, B.asarray(a), 1, n)
        theta = _np(B, res.samples)
        eps = (theta - loc) / scale
        loss = np.sum((theta - a) ** 2, 1, keepdims=True)
        if fn is compute_loss_and_jacobian_pathwise:
            g = 2 * (theta - a)
            per = {"loc": g, "log_scale": g * eps * scale}
        else:
            c = (loss - loss.mean()) * n / (n - 1)
            per = {"loc": c * eps / scale, "log_scale": c * (eps**2 - 1)}
        for name in ("loc", "log_scale"):
            # the estimate is the mean of the per-sample terms, within 5 standard errors of
            # the closed form
            np.testing.assert_allclose(_np(B, res.grads[name]), per[name].mean(0), rtol=1e-9)
            se = per[name].std(0) / math.sqrt(n)
            assert np.all(np.abs(per[name].mean(0) - exact[name]) < 5 * se), name
        np.testing.assert_allclose(float(res.loss), loss.mean(), rtol=1e-12)
    assert res.jacobians is None and B.shape(res.per_sample_losses) == (n,)  # the score run


def test_score_gradient_uses_leave_one_out_baseline(B64):
    """Exact value of the estimator on few samples: (1/n) sum (l_i - b_i) grad log q."""
    B = B64
    loc, scale = np.array([0.3]), np.array([0.7])
    est = DiagonalGaussianEstimator(1, loc=loc, scale=scale)

    def cube(theta, data):
        return theta[0] ** 3

    res = compute_and_differentiate_loss_score(cube, est, None, 2, 5)
    theta = _np(B, res.samples)[:, 0]
    loss = theta**3
    base = (loss.sum() - loss) / (len(loss) - 1)
    eps = (theta - loc[0]) / scale[0]
    d_loc = eps / scale[0]        # d log q / d loc
    d_ls = eps**2 - 1.0           # d log q / d log scale
    np.testing.assert_allclose(float(_np(B, res.grads["loc"])[0]),
                               np.mean((loss - base) * d_loc), rtol=1e-10)
    np.testing.assert_allclose(float(_np(B, res.grads["log_scale"])[0]),
                               np.mean((loss - base) * d_ls), rtol=1e-10)


def _normal_kl(m1, s1, m2, s2):
    return np.sum(np.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5)


def test_regularisation_analytic_and_monte_carlo(B64):
    B = B64
    loc, scale = np.array([0.3, -1.0]), np.array([0.5, 2.0])
    p_loc, p_scale = np.array([0.0, 0.5]), np.array([1.0, 1.5])
    prior = dist.Normal(B.asarray(p_loc), B.asarray(p_scale))   # batch (2,): reinterpreted
    exact = _normal_kl(loc, scale, p_loc, p_scale)
    diag = DiagonalGaussianEstimator(2, loc=loc, scale=scale)
    np.testing.assert_allclose(float(compute_regularisation_loss(diag, prior)), exact,
                               rtol=1e-12)
    full = FullRankGaussianEstimator(2, loc=loc, scale=scale)
    np.testing.assert_allclose(float(compute_regularisation_loss(full, prior)), exact,
                               rtol=1e-12)
    # a flow starts exactly at N(loc, diag(scale^2)): its Monte Carlo KL must agree
    flow = AffineCouplingFlowEstimator(2, loc=loc, scale=scale)
    with pytest.raises(ValueError, match="key"):
        compute_regularisation_loss(flow, prior)
    n = 20000
    mc = float(compute_regularisation_loss(flow, prior, n, key=3))
    theta, log_q = flow.sample(3, n)
    ratio = _np(B, log_q - prior.to_event(1).log_prob(theta))
    assert abs(mc - exact) < 4 * ratio.std() / math.sqrt(n)
    # differentiable in the params: d KL / d loc = (loc - p_loc) / p_scale^2
    g = B.grad(lambda p: compute_regularisation_loss(diag, prior, params=p))(diag.params)
    np.testing.assert_allclose(_np(B, g["loc"]), (loc - p_loc) / p_scale**2, rtol=1e-10)


def test_nonfinite_samples_are_dropped_and_counted(B64):
    B = B64
    est = DiagonalGaussianEstimator(2, loc=0.0, scale=1.0)

    def loss(theta, data):
        from agvi import get_backend

        Bk = get_backend()
        sq = Bk.sum(theta * theta)
        # a "simulator failure" above 0.5: the loss is inf there (division by zero); the
        # divisor is a constant, so the other samples' gradients stay finite
        return sq / Bk.where(theta[0] > 0.5, Bk.zeros_like(sq), Bk.ones_like(sq))

    res = compute_loss_and_jacobian_pathwise(loss, est, None, 0, 40)
    theta = _np(B, res.samples)
    bad = theta[:, 0] > 0.5
    assert 0 < bad.sum() < 40
    assert res.n_nonfinite == int(bad.sum())
    good = theta[~bad]
    np.testing.assert_allclose(float(res.loss), np.mean(np.sum(good**2, 1)), rtol=1e-12)
    # gradient of mean |theta|^2 over the kept samples only
    np.testing.assert_allclose(_np(B, res.grads["loc"]), np.mean(2 * good, 0), rtol=1e-10)
    score = compute_and_differentiate_loss_score(loss, est, None, 0, 40)
    assert score.n_nonfinite == int(bad.sum())
    # all samples bad: the loss is nan, nothing is silently averaged
    res = compute_loss_and_jacobian_pathwise(lambda t, d: t[0] * math.nan, est, None, 0, 5)
    assert res.n_nonfinite == 5 and math.isnan(float(res.loss))
    assert all(np.all(_np(B, g) == 0) for g in B.tree_leaves(res.grads))


def test_total_objective_combines_loss_and_kl(B64):
    B = B64
    est = DiagonalGaussianEstimator(2, loc=np.array([0.2, 0.1]), scale=0.5)
    prior = dist.Normal(B.zeros((2,)), B.ones((2,))).to_event(1)
    out = compute_and_differentiate_loss(smooth_loss, est, prior, B.asarray(A[:2]), 9,
                                         n_samples=4, w=2.5)
    assert isinstance(out, GVIGradient)
    k1 = B.split(B.key(9), 2)[0]
    part = compute_loss_and_jacobian_pathwise(smooth_loss, est, B.asarray(A[:2]), k1, 4)
    kl = _normal_kl(np.array([0.2, 0.1]), np.full(2, 0.5), np.zeros(2), np.ones(2))
    np.testing.assert_allclose(float(out.loss), float(part.loss), rtol=1e-12)
    np.testing.assert_allclose(float(out.regularisation), kl, rtol=1e-12)
    np.testing.assert_allclose(float(out.total), float(part.loss) + 2.5 * kl, rtol=1e-12)
    # grad of the KL: loc / 1 and s^2 - 1 (d/d log s)
    np.testing.assert_allclose(_np(B, out.grads["loc"]),
                               _np(B, part.grads["loc"]) + 2.5 * np.array([0.2, 0.1]),
                               rtol=1e-10)
    np.testing.assert_allclose(_np(B, out.grads["log_scale"]),
                               _np(B, part.grads["log_scale"]) + 2.5 * (0.25 - 1.0),
                               rtol=1e-10)


@pytest.mark.parametrize("cls", [DiagonalGaussianEstimator, FullRankGaussianEstimator,
                                 AffineCouplingFlowEstimator])
def test_estimator_densities_are_normalised_and_consistent(B64, cls):
    """log_prob(sample) equals the log density returned with the sample (inverse of the flow),
    and exp(log_prob) integrates to one on a grid (an independent check of the Jacobian)."""
    B = B64
    kwargs = {"key": 1, "n_layers": 3, "hidden": 5} if cls is AffineCouplingFlowEstimator \
        else {}
    est = cls(2, loc=np.array([0.3, -0.2]), scale=np.array([0.8, 0.6]), **kwargs)
    if cls is AffineCouplingFlowEstimator:
        for k, layer in enumerate(est.params["layers"]):
            layer["w2"] = 0.4 * B.normal(B.key(10 + k), (5, 4))
            layer["b2"] = 0.2 * B.normal(B.key(20 + k), (4,))
    theta, log_q = est.sample(4, 50)
    np.testing.assert_allclose(_np(B, est.log_prob(theta)), _np(B, log_q), rtol=1e-10,
                               atol=1e-12)
    g = np.linspace(-6, 6, 241)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    pts = B.asarray(np.stack([xx.ravel(), yy.ravel()], -1))
    dens = np.exp(_np(B, est.log_prob(pts))).reshape(xx.shape)
    mass = np.trapezoid(np.trapezoid(dens, g, axis=1), g)
    np.testing.assert_allclose(mass, 1.0, atol=2e-3)


def test_argument_errors(B64):
    B = B64
    est = DiagonalGaussianEstimator(2)
    prior = dist.Normal(B.zeros((2,)), B.ones((2,))).to_event(1)
    with pytest.raises(ValueError, match="diff_mode"):
        compute_loss_and_jacobian_pathwise(smooth_loss, est, None, 0, 2, diff_mode="sideways")
    with pytest.raises(ValueError, match="gradient_estimation_method"):
        compute_and_differentiate_loss(smooth_loss, est, prior, None, 0,
                                       gradient_estimation_method="magic")
    with pytest.raises(ValueError, match="jacobian_chunk_size"):
        compute_loss_and_jacobian_pathwise(smooth_loss, est, None, 0, 2, jacobian_chunk_size=0)
    with pytest.raises(TypeError, match="posterior_estimator"):
        compute_loss_and_jacobian_pathwise(smooth_loss, object(), None, 0, 2)
    with pytest.raises(ValueError, match="event_shape"):
        compute_regularisation_loss(est, dist.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="scalar"):
        compute_loss_and_jacobian_pathwise(lambda t, d: t * 2.0, est, None, 0, 2)
    with pytest.raises(ValueError, match="w must"):
        compute_and_differentiate_loss(smooth_loss, est, prior, None, 0, w=-1.0)
