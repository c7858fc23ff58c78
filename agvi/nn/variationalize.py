"""Variationalize: a Bayesian network, with a mean-field Gaussian posterior over every weight,
from an ordinary one.

``Variationalize(net)`` takes a ``torch.nn.Module`` (torch backend) or, on any backend, a pure
function ``f(params, x)`` with its params pytree (so a Flax or Equinox model can be passed as
``lambda p, x: model.apply({"params": p}, x)``) and keeps, for every weight tensor ``w``, a
posterior ``q(w) = N(loc, scale^2)`` entrywise with ``scale = softplus(rho)`` (or ``exp``),
``loc`` initialised to the network's weights and ``scale`` to a small ``init_scale``. It gives

- the explicit, functional route: :attr:`Variationalize.variational_params` (a pytree),
  :meth:`~Variationalize.forward` (a forward pass with weights drawn from ``q``, or local
  reparameterisation), :meth:`~Variationalize.prior_loss` (``KL(q || prior)``),
  :meth:`~Variationalize.elbo_loss` and :meth:`~Variationalize.fit` (Bayes by Backprop with an
  :mod:`agvi.optim` optimiser);
- the probabilistic-programming route: :meth:`~Variationalize.model` (a sample site per weight
  tensor with its prior, then the likelihood) and :meth:`~Variationalize.guide` (the same
  mean-field posterior as ``param`` sites), for :class:`agvi.infer.SVI`, and the model's log
  density for NUTS (:func:`agvi.handlers.util.potential_energy`).

Priors are set per parameter tensor with :meth:`~Variationalize.set_prior` (see
:mod:`agvi.nn.priors`).

References
----------
Graves, A. (2011). Practical variational inference for neural networks. NIPS 24.
Blundell, C., Cornebise, J., Kavukcuoglu, K. and Wierstra, D. (2015). Weight uncertainty in
neural networks. ICML (Bayes by Backprop: the ELBO per mini-batch, eq. 8-9; the softplus scale).
Kingma, D. P., Salimans, T. and Welling, M. (2015). Variational dropout and the local
reparameterization trick. NeurIPS 28, section 2.3 (local reparameterisation).
The interface follows PyVarInf (Tallec and Blier, 2017, github.com/ctallec/pyvarinf).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import optree

from ..backends import get_backend, use_backend
from ..backends.nn_interop import TorchModuleFunction, is_torch_module
from ..distributions.continuous import Normal
from ..distributions.discrete import Bernoulli, Categorical
from ..handlers.handlers import scale as scale_handler
from ..handlers.primitives import param, plate, sample
from .priors import make_prior

__all__ = ["FitResult", "GaussianWeight", "Variationalize", "dense",
           "expected_calibration_error"]

_LIKELIHOODS = ("categorical", "bernoulli", "normal")


class GaussianWeight:
    """The posterior of a dense kernel or bias, handed to a pure function under local
    reparameterisation in place of a drawn weight; only :func:`dense` can use it.

    Attributes
    ----------
    loc, scale : Array
        Entrywise mean and standard deviation, the shape of the weight.
    key : Array, shape (2,), or None
        The key of the layer's noise (kernels), None for biases.
    """

    __slots__ = ("key", "loc", "scale")

    def __init__(self, loc, scale, key=None):
        self.loc, self.scale, self.key = loc, scale, key

    def __array__(self, *args, **kwargs):
        raise TypeError("a GaussianWeight (local reparameterisation) reached an operation other "
                        "than agvi.nn.dense: compute the layers listed in dense_layers with "
                        "agvi.nn.dense, or name the dense layers explicitly")

    def __repr__(self):
        return f"GaussianWeight(shape={tuple(get_backend().shape(self.loc))})"


def dense(x, kernel, bias=None):
    """A dense layer ``x @ kernel + bias`` that supports local reparameterisation.

    With plain Arrays it is the usual affine map. When :class:`Variationalize` runs a pure
    function with ``local_reparameterization=True``, the kernels and biases of the layers it
    treats as dense arrive as :class:`GaussianWeight` objects, and this function draws the
    pre-activations instead of the weights: ``b ~ N(x @ loc_K + loc_b, (x*x) @ scale_K^2 +
    scale_b^2)``, independently per example and unit (Kingma, Salimans and Welling, 2015,
    section 2.3). Write the dense layers of a network as ``agvi.nn.dense(x, p["w"], p["b"])`` to
    get it.

    Parameters
    ----------
    x : Array, shape (..., in)
    kernel : Array or GaussianWeight, shape (in, out)
    bias : Array, GaussianWeight or None, shape (out,)

    Returns
    -------
    Array, shape (..., out)

    Raises
    ------
    TypeError
        If ``bias`` is a GaussianWeight but ``kernel`` is not.

    Notes
    -----
    A layer called several times in one forward pass draws the same noise each time.
    """
    B = get_backend()
    if not isinstance(kernel, GaussianWeight):
        if isinstance(bias, GaussianWeight):
            raise TypeError("dense: `bias` is a GaussianWeight but `kernel` is an Array; "
                            "list the kernel with its bias in dense_layers")
        out = B.matmul(x, kernel)
        return out if bias is None else out + bias
    mean = B.matmul(x, kernel.loc)
    var = B.matmul(x * x, kernel.scale * kernel.scale)
    if isinstance(bias, GaussianWeight):
        mean = mean + bias.loc
        var = var + bias.scale * bias.scale
    elif bias is not None:
        mean = mean + bias
    dtype = B.dtype_of(mean)
    eps = B.normal(kernel.key, B.shape(mean), dtype=dtype)
    # tiny keeps sqrt differentiable where an input row is all zeros
    return mean + B.sqrt(var + B.finfo(dtype).tiny) * eps


class FitResult(NamedTuple):
    """The result of :meth:`Variationalize.fit`.

    Attributes
    ----------
    variational_params : dict
        The final ``{"loc": {...}, "rho": {...}}``.
    losses : numpy.ndarray, shape (num_steps,)
        The negative ELBO before each step (one step per mini-batch).
    opt_state : Any
        The optimiser's final state (pass it back to continue).
    """

    variational_params: dict
    losses: Any
    opt_state: Any


def _path_name(path) -> str:
    return ".".join(str(p) for p in path) if path else "params"


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


class Variationalize:
    """A Bayesian neural network with a mean-field Gaussian posterior over its weights.

    Parameters
    ----------
    module_or_fn : torch.nn.Module or callable
        A ``torch.nn.Module`` (torch backend; its trainable parameters get a posterior, its
        buffers and frozen parameters stay deterministic, see
        :class:`agvi.backends.nn_interop.TorchModuleFunction`) or a pure function
        ``f(params, x) -> output`` written with the active backend's arrays.
    params : pytree or None
        For a pure function: its parameters (nested dicts, lists, tuples of Arrays; each leaf
        is one weight tensor, named by its path joined with dots, e.g. ``"layer1.w"``).
        Must be None for a module.
    prior : str or Prior
        The prior of every weight tensor (``"gaussian"``, ``"conjugate"``,
        ``"conjugate_known_mean"``, ``"mixtgauss"``); change it per tensor with
        :meth:`set_prior`.
    local_reparameterization : bool
        Draw the pre-activations of dense layers instead of their weights in :meth:`forward`,
        :meth:`elbo_loss` and :meth:`fit` (Kingma et al., 2015). Modules: every ``nn.Linear``
        and ``nn.Conv1d/2d/3d`` with a trainable weight. Pure functions: the layers of
        ``dense_layers``, which ``f`` must compute with :func:`dense`.
    prior_kwargs : dict or None
        Hyperparameters of ``prior``.
    init_scale : float
        Initial posterior standard deviation of every weight (> 0).
    scale_transform : {"softplus", "exp"}
        ``scale = softplus(rho)`` (Blundell et al., 2015) or ``exp(rho)``.
    likelihood : {"categorical", "bernoulli", "normal"} or callable
        The default likelihood of :meth:`model` and :meth:`elbo_loss`: categorical or Bernoulli
        with the output as logits, normal with mean the output and standard deviation
        ``noise_scale``, or ``likelihood(output) -> Distribution`` with ``batch_shape``
        ``(batch,)``.
    noise_scale : float
        The observation noise of the ``"normal"`` likelihood (> 0).
    dense_layers : "auto" or sequence or dict
        Pure functions only, with ``local_reparameterization``: the dense layers. ``"auto"``:
        every 2-D leaf is a kernel of layout ``(in, out)``, with as bias the 1-D leaf of shape
        ``(out,)`` next to it (same parent) if there is exactly one; or a list of kernel
        names, of ``(kernel, bias or None)`` pairs, or a dict ``kernel -> bias``.
    weight_layout : {"in_out", "out_in"}
        Pure functions only: how the fan-in of a weight is read, ``prod(shape[:-1])`` (Flax,
        Haiku: ``(in, out)`` kernels) or ``prod(shape[1:])`` (torch). Modules use ``out_in``.
        A 1-D leaf takes the fan-in of the >= 2-D leaf next to it, else 1.
    backend : Backend or None
        Default: the active backend. The object keeps it for its life.

    Raises
    ------
    TypeError
        If ``module_or_fn`` is neither a module nor callable.
    ValueError
        A module with ``params``, a function without, a module on a non-torch backend,
        a bad ``init_scale``, ``scale_transform``, ``likelihood``, ``noise_scale``,
        ``dense_layers`` or ``weight_layout``, or a parameter named like the reserved sites
        ``"obs"`` and ``"data"``.

    Attributes
    ----------
    names : tuple of str
        The weight tensors, in order.
    shapes : dict
        ``name -> shape``.
    fan_in : dict
        ``name -> int``.
    priors : dict
        ``name -> Prior``.
    variational_params : dict
        The initial variational parameters, ``{"loc": {name: Array}, "rho": {name: Array}}``.
    buffers : dict
        A module's deterministic tensors (empty for a pure function).

    Notes
    -----
    The negative ELBO of a mini-batch of size ``b`` from a data set of size ``N`` is
    ``KL(q || prior) - N / b * sum_batch E_q[log p(y | x, w)]``, an unbiased estimate of the
    full-data negative ELBO (Graves, 2011; Blundell et al., 2015, eq. 8-9 with uniform
    weights ``pi_i = 1/M``, times the number ``M = N / b`` of mini-batches):
    :meth:`elbo_loss` and, through plate scaling, :meth:`model` with ``dataset_size`` or
    ``subsample_size``. The model's log density is also what NUTS samples
    (``NUTS(bnn.model)``, or ``potential_energy(bnn.model, ...)`` as a ``potential_fn``).

    Examples
    --------
    >>> import numpy as np, agvi
    >>> from agvi.nn import Variationalize
    >>> B = agvi.get_backend()
    >>> f = lambda p, x: B.matmul(x, p["w"]) + p["b"]
    >>> bnn = Variationalize(f, {"w": np.zeros((3, 2)), "b": np.zeros(2)})
    >>> vp = bnn.variational_params
    >>> B.shape(bnn(vp, np.ones((5, 3)), agvi.random.key(0)))
    (5, 2)
    >>> round(float(bnn.prior_loss(vp)), 2)   # KL(q || N(0, 1/fan_in)), closed form
    28.45
    """

    obs_site = "obs"
    plate_name = "data"

    def __init__(self, module_or_fn, params=None, prior="gaussian",
                 local_reparameterization: bool = False, *, prior_kwargs=None,
                 init_scale: float = 1e-2, scale_transform: str = "softplus",
                 likelihood="categorical", noise_scale: float = 1.0, dense_layers="auto",
                 weight_layout: str = "in_out", backend=None):
        self.B = B = backend if backend is not None else get_backend()
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) \
                or not 0 < init_scale < math.inf:
            raise ValueError(f"Variationalize: `init_scale` must be a number > 0, got "
                             f"{init_scale!r}")
        if scale_transform not in ("softplus", "exp"):
            raise ValueError("Variationalize: `scale_transform` must be 'softplus' or 'exp', "
                             f"got {scale_transform!r}")
        if not (callable(likelihood) or likelihood in _LIKELIHOODS):
            raise ValueError(f"Variationalize: `likelihood` must be one of {_LIKELIHOODS} or a "
                             f"callable output -> Distribution, got {likelihood!r}")
        if isinstance(noise_scale, bool) or not isinstance(noise_scale, (int, float)) \
                or not noise_scale > 0:
            raise ValueError(f"Variationalize: `noise_scale` must be a number > 0, got "
                             f"{noise_scale!r}")
        if weight_layout not in ("in_out", "out_in"):
            raise ValueError("Variationalize: `weight_layout` must be 'in_out' or 'out_in', "
                             f"got {weight_layout!r}")
        self.scale_transform = scale_transform
        self.likelihood = likelihood
        self.noise_scale = float(noise_scale)
        self.init_scale = float(init_scale)
        self.local_reparameterization = bool(local_reparameterization)
        with use_backend(B):
            if is_torch_module(module_or_fn):
                if params is not None:
                    raise ValueError("Variationalize: `params` must be None for a "
                                     "torch.nn.Module (it carries its own parameters)")
                self._torch = TorchModuleFunction(module_or_fn, B)
                self._fn = None
                self._treedef = None
                init = self._torch.params
                self.fan_in = dict(self._torch.fan_in)
                self.buffers = self._torch.buffers
                self._dense = dict(self._torch.dense)
            elif callable(module_or_fn):
                if params is None:
                    raise ValueError("Variationalize: a pure function f(params, x) needs its "
                                     "parameters: pass params= (a pytree of Arrays)")
                self._torch = None
                self._fn = module_or_fn
                paths, leaves, self._treedef = optree.tree_flatten_with_path(
                    params, none_is_leaf=False)
                names = [_path_name(p) for p in paths]
                if len(set(names)) != len(names):
                    raise ValueError(f"Variationalize: the leaf paths of `params` give "
                                     f"duplicate names {names}")
                init = {}
                for n, leaf in zip(names, leaves):
                    a = B.asarray(leaf)
                    init[n] = B.astype(a, B.float_dtype)
                self.buffers = {}
                self.fan_in = self._layout_fan_in(init, weight_layout)
                # also without local_reparameterization: forward(..., True) may ask for it
                self._dense = self._pure_dense(init, dense_layers)
            else:
                raise TypeError("Variationalize: `module_or_fn` must be a torch.nn.Module or a "
                                f"callable f(params, x), got {type(module_or_fn).__name__}")
            self.names = tuple(init)
            for reserved in (self.obs_site, self.plate_name):
                if reserved in self.names:
                    raise ValueError(f"Variationalize: a parameter is named {reserved!r}, "
                                     "which is reserved for the model's observation site / "
                                     "plate; rename it")
            self.shapes = {n: tuple(B.shape(v)) for n, v in init.items()}
            rho0 = (math.log(math.expm1(self.init_scale)) if scale_transform == "softplus"
                    else math.log(self.init_scale))
            self.variational_params = {
                "loc": {n: v for n, v in init.items()},
                "rho": {n: B.full(self.shapes[n], rho0, dtype=B.dtype_of(v))
                        for n, v in init.items()},
            }
        self.priors = {}
        self.set_prior(None, prior, **(prior_kwargs or {}))

    # -- set-up helpers ---------------------------------------------------------------------
    def _layout_fan_in(self, init, layout):
        shapes = {n: tuple(self.B.shape(v)) for n, v in init.items()}

        def of(shape):
            return int(math.prod(shape[:-1] if layout == "in_out" else shape[1:]))

        fan_in = {}
        for n, s in shapes.items():
            if len(s) >= 2:
                fan_in[n] = of(s)
                continue
            sib = [m for m, t in shapes.items() if len(t) >= 2 and _parent(m) == _parent(n)]
            fan_in[n] = of(shapes[sib[0]]) if sib else 1
        return fan_in

    def _pure_dense(self, init, dense_layers):
        shapes = {n: tuple(self.B.shape(v)) for n, v in init.items()}
        if isinstance(dense_layers, str):
            if dense_layers != "auto":
                raise ValueError("Variationalize: `dense_layers` must be 'auto', a list or a "
                                 f"dict, got {dense_layers!r}")
            out = {}
            for n, s in shapes.items():
                if len(s) != 2:
                    continue
                biases = [m for m, t in shapes.items()
                          if t == (s[1],) and _parent(m) == _parent(n)]
                out[n] = (n, biases[0] if len(biases) == 1 else None)
            return out
        pairs = dense_layers.items() if isinstance(dense_layers, dict) else [
            (d, None) if isinstance(d, str) else tuple(d) for d in dense_layers]
        out = {}
        for k, b in pairs:
            for role, name in (("kernel", k), ("bias", b)):
                if name is not None and name not in shapes:
                    raise ValueError(f"Variationalize: dense_layers names the {role} {name!r}, "
                                     f"which is not a leaf of params; leaves: {sorted(shapes)}")
            if len(shapes[k]) != 2:
                raise ValueError(f"Variationalize: dense kernel {k!r} must be 2-D (in, out), "
                                 f"got shape {shapes[k]}")
            out[k] = (k, b)
        return out

    def set_prior(self, name, prior_type="gaussian", **kwargs):
        """Set the prior of one weight tensor, of a layer, or of all.

        Parameters
        ----------
        name : str or None
            A parameter name (``"fc1.weight"``), a prefix of names (``"fc1"``: every tensor
            ``"fc1.*"``) or None for every tensor.
        prior_type : str or Prior
            ``"gaussian"`` (``mean=0, std=None``: ``1/sqrt(fan_in)``), ``"conjugate"``
            (``n_mc_samples, alpha_0, beta_0, mu_0, kappa_0``), ``"conjugate_known_mean"``
            (``n_mc_samples, mean, alpha_0, beta_0``), ``"mixtgauss"``
            (``n_mc_samples, sigma_1, sigma_2, pi``) or a :class:`~agvi.nn.priors.Prior`.
        **kwargs
            The hyperparameters (see :mod:`agvi.nn.priors`).

        Returns
        -------
        Variationalize
            ``self``, so that calls chain.

        Raises
        ------
        KeyError
            If ``name`` matches no parameter.
        ValueError, TypeError
            As :func:`agvi.nn.priors.make_prior`.
        """
        prior = make_prior(prior_type, **kwargs)
        if name is None:
            targets = list(self.names)
        else:
            targets = [n for n in self.names if n == name or n.startswith(name + ".")]
            if not targets:
                raise KeyError(f"set_prior: {name!r} matches no parameter; parameters: "
                               f"{list(self.names)}")
        for n in targets:
            self.priors[n] = prior
        return self

    # -- posterior ----------------------------------------------------------------------------
    def scale(self, rho):
        """The posterior standard deviation from ``rho`` (``softplus`` or ``exp``)."""
        B = self.B
        return B.softplus(rho) if self.scale_transform == "softplus" else B.exp(rho)

    def posterior(self, var_params) -> dict:
        """``name -> Normal(loc, scale).to_event(ndim)``, the posterior of each tensor."""
        with use_backend(self.B):
            return {n: Normal(var_params["loc"][n], self.scale(var_params["rho"][n]))
                    .to_event(len(self.shapes[n])) for n in self.names}

    def prior_distribution(self, name):
        """The prior of the tensor ``name``: a Distribution with ``event_shape`` its shape."""
        with use_backend(self.B):
            return self.priors[name].distribution(self.shapes[name], self.fan_in[name])

    def sample_weights(self, var_params, key, names=None) -> dict:
        """One draw ``w ~ q`` of every tensor (or of those in ``names``): ``name -> Array``.

        The standard normal noise of all tensors is one draw of their total size, sliced (one
        random-number call compiles much faster on JAX than one per tensor).
        """
        B = self.B
        names = self.names if names is None else tuple(names)
        if not names:
            return {}
        with use_backend(B):
            sizes = [int(math.prod(self.shapes[n])) for n in names]
            dtype = B.dtype_of(var_params["loc"][names[0]])
            eps = B.normal(key, (sum(sizes),), dtype=dtype)
            out, start = {}, 0
            for n, size in zip(names, sizes):
                e = B.reshape(eps[start:start + size], self.shapes[n])
                start += size
                out[n] = var_params["loc"][n] + self.scale(var_params["rho"][n]) * e
            return out

    def unflatten(self, weights):
        """A pure function's params pytree from ``name -> Array`` (a module's: the dict)."""
        if self._treedef is None:
            return dict(weights)
        return optree.tree_unflatten(self._treedef, [weights[n] for n in self.names])

    # -- the network --------------------------------------------------------------------------
    def apply(self, weights, x):
        """The network with the given weights (deterministic).

        Parameters
        ----------
        weights : dict
            ``name -> Array`` for every name of :attr:`names` (e.g. ``var_params["loc"]`` or
            :meth:`sample_weights`).
        x : Array
            The network's input, batch first.

        Returns
        -------
        Array
            The network's output.
        """
        with use_backend(self.B):
            if self._torch is not None:
                return self._torch(weights, x)
            return self._fn(self.unflatten(weights), x)

    def forward(self, var_params, x, key=None, *, local_reparameterization=None):
        """A forward pass with weights drawn from the posterior.

        Parameters
        ----------
        var_params : dict
            ``{"loc": {...}, "rho": {...}}`` as :attr:`variational_params`.
        x : Array
            Input, batch first.
        key : Array, shape (2,), or None
            None: the posterior means, no noise.
        local_reparameterization : bool or None
            Override the object's setting for this call. A network without dense layers
            (see the class's ``dense_layers``) draws its weights either way.

        Returns
        -------
        Array
            The output for one draw (with local reparameterisation: independent draws per
            example for the dense layers, shared draws for the other weights).
        """
        B = self.B
        lrt = (self.local_reparameterization if local_reparameterization is None
               else bool(local_reparameterization))
        with use_backend(B):
            if key is None:
                return self.apply(var_params["loc"], x)
            if not lrt or not self._dense:
                return self.apply(self.sample_weights(var_params, key), x)
            k_w, k_l = B.split(key, 2)
            lrt_names = {n for pair in self._dense.values() for n in pair if n is not None}
            weights = self.sample_weights(var_params, k_w,
                                          [n for n in self.names if n not in lrt_names])
            layer_keys = B.split(k_l, len(self._dense))
            loc, rho = var_params["loc"], var_params["rho"]
            if self._torch is not None:
                local = {}
                for j, (layer, (w, b)) in enumerate(self._dense.items()):
                    weights[w] = loc[w]
                    sw = self.scale(rho[w])
                    vb = None
                    if b is not None:
                        weights[b] = loc[b]
                        sb = self.scale(rho[b])
                        vb = sb * sb
                    local[layer] = (sw * sw, vb, layer_keys[j])
                return self._torch(weights, x, local=local)
            for j, (w, b) in enumerate(self._dense.values()):
                weights[w] = GaussianWeight(loc[w], self.scale(rho[w]), layer_keys[j])
                if b is not None:
                    weights[b] = GaussianWeight(loc[b], self.scale(rho[b]))
            return self._fn(self.unflatten(weights), x)

    def __call__(self, var_params, x, key=None, **kwargs):
        """:meth:`forward`."""
        return self.forward(var_params, x, key, **kwargs)

    def predict(self, var_params, x, key, num_samples: int = 10, **kwargs):
        """Outputs for ``num_samples`` posterior draws, stacked: shape ``(num_samples, ...)``."""
        B = self.B
        with use_backend(B):
            keys = B.split(key, int(num_samples))
            return B.stack([self.forward(var_params, x, keys[s], **kwargs)
                            for s in range(int(num_samples))], axis=0)

    def predict_proba(self, var_params, x, key, num_samples: int = 10, **kwargs):
        """Posterior predictive class probabilities, ``mean_s softmax(output_s)``.

        Returns
        -------
        Array, shape ``(batch, classes)`` (the output's shape; ``sigmoid`` for a
        ``"bernoulli"`` likelihood).
        """
        B = self.B
        with use_backend(B):
            out = self.predict(var_params, x, key, num_samples, **kwargs)
            p = B.expit(out) if self.likelihood == "bernoulli" else B.softmax(out, axis=-1)
            return B.mean(p, axis=0)

    # -- objectives ---------------------------------------------------------------------------
    def prior_loss(self, var_params, key=None, *, per_parameter: bool = False):
        """The complexity term ``KL(q || prior)``, summed over the weight tensors.

        Parameters
        ----------
        var_params : dict
        key : Array, shape (2,), or None
            Needed when a prior has no closed-form KL (all but ``"gaussian"``): each such
            tensor's KL is then the Monte Carlo estimate with its prior's ``n_mc_samples``.
        per_parameter : bool
            Return ``name -> KL`` instead of the sum.

        Returns
        -------
        Array, shape () (or a dict of them)

        Raises
        ------
        ValueError
            If a Monte Carlo prior is set and ``key`` is None.
        """
        B = self.B
        with use_backend(B):
            keys = None if key is None else B.split(key, len(self.names))
            terms = {}
            for i, n in enumerate(self.names):
                loc = var_params["loc"][n]
                sc = self.scale(var_params["rho"][n])
                prior = self.priors[n]
                if keys is None and not prior.closed_form:
                    raise ValueError(f"prior_loss: the prior of {n!r} is {prior!r}, whose KL is "
                                     "a Monte Carlo estimate: pass key=")
                terms[n] = prior.kl(loc, sc, None if keys is None else keys[i], self.fan_in[n])
            if per_parameter:
                return terms
            total = 0.0
            for t in terms.values():
                total = total + t
            return total

    def log_prior(self, weights):
        """``log p(w)`` summed over the tensors (the priors' joint densities), shape ()."""
        with use_backend(self.B):
            total = 0.0
            for n in self.names:
                total = total + self.prior_distribution(n).log_prob(weights[n])
            return total

    def _likelihood(self, spec, out):
        B = self.B
        spec = self.likelihood if spec is None else spec
        if callable(spec):
            return spec(out)
        if spec == "categorical":
            return Categorical(logits=out)
        nd = len(B.shape(out)) - 1
        if spec == "bernoulli":
            return Bernoulli(logits=out).to_event(nd)
        if spec == "normal":
            return Normal(out, self.noise_scale).to_event(nd)
        raise ValueError(f"likelihood must be one of {_LIKELIHOODS} or a callable output -> "
                         f"Distribution, got {spec!r}")

    def log_likelihood(self, var_params, x, y, key, *, likelihood=None, num_samples: int = 1,
                       local_reparameterization=None):
        """``sum_batch log p(y | x, w)`` averaged over ``num_samples`` draws ``w ~ q``
        (Array of shape ())."""
        B = self.B
        with use_backend(B):
            keys = B.split(key, int(num_samples))
            total = 0.0
            for s in range(int(num_samples)):
                out = self.forward(var_params, x, keys[s],
                                   local_reparameterization=local_reparameterization)
                total = total + B.sum(self._likelihood(likelihood, out).log_prob(y))
            return total / int(num_samples)

    def elbo_loss(self, var_params, x, y, key, dataset_size=None, *, likelihood=None,
                  num_samples: int = 1, local_reparameterization=None):
        """The negative ELBO of a mini-batch (Bayes by Backprop).

        ``KL(q || prior) - N / b * mean_s sum_batch log p(y | x, w_s)`` with ``w_s ~ q``.

        Parameters
        ----------
        var_params : dict
        x : Array, shape (b, ...)
        y : Array, shape (b, ...)
        key : Array, shape (2,)
        dataset_size : int or None
            ``N``, the size of the whole data set (default ``b``).
        likelihood : str, callable or None
            Override the object's likelihood.
        num_samples : int
            Draws of the weights per estimate.
        local_reparameterization : bool or None

        Returns
        -------
        Array, shape ()
        """
        B = self.B
        with use_backend(B):
            b = B.shape(x)[0]
            n = b if dataset_size is None else int(dataset_size)
            k_ll, k_kl = B.split(key, 2)
            ll = self.log_likelihood(var_params, x, y, k_ll, likelihood=likelihood,
                                     num_samples=num_samples,
                                     local_reparameterization=local_reparameterization)
            return self.prior_loss(var_params, k_kl) - (n / b) * ll

    # -- the probabilistic program ------------------------------------------------------------
    def model(self, x, y=None, *, likelihood=None, dataset_size=None, subsample_size=None):
        """The Bayesian network as a model: one sample site per weight tensor, then ``"obs"``.

        Parameters
        ----------
        x : Array, shape (n, ...)
        y : Array or None
            Observations (None: ``"obs"`` is drawn, e.g. for :class:`agvi.infer.Predictive`).
        likelihood : str, callable or None
            Override the object's likelihood.
        dataset_size : int or None
            ``x`` is a mini-batch of a data set of this size: the observation site's
            log-likelihood is scaled by ``dataset_size / n``.
        subsample_size : int or None
            ``x`` is the whole data set: the ``"data"`` plate draws a mini-batch of this size
            (needs a key from :class:`~agvi.handlers.seed`, as under SVI) and scales the
            log-likelihood by ``n / subsample_size``.

        Returns
        -------
        Array
            The observation site's value.

        Notes
        -----
        Sites: each name of :attr:`names` with :meth:`prior_distribution`; the plate
        ``"data"``; ``"obs"``. With a Gaussian prior and :meth:`guide`,
        :class:`agvi.infer.TraceMeanField_ELBO` uses the closed-form KL; other priors give the
        Monte Carlo term ``log q - log p`` of the particle. Local reparameterisation does not
        apply here (the weights are explicit sites).
        """
        B = self.B
        if subsample_size is not None and dataset_size is not None:
            raise ValueError("model: give dataset_size (x is a mini-batch) or subsample_size "
                             "(x is the data set), not both")
        with use_backend(B):
            weights = {n: sample(n, self.prior_distribution(n)) for n in self.names}
            n_data = B.shape(x)[0]
            if subsample_size is not None:
                with plate(self.plate_name, n_data, subsample_size=int(subsample_size)) as idx:
                    xb = B.take(x, idx, axis=0)
                    yb = None if y is None else B.take(y, idx, axis=0)
                    lik = self._likelihood(likelihood, self.apply(weights, xb))
                    return sample(self.obs_site, lik, obs=yb)
            factor = 1.0 if dataset_size is None else int(dataset_size) / n_data
            with scale_handler(scale=factor), plate(self.plate_name, n_data):
                lik = self._likelihood(likelihood, self.apply(weights, x))
                return sample(self.obs_site, lik, obs=y)

    def param_names(self, name) -> tuple:
        """The guide's ``param`` site names of the tensor ``name``: ``(name_loc, name_rho)``."""
        return f"{name}_loc", f"{name}_rho"

    def guide(self, x=None, y=None, **kwargs):
        """The mean-field posterior as a guide: ``param`` sites ``{name}_loc`` and
        ``{name}_rho`` (real; ``scale = softplus(rho)``), initialised from
        :attr:`variational_params`, and a sample site per weight tensor. Takes (and ignores)
        the model's arguments."""
        with use_backend(self.B):
            for n in self.names:
                ln, rn = self.param_names(n)
                loc = param(ln, self.variational_params["loc"][n])
                rho = param(rn, self.variational_params["rho"][n])
                sample(n, Normal(loc, self.scale(rho)).to_event(len(self.shapes[n])))

    def from_svi_params(self, params) -> dict:
        """``{"loc": ..., "rho": ...}`` from the parameters of an SVI run of :meth:`guide`."""
        return {"loc": {n: params[self.param_names(n)[0]] for n in self.names},
                "rho": {n: params[self.param_names(n)[1]] for n in self.names}}

    def to_svi_params(self, var_params) -> dict:
        """The inverse of :meth:`from_svi_params` (e.g. ``init_params`` of SVI)."""
        out = {}
        for n in self.names:
            ln, rn = self.param_names(n)
            out[ln], out[rn] = var_params["loc"][n], var_params["rho"][n]
        return out

    # -- training -------------------------------------------------------------------------------
    def fit(self, x, y, key, *, num_epochs: int = 100, batch_size: int = 128, optim=None,
            var_params=None, opt_state=None, likelihood=None, num_samples: int = 1,
            local_reparameterization=None) -> FitResult:
        """Bayes by Backprop: minimise :meth:`elbo_loss` over shuffled mini-batches.

        Parameters
        ----------
        x, y : Array, shape (N, ...)
            The whole training set.
        key : Array, shape (2,)
        num_epochs : int
        batch_size : int
            Mini-batch size ``b``; each epoch takes ``N // b`` batches of a fresh permutation
            (the last ``N mod b`` examples of it are left out of that epoch).
        optim : Optimizer or None
            An :mod:`agvi.optim` optimiser (default ``Adam(1e-2)``).
        var_params : dict or None
            Start here (default :attr:`variational_params`).
        opt_state : OptimizerState or None
            Continue from a previous :class:`FitResult`'s ``opt_state`` (then ``var_params``
            is read from it).
        likelihood, num_samples, local_reparameterization
            As :meth:`elbo_loss`.

        Returns
        -------
        FitResult

        Raises
        ------
        ValueError
            If ``num_epochs`` or ``batch_size`` is not a positive int.

        Notes
        -----
        An epoch is a ``B.scan`` over its mini-batches; on a compiling backend (JAX) it is
        compiled once per call of ``fit`` (``B.jit``), elsewhere it runs as a Python loop.
        """
        from ..optim import Adam

        for nm, v in (("num_epochs", num_epochs), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"fit: `{nm}` must be a positive int, got {v!r}")
        B = self.B
        with use_backend(B):
            optim = Adam(1e-2) if optim is None else optim
            n = B.shape(x)[0]
            bs = min(int(batch_size), n)
            if opt_state is None:
                opt_state = optim.init(self.variational_params if var_params is None
                                       else var_params)

            def step(state, xb, yb, k):
                params = optim.get_params(state)
                loss, grads = B.value_and_grad(lambda p: self.elbo_loss(
                    p, xb, yb, k, n, likelihood=likelihood, num_samples=num_samples,
                    local_reparameterization=local_reparameterization))(params)
                _, state = optim.update(grads, state, params, value=loss)
                return state, B.stop_gradient(loss)

            nb = n // bs

            def epoch(state, x, y, k_perm, k_steps):
                perm = B.permutation(k_perm, n)[:nb * bs]
                xs = B.reshape(B.take(x, perm, axis=0), (nb, bs) + tuple(B.shape(x))[1:])
                ys = B.reshape(B.take(y, perm, axis=0), (nb, bs) + tuple(B.shape(y))[1:])
                return B.scan(lambda s, inp: step(s, *inp), state,
                              (xs, ys, B.split(k_steps, nb)))

            # one compiled program per epoch on JAX; a Python loop elsewhere
            epoch = B.jit(epoch) if B.has_jit else epoch
            losses = []
            for e in range(int(num_epochs)):
                k_perm, k_steps = B.split(B.fold_in(key, e), 2)
                opt_state, ls = epoch(opt_state, x, y, k_perm, k_steps)
                losses.append(np.asarray(B.to_numpy(ls), dtype=np.float64))
            return FitResult(optim.get_params(opt_state), np.concatenate(losses), opt_state)


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error of class probabilities (equal-width confidence bins).

    ``ECE = sum_b |B_b| / n * |accuracy(B_b) - confidence(B_b)|`` where the confidence of an
    example is its largest probability and ``B_b`` the examples whose confidence falls in
    ``((b-1)/n_bins, b/n_bins]``.

    Parameters
    ----------
    probs : Array, shape (n, classes)
        Predicted probabilities (any backend's arrays or NumPy).
    labels : Array of int, shape (n,)
    n_bins : int

    Returns
    -------
    float, in [0, 1]

    Raises
    ------
    ValueError
        If the shapes do not match or ``n_bins`` is not a positive int.

    References
    ----------
    Naeini, M. P., Cooper, G. and Hauskrecht, M. (2015). Obtaining well calibrated
    probabilities using Bayesian binning. AAAI. Guo, C., Pleiss, G., Sun, Y. and Weinberger,
    K. Q. (2017). On calibration of modern neural networks. ICML, eq. 3.
    """
    def host(a):
        B = get_backend()
        return np.asarray(B.to_numpy(a)) if B.is_array(a) else np.asarray(a)

    p = host(probs).astype(np.float64)
    t = host(labels).astype(np.int64).reshape(-1)
    if p.ndim != 2 or p.shape[0] != t.shape[0]:
        raise ValueError(f"expected_calibration_error: probs must have shape (n, classes) and "
                         f"labels (n,), got {p.shape} and {t.shape}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"expected_calibration_error: n_bins must be a positive int, got "
                         f"{n_bins!r}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)
