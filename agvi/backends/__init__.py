"""Backend registry and selection: which framework agvi's algorithms run on.

Only this package imports a framework, and only when its backend is first used. The active
backend is held in a :class:`contextvars.ContextVar`, so :func:`use_backend` is safe across
threads and asyncio tasks; :func:`set_backend` changes the process-wide default.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import inspect
import os
import threading
from collections.abc import Callable
from typing import NamedTuple

from .base import CONTRACT, Backend, framework_of

__all__ = [
    "Backend", "BackendInfo", "CONTRACT", "available_backends", "backend_info", "framework_of",
    "get_backend",
    "import_framework", "known_backends", "make_backend", "register_backend", "set_backend",
    "use_backend",
]

# name -> (factory "module:Class" or callable, modules that must be importable, extra to install)
_REGISTRY: dict[str, tuple] = {
    "numpy": ("agvi.backends.numpy_backend:NumpyBackend", ("numpy", "autograd"), "autograd"),
    "torch": ("agvi.backends.torch_backend:TorchBackend", ("torch",), "torch"),
    "jax": ("agvi.backends.jax_backend:JaxBackend", ("jax",), "jax"),
}
_ALIASES = {"autograd": "numpy", "pytorch": "torch"}
_CACHE: dict[tuple, Backend] = {}
_LOCK = threading.Lock()


def register_backend(name: str, factory: Callable[..., Backend], *, requires=(),
                     extra: str | None = None) -> None:
    """Register a third-party backend under ``name``.

    Parameters
    ----------
    name : str
        The name given to :func:`set_backend`.
    factory : callable
        ``factory(precision=..., device=...) -> Backend``.
    requires : tuple of str
        Modules that must be importable for the backend to count as available.
    extra : str or None
        The pip extra (or package) to name when they are missing.

    Raises
    ------
    ValueError
        If ``name`` is already registered (built-in names included).
    """
    key = name.lower()
    if key in _REGISTRY or key in _ALIASES:
        raise ValueError(f"a backend named {name!r} is already registered")
    _REGISTRY[key] = (factory, tuple(requires), extra)


def known_backends() -> list[str]:
    """Every registered backend name, installed or not."""
    return list(_REGISTRY)


class BackendInfo(NamedTuple):
    """How a backend is registered (see :func:`register_backend`).

    Attributes
    ----------
    factory : str or callable
        ``"module:Class"`` for the built-in backends (nothing imported), else the callable.
    requires : tuple of str
        Modules that must be importable for the backend to be available.
    extra : str or None
        The pip extra to install for it.
    """

    factory: object
    requires: tuple
    extra: object


def backend_info(name: str) -> BackendInfo:
    """The registration of backend ``name`` (an alias such as ``"pytorch"`` included).

    Raises
    ------
    ValueError
        If no backend of that name is registered; the message lists the known ones.
    """
    return BackendInfo(*_REGISTRY[_canonical(name)])


def _installed(modules) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def import_framework(module: str, extra: str, purpose: str):
    """Import a framework module on demand, for interop code outside this package.

    Only :mod:`agvi.backends` imports frameworks; converters elsewhere (distribution interop,
    the optimiser adapters) ask for the module here, at call time, so importing agvi stays free
    of torch and JAX.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"torch.distributions"``.
    extra : str
        The pip extra or package that provides it, named in the error.
    purpose : str
        What the caller needs it for, named in the error ("to convert distributions").

    Raises
    ------
    ImportError
        The module is not installed; the message names the package to install.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{module} is not installed; install it (pip install {extra}) "
                          f"{purpose}") from err


def available_backends() -> list[str]:
    """Names of the registered backends whose frameworks are installed (without importing them)."""
    return [n for n, (_, mods, _) in _REGISTRY.items() if _installed(mods)]


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a string, got {type(name).__name__}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _REGISTRY:
        raise ValueError(
            f"unknown backend {name!r}; known backends: {', '.join(known_backends())} "
            f"(aliases: {', '.join(f'{a}->{b}' for a, b in _ALIASES.items())}); "
            f"installed here: {', '.join(available_backends()) or 'none'}")
    return key


