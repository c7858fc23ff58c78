"""Variationalize of a torch.nn.Module (torch backend): parameters substituted functionally,
batch-norm buffers left deterministic and unchanged, frozen parameters kept out of the
posterior, and local reparameterisation of Linear and Conv2d layers through forward hooks."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

import agvi
from agvi.backends import available_backends

pytestmark = pytest.mark.skipif("torch" not in available_backends(),
                                reason="torch is not installed")


@pytest.fixture
def TB(torch_one_thread):
    with agvi.use_backend("torch", precision="float64") as B:
        yield B


def bn_net():
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                              torch.nn.Linear(8, 3))
    net.train()
    with torch.no_grad():  # give the running statistics non-trivial values
        for _ in range(3):
            net(torch.randn(16, 4) * 2 + 1)
    return net


def snapshot(tensors):
    return {k: v.detach().clone() for k, v in tensors.items()}


def assert_same(a, b):
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_buffers_stay_unchanged_and_parameters_are_substituted(TB):
    import torch

    from agvi.nn import Variationalize

    net = bn_net()
    module_params = snapshot(dict(net.named_parameters()))
    module_buffers = snapshot(dict(net.named_buffers()))
    bnn = Variationalize(net)
    assert bnn.names == ("0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias")
    assert set(bnn.buffers) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert bnn.fan_in["0.weight"] == 4 and bnn.fan_in["0.bias"] == 4
    assert bnn.fan_in["1.weight"] == 1 and bnn.fan_in["3.bias"] == 8
    stored = snapshot(bnn.buffers)
    vp = bnn.variational_params
    assert vp["loc"]["0.weight"].dtype == torch.float64
    x = TB.asarray(np.random.default_rng(0).normal(size=(10, 4)))
    y = TB.asarray(np.arange(10) % 3)
    key = agvi.random.key(0)

    # training mode: batch statistics; forward passes and gradients leave every buffer alone
    out_train = bnn(vp, x, key)
    loss, g = TB.value_and_grad(lambda v: bnn.elbo_loss(v, x, y, key, dataset_size=100))(vp)
    assert torch.isfinite(loss) and all(torch.isfinite(t).all() for t in g["rho"].values())
    assert_same(snapshot(bnn.buffers), stored)
    assert_same(snapshot(dict(net.named_buffers())), module_buffers)
    assert_same(snapshot(dict(net.named_parameters())), module_params)

    # the reference: a copy of the module holding the drawn weights, run normally
    weights = bnn.sample_weights(vp, key)

    def reference():
        ref = copy.deepcopy(net).double()
        with torch.no_grad():
            for name, p in ref.named_parameters():
                p.copy_(weights[name])
        return ref

    ref = reference()
    torch.testing.assert_close(out_train, ref(x), rtol=1e-12, atol=1e-12)
    # (an ordinary module updates its running statistics in training mode; bnn did not)
    assert not torch.equal(ref[1].running_mean.float(), module_buffers["1.running_mean"])
    net.eval()
    out_eval = bnn(vp, x, key)
    torch.testing.assert_close(out_eval, reference()(x), rtol=1e-12, atol=1e-12)
    # eval mode normalises with the (unchanged) running statistics, not the batch's
    assert not torch.allclose(out_eval, out_train)
    assert_same(snapshot(dict(net.named_buffers())), module_buffers)
    assert_same(snapshot(dict(net.named_parameters())), module_params)
    # posterior means: the module's own output (in float64)
    ref_mean = copy.deepcopy(net).double().eval()
    torch.testing.assert_close(bnn(vp, x), ref_mean(x), rtol=1e-12, atol=1e-12)


def test_frozen_parameters_stay_deterministic(TB):
    from agvi.nn import Variationalize

    net = bn_net()
    net[1].weight.requires_grad_(False)
    bnn = Variationalize(net)
    assert "1.weight" not in bnn.names and "1.weight" in bnn.buffers


def test_local_reparameterization_of_linear_and_conv_layers(TB):
    """Repeated identical inputs under local reparameterisation: the outputs of the Linear and
    Conv2d layers are independent N(layer(x; loc), layer(x^2; scale^2)) draws (Kingma et al.,
    2015); mean and variance within 4.5 standard errors at every output position."""
    import torch

    from agvi.nn import Variationalize

    torch.manual_seed(1)
    conv = torch.nn.Conv2d(2, 3, kernel_size=2, padding=1, stride=2)
    lin = torch.nn.Linear(5, 4)
    n = 3000
    for layer, x0 in ((lin, torch.randn(5)), (conv, torch.randn(2, 4, 4))):
        bnn = Variationalize(layer, local_reparameterization=True)
        assert bnn._dense == {"": ("weight", "bias")}
        vp = bnn.variational_params
        rng = np.random.default_rng(2)
        vp = {"loc": vp["loc"], "rho": {k: v + TB.asarray(rng.normal(0, 1, size=v.shape)) + 2.0
                                        for k, v in vp["rho"].items()}}
        x0 = x0.double()
        xs = x0.expand((n,) + tuple(x0.shape)).contiguous()
        out = bnn(vp, xs, agvi.random.key(0)).detach()
        sw, sb = (bnn.scale(vp["rho"][k]) for k in ("weight", "bias"))
        with torch.no_grad():
            if layer is lin:
                mean = torch.nn.functional.linear(x0, vp["loc"]["weight"], vp["loc"]["bias"])
                var = torch.nn.functional.linear(x0**2, sw**2, sb**2)
            else:
                kw = dict(stride=2, padding=1)
                mean = torch.nn.functional.conv2d(x0[None], vp["loc"]["weight"],
                                                  vp["loc"]["bias"], **kw)[0]
                var = torch.nn.functional.conv2d(x0[None] ** 2, sw**2, sb**2, **kw)[0]
        z_mean = (out.mean(0) - mean) / torch.sqrt(var / n)
        z_var = (out.var(0) - var) / (var * math.sqrt(2 / (n - 1)))
        assert z_mean.abs().max() < 4.5 and z_var.abs().max() < 4.5
        # without it, one weight draw is shared by the whole batch
        shared = bnn(vp, xs[:4], agvi.random.key(0), local_reparameterization=False)
        torch.testing.assert_close(shared, shared[:1].expand_as(shared))
        g = TB.grad(lambda v, m=bnn, x8=xs[:8]: m(v, x8, agvi.random.key(1)).sum())(vp)
        assert all(torch.isfinite(t).all() and (t != 0).any() for t in g["rho"].values())


def test_module_with_svi(TB):
    """The module's model and guide under SVI (mini-batches drawn by the plate): the loss
    falls, the fitted posterior classifies the training data, the module is untouched."""
    import torch

    from agvi.infer import SVI, TraceMeanField_ELBO
    from agvi.nn import Variationalize
    from agvi.optim import Adam

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    before = snapshot(dict(net.named_parameters()))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    bnn = Variationalize(net)
    svi = SVI(bnn.model, bnn.guide, Adam(0.05), TraceMeanField_ELBO(), subsample_size=50)
    res = svi.run(agvi.random.key(0), 200, TB.asarray(x), TB.asarray(y), progress_bar=False)
    losses = res.losses.detach().numpy()
    assert losses[-20:].mean() < 0.5 * losses[:5].mean()
    vp = bnn.from_svi_params(res.params)
    p = bnn.predict_proba(vp, TB.asarray(x), agvi.random.key(1), 10).detach().numpy()
    assert (p.argmax(1) == y).mean() > 0.9
    assert_same(snapshot(dict(net.named_parameters())), before)


def test_module_errors(TB):
    import torch

    from agvi.nn import Variationalize

    net = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="params"):
        Variationalize(net, {"w": np.zeros(2)})
    with agvi.use_backend("numpy"):
        with pytest.raises(ValueError, match="torch backend"):
            Variationalize(net)
