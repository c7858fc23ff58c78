"""Pure torch functions traced into graphs: :meth:`TorchBackend.compile_pure`.

Eager torch pays several microseconds of Python dispatch and autograd bookkeeping per operation;
a log density's value and gradient written through agvi's distributions costs 90 us on the
logistic regression of the benchmarks, against 63 us hand-written. Tracing it once per input
signature removes both:

1. ``torch.fx``'s ``make_fx`` runs the function on fake tensors (shapes and dtypes only) and
   records the aten operations it dispatches, a gradient's backward operations included (a
   ``value_and_grad`` becomes one flat graph of forward and backward operations);
2. TorchScript runs that graph without Python or autograd in the loop (29 us for the logistic
   density's value and gradient, 35 us through agvi's distributions). Where TorchScript is
   missing (it is deprecated) the ``torch.fx`` graph runs as Python code instead.

Fake tensors make tracing safe: Python control flow on a value, ``.item()``, ``float()`` or
``.numpy()`` of a traced tensor raise instead of being frozen into the graph, and so does a
random draw (host keys would freeze the numbers); the function then runs eagerly for that
signature. A traced graph is also checked once against an eager call on the first inputs.

References
----------
Reed et al. (2022), "torch.fx: practical program capture and transformation for deep learning
in Python", MLSys.
"""

from __future__ import annotations

import threading
import warnings
from typing import NamedTuple

import optree
import torch
from torch._C._functorch import peek_interpreter_stack as _peek_interpreter_stack

from .base import STATIC_SCALARS

__all__ = ["TracedFunction", "Untraceable", "check_not_tracing", "tracing"]

_STATE = threading.local()
# the states of a signature in TracedFunction._graphs besides a traced entry
_SEEN_ONCE = "seen once"   # ran eagerly once; the next call traces
_EAGER = None              # untraceable: always eager


class Untraceable(RuntimeError):
    """Raised inside a trace by what cannot be recorded (a random draw from a host key)."""


def tracing() -> bool:
    """Whether a :class:`TracedFunction` is tracing on this thread (random primitives given a
    tensor key then record their custom operators instead of drawing)."""
    return getattr(_STATE, "tracing", False)


def check_not_tracing(what: str) -> None:
    """Raise :class:`Untraceable` if a :class:`TracedFunction` is tracing on this thread."""
    if getattr(_STATE, "tracing", False):
        raise Untraceable(f"{what} cannot be traced")


def _signature(args):
    """``(tensors, key)`` for a call, or None when it must run eagerly: tensor leaves that
    carry derivatives (an outer autograd graph or ``torch.func`` transform) or leaves that are
    neither tensors nor Python scalars (NumPy arrays such as host keys)."""
    leaves, treedef = optree.tree_flatten(args, none_is_leaf=True)
    tensors, key = [], [treedef]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            if leaf.requires_grad or type(leaf) is not torch.Tensor:
                return None
            tensors.append(leaf)
            key.append((leaf.shape, leaf.dtype, leaf.device))
        elif isinstance(leaf, STATIC_SCALARS):
            key.append((type(leaf), leaf))
        else:
            return None
    return tensors, tuple(key)


def _agree(got, want) -> bool:
    """Whether a traced graph's outputs equal the eager ones (host keys come out of the graph
    as int64 tensors)."""
    if len(got) != len(want):
        return False
    for x, y in zip(got, want):
        y = torch.as_tensor(y).to(x.dtype)
        if x.shape != y.shape or not torch.allclose(x, y, rtol=1e-9, atol=1e-12,
                                                    equal_nan=True):
            return False
    return True