def make_backend(name: str, precision: str | None = None, device: str | None = None,
                 **options) -> Backend:
    """The Backend object for ``name`` with this precision, device and options (one cached per
    combination).

    ``options`` are the backend's own keyword arguments, such as torch's ``trace``
    (:class:`~agvi.backends.torch_backend.TorchBackend`).

    Raises
    ------
    ValueError
        Unknown name (the message lists the known and the installed ones), bad precision, a
        device that this machine lacks, or an option the backend does not take.
    ImportError
        The framework is not installed (the message names the extra: ``pip install agvi[jax]``).
    """
    key = (_canonical(name), precision, device, *sorted(options.items()))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        factory, mods, extra = _REGISTRY[key[0]]
        missing = [m for m in mods if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(
                f"the {key[0]!r} backend needs {', '.join(missing)}, which is not installed; "
                f"install it with `pip install agvi[{extra}]`" if extra else
                f"the {key[0]!r} backend needs {', '.join(missing)}, which is not installed")
        if isinstance(factory, str):
            module, cls = factory.split(":")
            factory = getattr(importlib.import_module(module), cls)
        accepted = inspect.signature(factory).parameters
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            known = sorted(set(accepted) - {"self", "precision", "device"})
            raise ValueError(f"the {key[0]!r} backend takes no option {', '.join(unknown)}; "
                             f"its options: {', '.join(known) or 'none'}")
        backend = factory(precision=precision, device=device, **options)
        _CACHE[key] = backend
        return backend


_default: dict[str, Backend | None] = {"backend": None}
_current: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "agvi_backend", default=None)


def set_backend(name: str, *, precision: str | None = None, device: str | None = None,
                **options) -> Backend:
    """Set the process-wide default backend.

    Parameters
    ----------
    name : {"numpy", "autograd", "torch", "jax"} or a registered name
        ``"autograd"`` is an alias of ``"numpy"`` (NumPy arrays differentiated by autograd).
    precision : {"float32", "float64"} or None
        Dtype of the floating arrays agvi creates; ``None`` keeps the framework's default
        (float64 on NumPy, float32 on torch and JAX). On JAX, ``"float64"`` turns on
        ``jax_enable_x64``, which is a process-wide JAX flag: it then applies to all JAX code in
        the process.
    device : str or None
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (torch and JAX): every array agvi creates is
        placed there.
    **options
        The backend's own options, e.g. ``trace=False`` for torch: run every function eagerly,
        Python side effects included, instead of tracing the SVI step and the MCMC gradient
        into graphs (see ``docs/backends.md``).

    Returns
    -------
    Backend
        The new default backend.

    Raises
    ------
    ValueError, ImportError
        As :func:`make_backend`.
    """
    backend = make_backend(name, precision, device, **options)
    _default["backend"] = backend
    return backend


def get_backend() -> Backend:
    """The active backend: the innermost :func:`use_backend`, else the process default (from
    :func:`set_backend`, else the ``AGVI_BACKEND`` environment variable, else ``"numpy"``)."""
    backend = _current.get()
    if backend is not None:
        return backend
    if _default["backend"] is None:
        _default["backend"] = make_backend(os.environ.get("AGVI_BACKEND", "numpy"))
    return _default["backend"]


@contextlib.contextmanager
def use_backend(name, *, precision: str | None = None, device: str | None = None, **options):
    """Context manager: make a backend active inside the ``with`` block (this thread/task only).

    ``name`` is a backend name (arguments as :func:`set_backend`) or a Backend object.

    Yields
    ------
    Backend
    """
    backend = (name if isinstance(name, Backend)
               else make_backend(name, precision, device, **options))
    token = _current.set(backend)
    try:
        yield backend
    finally:
        _current.reset(token)
