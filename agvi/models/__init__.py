"""Built-in models on real data, by name: what ``agvi run MODEL`` and the examples fit.

Each built-in model is an agvi model (a plain function with :func:`agvi.sample` sites) with
its data embedded in the package, described by a :class:`ModelSpec`. The registry maps names
to the modules that define them; a module is imported only when its model is asked for, so
``import agvi.models`` stays light.

>>> import agvi.models
>>> agvi.models.list_models()[:3]
['eight_schools', 'logistic_regression', 'baseball']
>>> spec = agvi.models.get_model("eight_schools")
>>> args, kwargs = spec.load_data()
>>> args[0].shape, kwargs["y"].shape
((8,), (8,))

Built-in models:

- ``eight_schools``: Rubin's (1981) eight schools, non-centred (:mod:`.eight_schools`).
- ``logistic_regression``: Bayesian logistic regression on the Breast Cancer Wisconsin
  (Diagnostic) data, standardised features (:mod:`.logistic_regression`).
- ``baseball``: partial pooling of batting abilities (logit-normal hierarchy) on Efron and
  Morris's (1975) 18 players (:mod:`.hierarchical`).
- ``sir``: an SIR epidemic simulator with a loss, for generalised VI (:mod:`.sir`, when
  present).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["METHODS", "ModelSpec", "get_model", "list_models", "model_info", "register_model",
           "to_backend"]

#: The inference methods a :class:`ModelSpec` may list.
METHODS = ("nuts", "hmc", "svi", "gvi")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model with its data, defaults and the methods that fit it.

    Attributes
    ----------
    name : str
        The registry name.
    model : callable
        ``model(*args, **kwargs)``, an agvi model.
    load_data : callable
        ``load_data() -> (args, kwargs)``: the model's arguments as NumPy arrays (host data;
        :func:`to_backend` moves them to a backend).
    description : str
        One line.
    methods : tuple of str
        The methods that fit this model (a subset of :data:`METHODS`); the first is the default.
    defaults : Mapping
        Default settings by name (``num_warmup``, ``num_samples``, ``num_chains``,
        ``num_steps``, ``learning_rate``, ...), read by the ``agvi`` command.
    source : str
        Where the data come from (citation).
    reference : Mapping
        Known posterior summaries ``{site or "site[i]": {"mean": ..., "sd": ...}}`` (empty when
        none are recorded), e.g. from long reference runs.
    loss : callable or None
        For generalised VI (``"gvi"``): the loss the model's GVI objective uses; the contract is
        the one of :class:`agvi.infer.GVI`.
    extra : Mapping
        Anything else a method needs (e.g. GVI settings).
    """

    name: str
    model: Callable
    load_data: Callable[[], tuple]
    description: str
    methods: tuple = ("nuts", "hmc", "svi")
    defaults: Mapping = dataclasses.field(default_factory=dict)
    source: str = ""
    reference: Mapping = dataclasses.field(default_factory=dict)
    loss: Callable | None = None
    extra: Mapping = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"ModelSpec {self.name!r}: methods must be a non-empty subset of "
                             f"{METHODS}, got {self.methods!r}")

    def data(self, backend=None) -> tuple:
        """``(args, kwargs)`` of the model as arrays of ``backend`` (default: the active one).

        Returns
        -------
        (tuple, dict)
            Floating arrays in the backend's float dtype, integer arrays as integers; other
            values unchanged.
        """
        args, kwargs = self.load_data()
        return to_backend(args, backend), to_backend(kwargs, backend)


# name -> (module, attribute, description, methods). Descriptions live here too, so that
# listing the models imports none of them.
_REGISTRY: dict[str, tuple] = {
    "eight_schools": ("agvi.models.eight_schools", "SPEC",
                      "Rubin's eight schools (SAT coaching effects), non-centred hierarchy",
                      ("nuts", "hmc", "svi")),
    "logistic_regression": ("agvi.models.logistic_regression", "SPEC",
                            "Bayesian logistic regression, Breast Cancer Wisconsin data "
                            "(569 x 30, standardised)", ("nuts", "hmc", "svi")),
    "baseball": ("agvi.models.hierarchical", "SPEC",
                 "Efron-Morris baseball: 18 players' hits in 45 at-bats, logit-normal "
                 "partial pooling", ("nuts", "hmc", "svi")),
    "sir": ("agvi.models.sir", "SPEC",
            "SIR epidemic simulator calibrated with a loss (generalised VI)", ("gvi",)),
}
_ALIASES = {"8schools": "eight_schools", "eight-schools": "eight_schools",
            "breast_cancer": "logistic_regression", "logistic": "logistic_regression",
            "hierarchical": "baseball", "efron_morris": "baseball"}