class TracedFunction:
    """``fun`` traced into a graph once per input signature (see the module docstring).

    Parameters
    ----------
    fun : callable
        A pure function of pytrees of tensors and Python scalars returning a pytree of tensors:
        no random draws, no side effects, no Python control flow on tensor values (such
        functions still work: they run eagerly).

    The first call with a signature runs ``fun`` eagerly, the second traces it. Calls whose
    tensors carry derivatives, run inside a ``torch.func`` transform, or hold leaves other than
    tensors and Python scalars run ``fun`` eagerly. Python scalars are part of the signature (a
    new value traces again); beyond :attr:`max_signatures` signatures, calls run eagerly.
    """

    #: Signatures traced at most; calls with others run eagerly (a Python scalar that changes
    #: every call would otherwise trace every call).
    max_signatures = 8

    def __init__(self, fun):
        self.fun = fun
        # signature -> (graph, (output treedef, constants), fx graph module), or a state
        self._graphs = {}
        self._partials = {}   # signature -> _Partial or None (see partial)

    def __call__(self, *args):
        if _peek_interpreter_stack() is not None:
            return self.fun(*args)
        sig = _signature(args)
        if sig is None:
            return self.fun(*args)
        tensors, key = sig
        if key not in self._graphs:
            # the first call of a signature runs eagerly (a one-off call never pays for a
            # trace); the second traces
            if len(self._graphs) < self.max_signatures:
                self._graphs[key] = _SEEN_ONCE
            return self.fun(*args)
        entry = self._graphs[key]
        if entry is _SEEN_ONCE:
            self._graphs[key] = entry = self._trace(args, tensors, key[0])
        if entry is _EAGER:
            return self.fun(*args)
        graph, (out_def, consts), _ = entry   # no input carries derivatives: no autograd graph
        out = graph(*tensors)
        if consts:
            out = list(out)
            for i, c in consts.items():
                out.insert(i, c)
        return optree.tree_unflatten(out_def, list(out))

    def signature(self, *args):
        """``(tensors, key)`` of a call with ``args``: its tensor leaves in order and its
        signature key, or None when such a call runs eagerly whatever happens (see
        :meth:`__call__`)."""
        return _signature(args)

    def partial(self, key, fixed, example):
        """The call of signature ``key`` (from :meth:`signature`) as a function of its first
        tensor leaf alone, the other tensor leaves fixed to ``fixed``: ``call(t) -> tuple`` of
        the output tensors. What depends on the fixed leaves alone (the data's logarithms,
        reciprocals, transposes in a log density's gradient) is computed once, now: loop-
        invariant code motion on the traced graph (:func:`_split_invariant`, checked once at
        ``example``, a first leaf). None while calls with ``key`` do not run a graph (not
        traced yet, or untraceable) or when the outputs include constants. For callers that
        call with one signature many times and skip the per-call signature check
        (:meth:`TorchBackend.host_function`)."""
        entry = self._graphs.get(key)
        if not isinstance(entry, tuple) or entry[1][1]:
            return None
        graph = entry[0]
        if key not in self._partials:
            self._partials[key] = _Partial.build(entry[2], graph, fixed, example)
        part = self._partials[key]
        if part is None:   # nothing to hoist (or the split failed): the whole graph
            return lambda t: graph(t, *fixed)
        return part.bind(fixed)

    @property
    def num_traced(self) -> int:
        """Number of input signatures run through a traced graph."""
        return sum(isinstance(entry, tuple) for entry in self._graphs.values())

    def _trace(self, args, tensors, treedef):
        from torch.fx.experimental.proxy_tensor import make_fx

        leaves = optree.tree_leaves(args, none_is_leaf=True)
        slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        out_box = []

        def flat(*ts):
            full = list(leaves)
            for i, t in zip(slots, ts):
                full[i] = t
            out, out_def = optree.tree_flatten(self.fun(*optree.tree_unflatten(treedef, full)),
                                               none_is_leaf=True)
            # Python scalars among the outputs depend on the signature only: constants
            consts = {i: o for i, o in enumerate(out) if isinstance(o, STATIC_SCALARS)}
            if len(consts) + sum(isinstance(o, torch.Tensor) for o in out) != len(out):
                raise Untraceable("outputs must be tensors or Python scalars")
            out_box.append((out_def, consts))
            return tuple(o for o in out if isinstance(o, torch.Tensor))

        _STATE.tracing = True
        try:
            gm = make_fx(flat, tracing_mode="fake")(*tensors)
        except Exception:   # anything the tracer cannot record runs eagerly
            return _EAGER
        finally:
            _STATE.tracing = False
        graph = gm
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # TorchScript's deprecation notice
                graph = torch.jit.trace(gm, tuple(tensors), check_trace=False)
        except Exception:
            graph = gm
        with torch.no_grad():
            got = graph(*tensors)
        want = [w for w in optree.tree_leaves(self.fun(*args), none_is_leaf=True)
                if not isinstance(w, STATIC_SCALARS)]
        # the module's forward, not the module: nn.Module.__call__ costs 1.5 us a call
        return (graph.forward, out_box[-1], gm) if _agree(got, want) else _EAGER


