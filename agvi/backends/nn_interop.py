"""Interop: a ``torch.nn.Module`` as a pure function of its parameters (torch backend).

:class:`agvi.nn.Variationalize` needs a network as ``f(params, x)``. For a module this is
``torch.func.functional_call``: the module's own parameters are never read or written, the
parameters given in ``params`` are used instead (so gradients flow to them and several weight
draws can be evaluated without touching the module). This is the only module of
:mod:`agvi.nn` that imports torch, and it does so inside its functions, so importing agvi (or
agvi.nn) imports no framework.
"""

from __future__ import annotations

import math
import sys

__all__ = ["TorchModuleFunction", "is_torch_module"]


def is_torch_module(obj) -> bool:
    """Whether ``obj`` is a ``torch.nn.Module``, without importing torch.

    A module object can only exist once torch is imported, so an unimported torch means no.
    """
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _fan_in_out_in(shape) -> int:
    """Fan-in of a torch weight, layout ``(out, in, *kernel)``."""
    return int(math.prod(shape[1:]))


class TorchModuleFunction:
    """A ``torch.nn.Module`` as the pure function ``f(params, x)`` (torch backend).

    Parameters
    ----------
    module : torch.nn.Module
        The network. Its trainable parameters (``requires_grad=True``) become ``params``;
        frozen parameters and buffers (batch-norm running statistics, ...) stay deterministic.
    backend : Backend
        The torch backend: ``params`` and floating buffers are copied to its dtype and device.

    Attributes
    ----------
    params : dict
        ``name -> Tensor``: copies of the trainable parameters, in ``named_parameters`` order.
    buffers : dict
        ``name -> Tensor``: copies of the buffers and frozen parameters.
    fan_in : dict
        ``name -> int``: the fan-in of each trainable parameter (``prod(shape[1:])`` for a
        weight; a 1-D parameter takes the fan-in of the weight of the same submodule, else 1).
    dense : dict
        ``submodule name -> (weight name, bias name or None)`` for each ``nn.Linear`` and
        (non-transposed) ``nn.Conv1d/2d/3d`` whose weight is trainable: the layers local
        reparameterisation applies to.

    Raises
    ------
    TypeError
        If ``module`` is not a ``torch.nn.Module``.
    ValueError
        If ``backend`` is not the torch backend.

    Notes
    -----
    Calls respect ``module.training`` as it is when called (batch-norm layers normalise with
    the batch's statistics in training mode). The running statistics are never updated: each
    call hands the module fresh copies of :attr:`buffers`, so its in-place updates are
    discarded and the buffers (and the module's own) stay exactly as they were. To predict
    with running statistics, estimate them before wrapping (train the deterministic module, or
    run it on data in training mode) and call ``module.eval()``.

    Local reparameterisation registers forward hooks on the layers for the duration of a call,
    so two threads must not run the same module with it at once.
    """

    def __init__(self, module, backend):
        import torch

        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if backend.name != "torch":
            raise ValueError(f"a torch.nn.Module needs the torch backend, but the active backend "
                             f"is {backend.name!r}; use agvi.use_backend('torch', ...) or pass "
                             "a pure function f(params, x) with a params pytree instead")
        self.module = module
        self.backend = B = backend

        def copy(t):
            t = t.detach()
            t = B.astype(B.asarray(t), B.float_dtype) if t.is_floating_point() else B.asarray(t)
            return t.clone()

        named = list(module.named_parameters())
        self.params = {n: copy(p) for n, p in named if p.requires_grad}
        self.buffers = {n: copy(p) for n, p in named if not p.requires_grad}
        self.buffers.update({n: copy(b) for n, b in module.named_buffers()})
        shapes = {n: tuple(p.shape) for n, p in self.params.items()}
        self.fan_in = {}
        for n, shape in shapes.items():
            if len(shape) >= 2:
                self.fan_in[n] = _fan_in_out_in(shape)
                continue
            parent = n.rsplit(".", 1)[0] if "." in n else ""
            siblings = [m for m, s in shapes.items() if len(s) >= 2 and
                        (m.rsplit(".", 1)[0] if "." in m else "") == parent]
            self.fan_in[n] = _fan_in_out_in(shapes[siblings[0]]) if siblings else 1
        kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
        self.dense = {}
        for mod_name, sub in module.named_modules():
            if not isinstance(sub, kinds):
                continue
            prefix = f"{mod_name}." if mod_name else ""
            w, b = prefix + "weight", prefix + "bias"
            if w in self.params:
                self.dense[mod_name] = (w, b if b in self.params else None)

    def __call__(self, params, x, local=None):
        """Run the module with ``params`` in place of its parameters.

        Parameters
        ----------
        params : dict
            ``name -> Tensor`` for every trainable parameter (see :attr:`params`).
        x : Tensor
            The module's input.
        local : dict or None
            Local reparameterisation: ``submodule name -> (weight_var, bias_var or None,
            key)`` for layers of :attr:`dense`. Their weight and bias in ``params`` must be the
            posterior means; the layer's output gets Gaussian noise of variance
            ``layer(x**2)`` computed with ``weight_var`` / ``bias_var`` (the weights'
            variances), drawn with ``key`` (folded with a call count, so a layer used twice
            gets fresh noise).

        Returns
        -------
        Tensor
            The module's output.

        Raises
        ------
        KeyError
            If ``local`` names a layer that is not in :attr:`dense`.
        """
        from torch.func import functional_call

        state = dict(params)
        # Fresh copies: batch norm in training mode updates its running statistics in place,
        # which must neither leak into the stored buffers nor mutate a tensor captured by a
        # torch.func transform.
        state.update({n: b.clone() for n, b in self.buffers.items()})
        if not local:
            return functional_call(self.module, state, (x,))
        handles = []
        try:
            for mod_name, (w_var, b_var, key) in local.items():
                if mod_name not in self.dense:
                    raise KeyError(f"local reparameterisation: {mod_name!r} is not a Linear or "
                                   f"Conv layer with a trainable weight; layers: "
                                   f"{sorted(self.dense)}")
                sub = self.module.get_submodule(mod_name)
                handles.append(sub.register_forward_hook(
                    _local_noise_hook(self.backend, w_var, b_var, key)))
            return functional_call(self.module, state, (x,))
        finally:
            for h in handles:
                h.remove()


def _local_noise_hook(B, w_var, b_var, key):
    """A forward hook adding ``sqrt(layer(x**2; w_var, b_var)) * eps`` to a layer's output."""
    import torch

    calls = [0]

    def hook(mod, inputs, output):
        x = inputs[0]
        if isinstance(mod, torch.nn.Linear):
            var = torch.nn.functional.linear(x * x, w_var, b_var)
        else:  # ConvNd: its own padding, stride, dilation and groups
            var = mod._conv_forward(x * x, w_var, b_var)
        k = B.fold_in(key, calls[0])
        calls[0] += 1
        eps = B.normal(k, tuple(output.shape), dtype=output.dtype)
        # tiny keeps sqrt differentiable where an input row is all zeros
        return output + torch.sqrt(var + torch.finfo(var.dtype).tiny) * eps

    return hook