_SPECS: dict[str, ModelSpec] = {}


def _canonical(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, _ALIASES.get(name.strip().lower(), key))
    if key not in _REGISTRY and key not in _SPECS:
        raise KeyError(f"unknown model {name!r}; built-in models: {', '.join(list_models())}")
    return key


def list_models() -> list[str]:
    """The names of the registered models (built-in first), without importing them."""
    return list(dict.fromkeys(list(_REGISTRY) + list(_SPECS)))


def model_info(name: str) -> dict:
    """``{"name", "description", "methods", "module"}`` of a registered model, without
    importing its module.

    Raises
    ------
    KeyError
        If ``name`` is not registered (the message lists the names).
    """
    key = _canonical(name)
    if key in _SPECS:
        spec = _SPECS[key]
        return {"name": key, "description": spec.description, "methods": tuple(spec.methods),
                "module": getattr(spec.model, "__module__", "")}
    module, _, description, methods = _REGISTRY[key]
    return {"name": key, "description": description, "methods": tuple(methods),
            "module": module}


def get_model(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered model (its module is imported on first use).

    Parameters
    ----------
    name : str
        A name of :func:`list_models` or an alias (``"hierarchical"`` -> ``"baseball"``,
        ``"breast_cancer"`` -> ``"logistic_regression"``); case and ``-``/``_`` are ignored.

    Raises
    ------
    KeyError
        If ``name`` is not registered.
    ImportError
        If the model's module is missing (e.g. ``sir`` in a build without it).
    """
    key = _canonical(name)
    if key not in _SPECS:
        module, attr, _, _ = _REGISTRY[key]
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            raise ImportError(f"model {key!r} is registered but its module {module} is not "
                              "part of this agvi installation") from exc
        spec = getattr(mod, attr, None)
        if not isinstance(spec, ModelSpec):
            raise ImportError(f"model {key!r}: {module} defines no ModelSpec named {attr}")
        _SPECS[key] = spec
    return _SPECS[key]


def register_model(spec: ModelSpec, *, overwrite: bool = False) -> None:
    """Register a user model under ``spec.name`` (then ``agvi.models.get_model`` finds it).

    Parameters
    ----------
    spec : ModelSpec
    overwrite : bool
        Replace a model already registered under that name.

    Raises
    ------
    TypeError
        If ``spec`` is not a :class:`ModelSpec`.
    ValueError
        If the name is taken and ``overwrite`` is False.
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"register_model expects a ModelSpec, got {type(spec).__name__}")
    key = spec.name.strip().lower().replace("-", "_")
    if not overwrite and (key in _REGISTRY or key in _SPECS or key in _ALIASES):
        raise ValueError(f"a model named {spec.name!r} is already registered "
                         "(pass overwrite=True to replace it)")
    _SPECS[key] = spec


def to_backend(tree: Any, backend=None) -> Any:
    """``tree`` (tuples, lists and dicts of NumPy arrays) with every NumPy array converted to
    an array of ``backend`` (default: the active backend).

    Floating arrays take the backend's float dtype (its precision); integer and boolean arrays
    keep an integer / boolean dtype. Other leaves (Python numbers, strings, None) pass through.
    """
    from ..backends import get_backend

    B = get_backend() if backend is None else backend

    def conv(x):
        if isinstance(x, np.ndarray):
            if np.issubdtype(x.dtype, np.floating):
                return B.asarray(x, dtype=B.float_dtype)
            return B.asarray(x)
        if isinstance(x, Mapping):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return type(x)(conv(v) for v in x)
        return x

    return conv(tree)