_IDENTITY_OPS = (torch.ops.aten.detach.default, torch.ops.aten.alias.default)


def _split_invariant(gm):
    """``gm`` (a traced graph whose first placeholder varies and the others stay fixed) split
    in two: ``(invariant, varying, used)``.

    ``invariant(*fixed)`` (a ``torch.fx.GraphModule``) returns the values of the hoisted
    nodes: those that depend on fixed placeholders and constants only and are used by nodes that
    depend on the varying one (or are outputs); ``varying(x, *hoisted_values, *fixed[used])``
    computes the outputs from them, with ``detach``/``alias`` (no-ops without autograd) and
    ``pow(z, 1)`` (from the derivative of a square) removed. None when a hoisted value is not a
    tensor or nothing would be hoisted.
    """
    import torch.fx as fx

    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    output = next(n for n in graph.nodes if n.op == "output")
    varying = {placeholders[0]}
    for n in graph.nodes:
        if n.op not in ("placeholder", "output") and any(
                a in varying for a in n.all_input_nodes):
            varying.add(n)
    computed = [n for n in graph.nodes if n.op not in ("placeholder", "output")
                and n not in varying]
    hoisted = [n for n in computed if any(u in varying or u is output for u in n.users)]
    if not hoisted or not all(isinstance(n.meta.get("val"), torch.Tensor) for n in hoisted):
        return None
    fixed = placeholders[1:]
    used = [i for i, p in enumerate(fixed) if any(u in varying or u is output for u in p.users)]

    inv, env = fx.Graph(), {}
    for p in fixed:
        env[p] = inv.placeholder(p.name)
    for n in computed:
        env[n] = inv.node_copy(n, lambda a: env[a])
    inv.output(tuple(env[n] for n in hoisted))
    inv.eliminate_dead_code()

    var, env = fx.Graph(), {}
    env[placeholders[0]] = var.placeholder(placeholders[0].name)
    for n in hoisted:
        env[n] = var.placeholder(f"{n.name}_hoisted")
    for i in used:
        env[fixed[i]] = var.placeholder(fixed[i].name)
    for n in graph.nodes:
        if n not in varying or n.op == "placeholder":
            continue
        if n.target in _IDENTITY_OPS or (n.target is torch.ops.aten.pow.Tensor_Scalar
                                         and n.args[1] == 1):
            env[n] = env[n.args[0]]
        else:
            env[n] = var.node_copy(n, lambda a: env[a])
    var.output(fx.node.map_arg(output.args[0], lambda a: env[a]))
    var.eliminate_dead_code()
    return fx.GraphModule(gm, inv), fx.GraphModule(gm, var), used


class _Partial(NamedTuple):
    """A traced graph split by :func:`_split_invariant`, the varying part run by TorchScript."""

    invariant: object   # fixed tensors -> hoisted values (run once per bind, as Python)
    varying: object     # (x, *hoisted values, *used fixed tensors) -> outputs
    used: tuple         # indices of the fixed tensors the varying part takes

    @staticmethod
    def build(gm, graph, fixed, example):
        """The split of ``gm`` (whose TorchScript form is ``graph``) checked against ``graph``
        at ``example`` (a first tensor leaf), or None where there is nothing to hoist or the
        split fails."""
        try:
            split = _split_invariant(gm)
            if split is None:
                return None
            inv, var, used = split
            with torch.no_grad():
                hoisted = tuple(inv(*fixed))
                args = (example, *hoisted, *(fixed[i] for i in used))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        var = torch.jit.trace(var, args, check_trace=False)
                    except Exception:
                        pass
                if not _agree(var(*args), graph(example, *fixed)):
                    return None
        except Exception:   # anything unexpected: the whole graph instead
            return None
        return _Partial(inv, var, tuple(used))

    def bind(self, fixed):
        """``call(t) -> outputs`` with the invariant part computed once from ``fixed``."""
        with torch.no_grad():
            rest = (*self.invariant(*fixed), *(fixed[i] for i in self.used))
        varying = self.varying.forward   # skips nn.Module.__call__ (see _trace)
        return lambda t: varying(t, *rest)
