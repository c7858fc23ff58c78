"""The ``agvi`` command: fit built-in or user models from the shell, and compare backends.

::

    agvi                                   # = agvi run: NUTS on eight schools, default backend
    agvi info                              # versions, backends, devices
    agvi models                            # the built-in models
    agvi run [MODEL] --backend jax --method nuts|hmc|svi|gvi [--num-warmup N --num-samples N
             --num-chains N --num-steps N --learning-rate LR --seed S --precision float64
             --device cuda --no-progress --debug]
    agvi compare [MODEL] --backends numpy,torch,jax --methods nuts,svi
             [--output results.json --plot fig.png]

``MODEL`` is a built-in name (``agvi models``) or ``path/to/file.py:function``, a user's agvi
model. A user model's arguments come from a *data function* returning ``(args, kwargs)``:
``--data path/to/data.py:function`` (or ``--data function`` for one in the model's file); without
``--data``, a function named ``data`` in the model's file is used when there is one, otherwise
the model is called without arguments. NumPy arrays in ``args`` and ``kwargs`` are converted to
the backend's arrays (floating ones in its precision); other values are passed as they are.

Exit status: 0 on success, 2 for bad input (unknown model, backend or method, a file without that
function, bad options), 1 when a fit fails at run time (the model raises, a backend fails), 130
on Ctrl-C. Errors are one line on stderr; ``--debug`` shows the traceback instead.

Only :mod:`agvi.backends` imports a framework: this module asks the backends for versions and
devices and never imports torch or JAX itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Mapping

import numpy as np

__all__ = ["CLIError", "Fit", "build_parser", "fit_model", "load_model", "main"]

EXIT_RUNTIME = 1
EXIT_USAGE = 2
_COMMANDS = ("run", "compare", "info", "models")
_METHOD_NAMES = {"nuts": "NUTS", "hmc": "HMC", "svi": "SVI (AutoNormal, Trace_ELBO, Adam)",
                 "gvi": "generalised VI"}
# Settings used when neither the command line nor the model gives one.
_DEFAULTS = {"num_warmup": 500, "num_samples": 500, "num_chains": 4, "num_steps": 2000,
             "learning_rate": 0.05, "num_draws": 1000}


class CLIError(Exception):
    """An error the command reports as one line, exiting with ``code``.

    Parameters
    ----------
    message : str
    code : int
        2 for bad input, 1 for a failure at run time.
    """

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse with errors raised as :class:`CLIError` (one line, exit 2)."""

    def error(self, message):
        raise CLIError(f"{message} (see `{self.prog} --help`)", EXIT_USAGE)


# --------------------------------------------------------------------------- the parser
def build_parser() -> argparse.ArgumentParser:
    """The ``agvi`` argument parser (subcommands ``run``, ``compare``, ``info``, ``models``)."""
    from . import __version__

    parser = _Parser(prog="agvi", description="Approximate Bayesian inference on NumPy+autograd, "
                     "PyTorch or JAX. Without a command, `agvi` is `agvi run` (NUTS on eight "
                     "schools).")
    parser.add_argument("--version", action="version", version=f"agvi {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")

    fit = _Parser(add_help=False)
    fit.add_argument("model", nargs="?", default="eight_schools", metavar="MODEL",
                     help="a built-in model (see `agvi models`; default eight_schools) or "
                          "path/to/file.py:function")
    fit.add_argument("--data", metavar="FILE.py:FUNCTION",
                     help="a user model's data function, returning (args, kwargs)")
    fit.add_argument("--num-warmup", type=_nonneg_int, metavar="N",
                     help="MCMC warmup transitions per chain")
    fit.add_argument("--num-samples", type=_pos_int, metavar="N",
                     help="MCMC draws per chain (VI: draws from the fitted posterior)")
    fit.add_argument("--num-chains", type=_pos_int, metavar="N", help="MCMC chains")
    fit.add_argument("--num-steps", type=_pos_int, metavar="N",
                     help="optimisation steps (svi, gvi)")
    fit.add_argument("--learning-rate", type=_pos_float, metavar="LR",
                     help="Adam's step size (svi, gvi)")
    fit.add_argument("--seed", type=_nonneg_int, default=0, help="random seed (default 0)")
    fit.add_argument("--precision", choices=("float32", "float64"), default="float64",
                     help="floating precision on every backend (default float64)")
    fit.add_argument("--device", metavar="DEVICE",
                     help="cpu, cuda or cuda:N (torch and JAX; default: the framework's)")
    fit.add_argument("--no-progress", action="store_true", help="no progress bars")

    epilog = ("A user model is path/to/file.py:function, an agvi model (agvi.sample sites). "
              "Its arguments come from a data function returning (args, kwargs): --data "
              "file.py:function, or --data function in the model's file; without --data the "
              "file's function `data` if it has one, else no arguments. NumPy arrays become "
              "the backend's arrays. Exit status: 0 ok, 2 bad input, 1 failure at run time.")
    run = sub.add_parser("run", parents=[fit, common], help="fit a model and print a summary",
                         epilog=epilog,
                         description="Fit MODEL and print its posterior summary (mean, sd, "
                                     "quantiles, ESS, R-hat) or the ELBO trace.")
    run.add_argument("--backend", default=None,
                     help="numpy, torch or jax (default: $AGVI_BACKEND, else numpy)")
    run.add_argument("--method", type=str.lower, default=None,
                     help="nuts, hmc, svi or gvi (default: the model's first method)")

    cmp_ = sub.add_parser("compare", parents=[fit, common], epilog=epilog,
                          help="fit a model on several backends and compare them",
                          description="Fit MODEL with each method on each backend and print "
                          "one table: posterior means and sds per backend, the largest "
                          "disagreement between backends in Monte Carlo standard errors, ESS/s "
                          "or steps/s, and compile time (first call minus a second, "
                          "steady-state call).")
    cmp_.add_argument("--backends", default=None,
                      help="comma-separated backends (default: every installed one)")
    cmp_.add_argument("--methods", default=None,
                      help="comma-separated methods (default: nuts,svi where the model has "
                           "them)")
    cmp_.add_argument("--single-run", action="store_true",
                      help="fit each once: faster, but no steady-state time and no compile "
                           "time")
    cmp_.add_argument("--output", metavar="FILE.json", help="write the results as JSON")
    cmp_.add_argument("--plot", metavar="FILE.png",
                      help="posterior densities per backend and trace plots (needs matplotlib)")

    info = sub.add_parser("info", parents=[common],
                          help="versions, installed backends and their devices")
    info.add_argument("--json", action="store_true", help="print the information as JSON")
    sub.add_parser("models", parents=[common], help="list the built-in models")
    return parser


def _pos_int(text):
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_int(text):
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _pos_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


# --------------------------------------------------------------------------- entry point
def main(argv=None) -> int:
    """Run the ``agvi`` command.

    Parameters
    ----------
    argv : list of str or None
        The arguments (default ``sys.argv[1:]``). Without a command, or when the first argument
        is not a command or an option of ``agvi`` itself, ``run`` is implied.

    Returns
    -------
    int
        The exit status: 0, 1 (a failure at run time), 2 (bad input) or 130 (interrupted).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in _COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv = ["run"] + argv
    debug = "--debug" in argv
    prog = "agvi " + argv[0] if argv[0] in _COMMANDS else "agvi"
    try:
        ns = build_parser().parse_args(argv)
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            return {"run": _cmd_run, "compare": _cmd_compare, "info": _cmd_info,
                    "models": _cmd_models}[ns.command](ns)
    except CLIError as exc:
        if debug:
            raise
        _error(prog, str(exc))
        return exc.code
    except KeyboardInterrupt:
        if debug:
            raise
        _error(prog, "interrupted")
        return 130
    except Exception as exc:  # anything else is a failure at run time: one line
        if debug:
            raise
        _error(prog, f"{type(exc).__name__}: {exc} (run with --debug for the traceback)")
        return EXIT_RUNTIME


def _error(prog, message):
    message = " ".join(str(message).split())       # one line
    print(f"{prog}: error: {message}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    text = " ".join(str(message).split())
    print(f"agvi: warning: {text}", file=sys.stderr if file is None else file)


# --------------------------------------------------------------------------- models
def load_model(target: str, data: str | None = None):
    """The :class:`~agvi.models.ModelSpec` of ``target``: a built-in name or
    ``path/to/file.py:function``.

    Parameters
    ----------
    target : str
        A name of :func:`agvi.models.list_models` or ``FILE.py:FUNCTION``.
    data : str or None
        For a user model: ``FILE.py:FUNCTION`` or ``FUNCTION`` (in the model's file) returning
        ``(args, kwargs)``. Without it, the model file's ``data`` function if it has one, else
        no arguments. Not allowed with a built-in model.

    Raises
    ------
    CLIError
        Unknown model, missing file or function (code 2); a file that fails to import (code 1).
    """
    from . import models

    if ":" not in target and not target.endswith(".py"):
        if data is not None:
            raise CLIError(f"--data is for user models (FILE.py:FUNCTION); the built-in model "
                           f"{target!r} brings its own data")
        try:
            return models.get_model(target)
        except KeyError:
            raise CLIError(f"unknown model {target!r}; built-in models: "
                           f"{', '.join(models.list_models())} (or give path/to/file.py:"
                           "function)") from None
        except ImportError as exc:
            raise CLIError(str(exc)) from None
    path, sep, name = target.rpartition(":")
    if not sep or not name:
        raise CLIError(f"a user model is given as path/to/file.py:function, got {target!r}")
    module = _import_file(path)
    model = _function(module, name, path)
    if data is None:
        data_fn = getattr(module, "data", None)
        data_fn = data_fn if callable(data_fn) and data_fn is not model else None
        data_label = f"{path}:data" if data_fn is not None else None
    else:
        dpath, dsep, dname = data.rpartition(":")
        if dsep and not dname:
            raise CLIError(f"--data is given as FILE.py:FUNCTION or FUNCTION, got {data!r}")
        dmodule = _import_file(dpath) if dsep else module
        data_fn = _function(dmodule, dname, dpath if dsep else path)
        data_label = data if dsep else f"{path}:{dname}"

    def load_data():
        if data_fn is None:
            return (), {}
        try:
            out = data_fn()
        except Exception as exc:
            raise CLIError(f"the data function {data_label} raised {type(exc).__name__}: "
                           f"{exc}", EXIT_RUNTIME) from exc
        return _check_data(out, data_label)

    methods = ("nuts", "hmc", "svi")
    return models.ModelSpec(name=target, model=model, load_data=load_data,
                            description=f"user model {name} from {path}", methods=methods,
                            source=data_label or "")


def _import_file(path):
    if not path.endswith(".py"):
        raise CLIError(f"a model file must be a .py file, got {path!r}")
    if not os.path.isfile(path):
        raise CLIError(f"model file {path!r} does not exist")
    name = "agvi_user_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(path))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)      # sibling imports of the user's file
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise CLIError(f"importing {path} failed: {type(exc).__name__}: {exc}",
                       EXIT_RUNTIME) from exc
    finally:
        if sys.path and sys.path[0] == folder:
            del sys.path[0]
    sys.modules[name] = module
    return module


def _function(module, name, path):
    fn = getattr(module, name, None)
    if not callable(fn):
        found = sorted(k for k, v in vars(module).items()
                       if callable(v) and not k.startswith("_")
                       and getattr(v, "__module__", None) == module.__name__)
        what = "no function" if fn is None else f"{name!r} but it is not callable:"
        raise CLIError(f"{path} has {what} {name!r}"
                       + (f"; functions defined there: {', '.join(found)}" if found else ""))
    return fn


def _check_data(out, label):
    if isinstance(out, Mapping):
        return (), dict(out)
    if (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], (tuple, list))
            and isinstance(out[1], Mapping)):
        return tuple(out[0]), dict(out[1])
    raise CLIError(f"the data function {label} must return (args, kwargs): a tuple of "
                   f"positional arguments and a dict of keyword arguments; got "
                   f"{type(out).__name__}")


# --------------------------------------------------------------------------- backends
def _backend(name, precision, device):
    from .backends import make_backend

    try:
        return make_backend(name, precision=precision, device=device)
    except (ValueError, ImportError, TypeError) as exc:
        raise CLIError(str(exc)) from None


def _default_backend_name():
    return os.environ.get("AGVI_BACKEND", "numpy")


# --------------------------------------------------------------------------- fitting
@dataclasses.dataclass
class Fit:
    """The outcome of one fit of :func:`fit_model` (host NumPy arrays throughout).

    Attributes
    ----------
    model, method, backend, precision, device : str
    draws : dict
        ``{site: array (chains, draws, ...)}``: latent and deterministic sites, constrained
        (VI: draws of the fitted posterior, one "chain").
    summary : dict
        :func:`agvi.infer.mcmc.diagnostics.summary` of ``draws``.
    time_first : float
        Seconds of the first (cold) call.
    time_steady : float or None
        Seconds of a second call with the same settings (compiled programs reused), when
        ``repeat`` was asked.
    losses : numpy.ndarray or None
        The loss at each step (VI).
    stats : dict
        ``divergences``, ``gradient_evaluations`` (MCMC), ``num_steps`` (VI), ...
    settings : dict
    """

    model: str
    method: str
    backend: str
    precision: str
    device: str
    draws: dict
    summary: dict
    time_first: float
    time_steady: float | None = None
    losses: np.ndarray | None = None
    stats: dict = dataclasses.field(default_factory=dict)
    settings: dict = dataclasses.field(default_factory=dict)

    @property
    def time(self) -> float:
        """The steady-state time when measured, else the first call's."""
        return self.time_steady if self.time_steady is not None else self.time_first

    @property
    def compile_time(self) -> float | None:
        """``time_first - time_steady`` (at least 0), or None without a second call."""
        if self.time_steady is None:
            return None
        return max(self.time_first - self.time_steady, 0.0)

    @property
    def min_ess(self) -> float:
        """The smallest bulk ESS over the summary's rows (NaN if none is finite)."""
        values = [r["ess_bulk"] for r in self.summary.values() if math.isfinite(r["ess_bulk"])]
        return min(values) if values else math.nan

    @property
    def max_rhat(self) -> float:
        """The largest R-hat over the summary's rows (NaN if none is finite)."""
        values = [r["r_hat"] for r in self.summary.values() if math.isfinite(r["r_hat"])]
        return max(values) if values else math.nan


def _settings(spec, **given):
    """The fit settings: the command line's where given, else the model's defaults, else
    agvi's (:data:`_DEFAULTS`)."""
    out = {}
    for k in ("num_warmup", "num_samples", "num_chains", "num_steps", "learning_rate"):
        v = given.get(k)
        out[k] = v if v is not None else spec.defaults.get(k, _DEFAULTS[k])
    draws = given.get("num_samples")
    out["num_draws"] = draws if draws is not None else spec.defaults.get(
        "num_draws", _DEFAULTS["num_draws"])
    out["seed"] = int(given.get("seed") or 0)
    out["progress"] = bool(given.get("progress", False))
    return out


def fit_model(spec, method: str, backend, settings: dict, repeat: bool = False) -> Fit:
    """Fit ``spec``'s model with ``method`` on ``backend``.

    Parameters
    ----------
    spec : ModelSpec
    method : {"nuts", "hmc", "svi", "gvi"}
    backend : Backend
    settings : dict
        ``num_warmup``, ``num_samples``, ``num_chains``, ``num_steps``, ``learning_rate``,
        ``num_draws`` (VI posterior draws), ``seed``, ``progress``.
    repeat : bool
        Run a second time with the same seed, to time the steady state (compiled programs of
        the first call reused); the draws are the second call's (equal to the first's). GVI
        times every step instead (steady state: the median step time) and runs once.

    Returns
    -------
    Fit

    Raises
    ------
    CLIError
        The model raises on a first trial run (code 1), has no latent site (code 2), or the
        method does not fit it (code 2).
    """
    from .backends import use_backend

    if method not in spec.methods:
        raise CLIError(f"method {method!r} does not fit model {spec.name!r}; its methods: "
                       f"{', '.join(spec.methods)}")
    with use_backend(backend) as B:
        if method == "gvi":
            return _fit_gvi(spec, B, settings)
        args, kwargs = spec.data(B)
        sites = _prototype(spec, B, args, kwargs)
        if method in ("nuts", "hmc"):
            return _fit_mcmc(spec, method, B, settings, repeat, args, kwargs, sites)
        return _fit_svi(spec, B, settings, repeat, args, kwargs, sites)


def _prototype(spec, B, args, kwargs):
    """Run the model once (seeded) to check it and list its sites: ``{name: type}`` with
    ``"latent"``, ``"observed"`` or ``"deterministic"``, in the model's order."""
    from .handlers import seed, trace

    try:
        tr = trace(seed(spec.model, B.key(0))).get_trace(*args, **kwargs)
    except CLIError:
        raise
    except Exception as exc:
        raise CLIError(f"the model {spec.name} raised {type(exc).__name__}: {exc}",
                       EXIT_RUNTIME) from exc
    sites = {}
    for name, site in tr.items():
        if site["type"] == "sample":
            sites[name] = "observed" if site["is_observed"] else "latent"
        elif site["type"] == "deterministic":
            sites[name] = "deterministic"
    if "latent" not in sites.values():
        raise CLIError(f"the model {spec.name} has no latent sample site: nothing to infer")
    return sites


def _device(B) -> str:
    """Where the backend's arrays live (its device, else the framework's default)."""
    try:
        return str(B.device_of(B.zeros(())))
    except Exception:          # a backend without device_of: its setting
        return str(B.device or "default")


def _host(B, tree):
    return {k: np.asarray(B.to_numpy(v), dtype=np.float64) for k, v in tree.items()}


def _add_deterministic(spec, B, samples, sites, key, args, kwargs):
    """Deterministic sites missing from ``samples`` (flat draws), from the model."""
    from .infer import Predictive

    missing = [n for n, t in sites.items() if t == "deterministic" and n not in samples]
    if not missing:
        return {}
    pred = Predictive(spec.model, posterior_samples=samples, return_sites=missing)
    return pred(key, *args, **kwargs)


def _ordered(draws, sites):
    names = [n for n, t in sites.items() if t in ("latent", "deterministic") and n in draws]
    return {n: draws[n] for n in names + [n for n in draws if n not in names]}


def _fit_mcmc(spec, method, B, s, repeat, args, kwargs, sites):
    from .infer import HMC, MCMC, NUTS
    from .infer.mcmc.diagnostics import summary

    kernel = (NUTS if method == "nuts" else HMC)(spec.model)
    mcmc = MCMC(kernel, num_warmup=s["num_warmup"], num_samples=s["num_samples"],
                num_chains=s["num_chains"], progress_bar=s["progress"])
    key = B.key(s["seed"])
    times = []
    for _ in range(2 if repeat else 1):
        t0 = time.perf_counter()
        mcmc.run(key, *args, **kwargs)
        samples = mcmc.get_samples(group_by_chain=True)
        B.to_numpy(B.tree_leaves(samples)[0])        # wait for asynchronous backends
        times.append(time.perf_counter() - t0)
    chains = _host(B, samples)
    flat = mcmc.get_samples()
    extra = _add_deterministic(spec, B, flat, sites, B.fold_in(key, 1), args, kwargs)
    c, n = s["num_chains"], s["num_samples"]
    for name, value in _host(B, extra).items():
        chains[name] = value.reshape((c, n) + value.shape[1:])
    chains = _ordered(chains, sites)
    fields = mcmc.get_extra_fields()
    stats = {"divergences": int(np.sum(B.to_numpy(fields["diverging"]))),
             "gradient_evaluations": int(np.sum(B.to_numpy(fields["num_steps"]))),
             "transitions": c * n, "compiles": bool(B.has_jit)}
    return Fit(spec.name, method, B.name, B.precision, _device(B), chains,
               summary(chains), times[0], times[1] if repeat else None, None, stats, dict(s))


def _fit_svi(spec, B, s, repeat, args, kwargs, sites):
    from .infer import SVI, AutoNormal, Trace_ELBO
    from .infer.mcmc.diagnostics import summary
    from .optim import Adam, exponential_decay

    guide = AutoNormal(spec.model)
    # the step size decays tenfold over the run: the end point scatters less with the noise
    lr = exponential_decay(s["learning_rate"], s["num_steps"], 0.1, backend=B)
    svi = SVI(spec.model, guide, Adam(lr), Trace_ELBO())
    key = B.key(s["seed"])
    times = []
    for _ in range(2 if repeat else 1):
        t0 = time.perf_counter()
        result = svi.run(key, s["num_steps"], *args, progress_bar=s["progress"], **kwargs)
        losses = np.asarray(B.to_numpy(result.losses), dtype=np.float64)
        times.append(time.perf_counter() - t0)
    draw_key = B.fold_in(key, 1)
    draws = guide.sample_posterior(draw_key, result.params, (s["num_draws"],), *args, **kwargs)
    draws.update(_add_deterministic(spec, B, draws, sites, B.fold_in(key, 2), args, kwargs))
    chains = _ordered({k: v[None] for k, v in _host(B, draws).items()}, sites)
    stats = {"num_steps": s["num_steps"], "final_loss": float(np.mean(losses[-100:])),
             "nonfinite_losses": int(np.sum(~np.isfinite(losses))), "compiles": bool(B.has_jit)}
    return Fit(spec.name, "svi", B.name, B.precision, _device(B), chains,
               summary(chains), times[0], times[1] if repeat else None, losses, stats, dict(s))


def _fit_gvi(spec, B, s):
    """Generalised VI (:class:`agvi.infer.gvi.GVI`) of a model that brings a loss: ``spec.loss``
    (``loss(theta, data)``), ``spec.extra["prior"]`` (a Distribution over R^d, or a function
    building one under the active backend) and ``spec.extra["dim"]``; the data are the single
    positional argument of ``spec.load_data()``. A mean-field Gaussian starts at the prior's
    mean and standard deviation. Steps are timed one by one: the steady state is the median
    step time, so the compile time comes from one run."""
    if importlib.util.find_spec("agvi.infer.gvi") is None:
        raise CLIError("gvi: not available in this agvi build (agvi.infer.GVI is missing)")
    prior = spec.extra.get("prior") if spec.extra else None
    if spec.loss is None or prior is None:
        raise CLIError(f"gvi: the model {spec.name} brings no loss and prior (ModelSpec.loss, "
                       "ModelSpec.extra['prior'])")
    from .infer.gvi import GVI
    from .infer.mcmc.diagnostics import summary
    from .infer.posterior_estimators import DiagonalGaussianEstimator
    from .optim import Adam

    args, kwargs = spec.data(B)
    data = args[0] if len(args) == 1 and not kwargs else (args, kwargs)
    prior = prior() if callable(prior) and not hasattr(prior, "log_prob") else prior
    dim = int(spec.extra.get("dim") or B.shape(prior.mean)[-1])
    loc = np.asarray(B.to_numpy(prior.mean), dtype=np.float64).reshape(-1)
    scale = np.sqrt(np.asarray(B.to_numpy(prior.variance), dtype=np.float64)).reshape(-1)
    estimator = DiagonalGaussianEstimator(dim, loc=loc, scale=scale, backend=B)
    gvi = GVI(spec.loss, prior, estimator, optimizer=Adam(s["learning_rate"]),
              n_samples_per_epoch=int(spec.defaults.get("n_samples_per_epoch", 5)),
              progress_bar=False, key=s["seed"])
    bar = _bar(s["num_steps"], "GVI") if s["progress"] else None
    step_times, losses = [], []
    try:
        for _ in range(s["num_steps"]):
            t0 = time.perf_counter()
            rec = gvi.step(data)           # returns host floats: the step has finished
            step_times.append(time.perf_counter() - t0)
            losses.append(rec["total"])
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    theta, _ = estimator.sample(B.fold_in(B.key(s["seed"]), 1), s["num_draws"])
    name = _single_latent(spec, B) or "theta"
    draws = {name: np.asarray(B.to_numpy(theta), dtype=np.float64)[None]}
    steady = float(np.median(step_times)) * len(step_times)
    losses = np.asarray(losses, dtype=np.float64)
    stats = {"num_steps": s["num_steps"], "final_loss": float(np.mean(losses[-20:])),
             "nonfinite_losses": int(np.sum(~np.isfinite(losses))), "compiles": bool(B.has_jit)}
    return Fit(spec.name, "gvi", B.name, B.precision, _device(B), draws,
               summary(draws), float(np.sum(step_times)), steady, losses, stats, dict(s))


def _single_latent(spec, B):
    """The name of the model's only latent site (GVI draws are one vector), else None."""
    try:
        sites = _prototype(spec, B, (), {})
    except CLIError:
        return None
    latent = [n for n, t in sites.items() if t == "latent"]
    return latent[0] if len(latent) == 1 else None


def _bar(total, desc):
    try:
        from tqdm.auto import tqdm
    except ImportError:       # the bar is optional
        return None
    return tqdm(total=total, desc=desc, leave=False)


# --------------------------------------------------------------------------- output
def _fmt(x, spec=".3g"):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


def _table(header, rows, align=None):
    """Plain text table; ``align`` has one letter per column, ``l`` or ``r`` (default: the
    first column left-aligned, the others right-aligned)."""
    cols = list(zip(*([header] + rows), strict=True))
    widths = [max(len(str(c)) for c in col) for col in cols]
    align = align or "l" + "r" * (len(cols) - 1)
    lines = []
    for row in [header] + rows:
        cells = [str(c).ljust(w) if a == "l" else str(c).rjust(w)
                 for c, w, a in zip(row, widths, align, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _loss_trace(losses, method, every=None, width=10):
    """The objective's trace, one row per window of ``every`` steps: the ELBO (``-loss``) for
    SVI, the generalised-VI objective (loss + w KL) for GVI."""
    n = len(losses)
    every = every or max(1, n // width)
    sign, label = _objective(method)
    rows = []
    for start in range(0, n, every):
        window = losses[start:start + every]
        rows.append([f"{start + 1}-{start + len(window)}",
                     _fmt(sign * float(np.mean(window)), ".6g")])
    return _table(["steps", f"{label} (window mean)"], rows)


def _objective(method):
    """(sign, name) of the reported objective: ``sign * loss``."""
    return (-1.0, "ELBO") if method == "svi" else (1.0, "loss + w KL")


def _vi_summary(summary):
    rows = [[name, _fmt(r["mean"]), _fmt(r["sd"]), _fmt(r["q5"]), _fmt(r["q50"]),
             _fmt(r["q95"])] for name, r in summary.items()]
    return _table(["", "mean", "sd", "5%", "50%", "95%"], rows)


def _header(fit, spec):
    s = fit.settings
    where = f"{fit.backend} ({fit.precision}, device {fit.device})"
    if fit.method in ("nuts", "hmc"):
        what = (f"{s['num_chains']} chains x {s['num_samples']} draws after "
                f"{s['num_warmup']} warmup")
    else:
        lr = s["learning_rate"]
        what = (f"{s['num_steps']} steps, Adam, step size {lr:g} decaying to {lr / 10:g}"
                if fit.method == "svi" else f"{s['num_steps']} steps, Adam({lr:g})")
    return (f"{spec.name}: {spec.description}\n{_METHOD_NAMES[fit.method]} on {where}: "
            f"{what}, seed {s['seed']}")


def _print_run(fit, spec):
    from .infer.mcmc.diagnostics import format_summary

    print(_header(fit, spec))
    print()
    if fit.method in ("nuts", "hmc"):
        print(format_summary(fit.draws))
        print()
        st = fit.stats
        pct = 100.0 * st["divergences"] / max(st["transitions"], 1)
        print(f"divergences after warmup: {st['divergences']} of {st['transitions']} "
              f"({pct:.1f}%); gradient evaluations in sampling: {st['gradient_evaluations']}")
        print(f"time: {fit.time_first:.2f} s (warmup + sampling, compilation included); "
              f"min bulk ESS {_fmt(fit.min_ess, '.0f')}, "
              f"{_fmt(fit.min_ess / fit.time_first, '.1f')} ESS/s; max R-hat "
              f"{_fmt(fit.max_rhat, '.3f')}")
    else:
        print(_loss_trace(fit.losses, fit.method))
        print()
        print(f"posterior ({fit.settings['num_draws']} draws from the fitted "
              f"{'AutoNormal guide' if fit.method == 'svi' else 'posterior estimator'}; "
              "independent draws, so no ESS or R-hat):")
        print(_vi_summary(fit.summary))
        print()
        steps = fit.stats["num_steps"]
        print(f"time: {fit.time_first:.2f} s for {steps} steps ({steps / fit.time_first:.1f} "
              f"steps/s, compilation included); final {_objective(fit.method)[1]} "
              f"{_fmt(_objective(fit.method)[0] * fit.stats['final_loss'], '.6g')} (mean of "
              "the last steps)")


def _method_of(ns, spec):
    method = ns.method or spec.methods[0]
    if method not in _METHOD_NAMES:
        raise CLIError(f"unknown method {method!r}; methods: {', '.join(_METHOD_NAMES)}")
    return method


def _cmd_run(ns):
    spec = load_model(ns.model, ns.data)
    method = _method_of(ns, spec)
    if method not in spec.methods:
        raise CLIError(f"method {method!r} does not fit model {spec.name!r}; its methods: "
                       f"{', '.join(spec.methods)}")
    backend = _backend(ns.backend or _default_backend_name(), ns.precision, ns.device)
    settings = _settings(spec, num_warmup=ns.num_warmup, num_samples=ns.num_samples,
                         num_chains=ns.num_chains, num_steps=ns.num_steps,
                         learning_rate=ns.learning_rate, seed=ns.seed,
                         progress=not ns.no_progress)
    fit = _run_fit(spec, method, backend, settings, repeat=False)
    _print_run(fit, spec)
    return 0


def _run_fit(spec, method, backend, settings, repeat):
    try:
        return fit_model(spec, method, backend, settings, repeat=repeat)
    except CLIError:
        raise
    except Exception as exc:
        raise CLIError(f"{method} on {backend.name} failed: {type(exc).__name__}: {exc} "
                       "(run with --debug for the traceback)", EXIT_RUNTIME) from exc


# --------------------------------------------------------------------------- compare
def _split_list(text, what, allowed=None):
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not items:
        raise CLIError(f"--{what} needs at least one name")
    if allowed is not None:
        bad = [t for t in items if t not in allowed]
        if bad:
            raise CLIError(f"unknown {what[:-1]} {bad[0]!r}; {what}: {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def _disagreement(fits):
    """The largest |mean_a - mean_b| / sqrt(mcse_a^2 + mcse_b^2) over the rows and pairs of
    backends of one method: ``(per_row, worst)`` with ``worst = (value, row, a, b)``."""
    names = list(fits)
    per_row, worst = {}, (math.nan, None, None, None)
    rows = [r for r in fits[names[0]].summary if all(r in fits[n].summary for n in names)]
    for row in rows:
        best = math.nan
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                ra, rb = fits[a].summary[row], fits[b].summary[row]
                se = math.hypot(ra["mcse"], rb["mcse"])
                z = abs(ra["mean"] - rb["mean"]) / se if se > 0 else math.nan
                if math.isfinite(z) and not z <= best:
                    best = z
                    if not z <= worst[0]:
                        worst = (z, row, a, b)
        per_row[row] = best
    return per_row, worst


def _cmd_compare(ns):
    from .backends import available_backends

    spec = load_model(ns.model, ns.data)
    if ns.methods is None:
        methods = [m for m in ("nuts", "svi") if m in spec.methods] or [spec.methods[0]]
    else:
        methods = _split_list(ns.methods, "methods", list(_METHOD_NAMES))
        bad = [m for m in methods if m not in spec.methods]
        if bad:
            raise CLIError(f"method {bad[0]!r} does not fit model {spec.name!r}; its methods: "
                           f"{', '.join(spec.methods)}")
    names = (_split_list(ns.backends, "backends") if ns.backends is not None
             else available_backends())
    backends = [_backend(n, ns.precision, ns.device) for n in names]   # bad names: exit 2 now
    if ns.plot and importlib.util.find_spec("matplotlib") is None:
        raise CLIError("--plot needs matplotlib, which is not installed (pip install matplotlib)")
    for path in (ns.output, ns.plot):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            raise CLIError(f"cannot write {path}: folder {folder} does not exist")
    settings = {m: _settings(spec, num_warmup=ns.num_warmup, num_samples=ns.num_samples,
                             num_chains=ns.num_chains, num_steps=ns.num_steps,
                             learning_rate=ns.learning_rate, seed=ns.seed,
                             progress=not ns.no_progress) for m in methods}
    fits, failures = {m: {} for m in methods}, {}
    for m in methods:
        for B in backends:
            print(f"fitting {spec.name} with {m} on {B.name} ...", file=sys.stderr, flush=True)
            try:
                fits[m][B.name] = _run_fit(spec, m, B, settings[m],
                                           repeat=not ns.single_run)
            except CLIError as exc:
                if exc.code == EXIT_USAGE:
                    raise
                failures[(m, B.name)] = str(exc)
                _error("agvi compare", str(exc))
    report = _compare_report(spec, methods, [B.name for B in backends], fits, failures, settings)
    print(_format_compare(report))
    if ns.output:
        with open(ns.output, "w", encoding="utf-8") as f:
            json.dump(_json_safe(report), f, indent=2)
            f.write("\n")
        print(f"\nwrote {ns.output}")
    if ns.plot:
        _plot(ns.plot, spec, fits)
        print(f"wrote {ns.plot}")
    return EXIT_RUNTIME if failures else 0


def _compare_report(spec, methods, backend_names, fits, failures, settings):
    results, disagreement = {}, {}
    for m in methods:
        results[m] = {}
        for b in backend_names:
            if (m, b) in failures:
                results[m][b] = {"status": "error", "error": failures[(m, b)]}
                continue
            fit = fits[m][b]
            entry = {"status": "ok", "precision": fit.precision, "device": fit.device,
                     "compiles": bool(fit.stats.get("compiles", False)),
                     "time_first_s": fit.time_first, "time_steady_s": fit.time_steady,
                     "compile_s": fit.compile_time, "params": fit.summary}
            if m in ("nuts", "hmc"):
                entry.update(min_ess_bulk=fit.min_ess, max_r_hat=fit.max_rhat,
                             ess_per_s=fit.min_ess / fit.time, **fit.stats)
            else:
                entry.update(steps_per_s=fit.stats["num_steps"] / fit.time,
                             final_objective=_objective(m)[0] * fit.stats["final_loss"],
                             objective=_objective(m)[1],
                             loss_trace=fit.losses.tolist() if fit.losses is not None else None)
            results[m][b] = entry
        ok = {b: fits[m][b] for b in backend_names if b in fits[m]}
        if len(ok) >= 2:
            per_row, (z, row, a, b) = _disagreement(ok)
            disagreement[m] = {"max_mcse_units": z, "param": row, "backends": [a, b],
                               "per_param": per_row}
    from . import __version__

    return {
        "agvi_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "versions": _versions(),
        "model": {"name": spec.name, "description": spec.description, "source": spec.source},
        "reference": dict(spec.reference),
        "methods": methods, "backends": backend_names,
        "settings": {m: {k: v for k, v in s.items() if k != "progress"}
                     for m, s in settings.items()},
        "results": results,
        "disagreement": disagreement,
    }


def _format_compare(report):
    out = [f"{report['model']['name']}: {report['model']['description']}"]
    backends = report["backends"]
    for m in report["methods"]:
        res = report["results"][m]
        ok = [b for b in backends if res[b]["status"] == "ok"]
        s = report["settings"][m]
        if m in ("nuts", "hmc"):
            what = (f"{s['num_chains']} chains x {s['num_samples']} draws, "
                    f"{s['num_warmup']} warmup")
        else:
            what = f"{s['num_steps']} steps, {s['num_draws']} posterior draws"
        out += ["", f"{_METHOD_NAMES[m]} ({what}): posterior mean (sd) by backend; "
                "max dMCSE = largest |mean difference| / sqrt(mcse_a^2 + mcse_b^2)"]
        if not ok:
            out.append("  (every backend failed)")
            continue
        per_row = report["disagreement"].get(m, {}).get("per_param", {})
        rows = []
        for row in res[ok[0]]["params"]:
            cells = [row]
            for b in backends:
                r = res[b]["params"].get(row) if b in ok else None
                cells.append(f"{_fmt(r['mean'])} ({_fmt(r['sd'])})" if r else "failed")
            cells.append(_fmt(per_row.get(row), ".2f"))
            rows.append(cells)
        out.append(_table(["param"] + backends + ["max dMCSE"], rows))
    out += ["", "performance (steady state = a second call with the same settings; compile = "
            "first call - steady state):"]
    rows = []
    for m in report["methods"]:
        for b in backends:
            e = report["results"][m][b]
            if e["status"] != "ok":
                rows.append([m, b] + ["failed"] + ["-"] * 6)
                continue
            mcmc = m in ("nuts", "hmc")
            compile_s = _fmt(e["compile_s"], ".2f")
            if e["compile_s"] is not None and not e["compiles"]:
                compile_s += "*"
            rows.append([m, b, _fmt(e["time_first_s"], ".2f"), _fmt(e["time_steady_s"], ".2f"),
                         compile_s,
                         _fmt(e["ess_per_s"], ".1f") if mcmc else "-",
                         _fmt(e["steps_per_s"], ".0f") if not mcmc else "-",
                         _fmt(e["max_r_hat"], ".3f") if mcmc else "-",
                         str(e["divergences"]) if mcmc else "-"])
    out.append(_table(["method", "backend", "first (s)", "steady (s)", "compile (s)",
                       "ESS/s", "steps/s", "max R-hat", "divergences"], rows))
    if any(r[4].endswith("*") for r in rows):
        out.append("* this backend compiles nothing: first-call overheads and timing noise")
    out.append("")
    if any(m in ("svi", "gvi") for m in report["methods"]):
        out.append("VI: the MCSE counts the posterior draws only, not the optimiser's noise; "
                   "backends with different random streams (JAX) stop at different points.")
    for m in report["methods"]:
        d = report["disagreement"].get(m)
        if d is None:
            out.append(f"largest disagreement between backends, {m}: - (fewer than two "
                       "backends succeeded)")
        else:
            out.append(f"largest disagreement between backends, {m}: "
                       f"{_fmt(d['max_mcse_units'], '.2f')} MCSE ({d['param']}, "
                       f"{d['backends'][0]} vs {d['backends'][1]})")
    return "\n".join(out)


def _json_safe(x):
    if isinstance(x, Mapping):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _rows(draws):
    """``{row name: (chains, draws) array}`` named as in the summary (``name[i,j]``)."""
    out = {}
    for name, x in draws.items():
        shape = x.shape[2:]
        flat = x.reshape(x.shape[:2] + (-1,))
        for j in range(flat.shape[-1]):
            index = np.unravel_index(j, shape) if shape else ()
            label = name if not shape else f"{name}[{','.join(str(i) for i in index)}]"
            out[label] = flat[:, :, j]
    return out


def _plot_rows(draws, limit=6):
    scalars = [n for n, x in draws.items() if x.ndim == 2]
    arrays = [n for n, x in draws.items() if x.ndim > 2]
    rows = list(scalars)
    for n in arrays:
        rows.append(f"{n}[{','.join('0' for _ in draws[n].shape[2:])}]")
    return rows[:limit]


def _plot(path, spec, fits):
    """Posterior densities per backend (one column per method) and trace plots (MCMC: each
    backend's first chain; VI: the ELBO)."""
    import matplotlib

    matplotlib.use("Agg", force=True)      # files only: no display needed
    import matplotlib.pyplot as plt
    from scipy.stats import gaussian_kde

    methods = [m for m in fits if fits[m]]
    if not methods:
        raise CLIError("nothing to plot: every fit failed", EXIT_RUNTIME)
    first = next(iter(fits[methods[0]].values()))
    labels = _plot_rows(first.draws)
    nrows, ncols = len(labels), 2 * len(methods)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.2 * nrows + 0.6),
                             squeeze=False)
    colours = {}
    for j, m in enumerate(methods):
        for b, fit in fits[m].items():
            colour = colours.setdefault(b, f"C{len(colours)}")
            rows = _rows(fit.draws)
            for i, label in enumerate(labels):
                x = rows.get(label)
                if x is None:
                    continue
                pooled = x.reshape(-1)
                ax = axes[i, 2 * j]
                lo, hi = np.quantile(pooled, [0.005, 0.995])
                grid = np.linspace(lo, hi, 200)
                if np.std(pooled) > 0:
                    ax.plot(grid, gaussian_kde(pooled)(grid), color=colour, label=b)
                ax.set_title(f"{m}: {label}", fontsize=9)
                ax.set_yticks([])
                tax = axes[i, 2 * j + 1]
                if m in ("nuts", "hmc"):
                    tax.plot(x[0], color=colour, lw=0.5, alpha=0.8, label=b)
                    tax.set_title(f"{m}: {label}, trace of chain 0", fontsize=9)
                elif i == 0 and fit.losses is not None and fit.losses.size:
                    sign, name = _objective(m)
                    w = max(1, fit.losses.size // 100)        # a running mean: less noise
                    y = np.convolve(sign * fit.losses, np.ones(w) / w, mode="valid")
                    tax.plot(np.arange(w, y.size + w), y, color=colour, lw=0.8, label=b)
                    tax.set_title(f"{m}: {name} (running mean of {w} steps)", fontsize=9)
                    tax.set_ylim(np.nanquantile(y, [0.02, 0.98]) + np.array([-1e-9, 1e-9]))
                else:
                    tax.axis("off")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{spec.name}: posteriors by backend", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- info, models
_PACKAGES = ("numpy", "scipy", "autograd", "optree", "torch", "jax", "jaxlib", "tqdm",
             "matplotlib")


def _versions() -> dict:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _backend_info() -> list:
    """Each registered backend: installed, devices (asked of the backend), CUDA."""
    from .backends import available_backends, known_backends, make_backend

    installed = set(available_backends())
    out = []
    for name in known_backends():
        entry = {"name": name, "installed": name in installed, "devices": [], "cuda": False,
                 "error": None}
        if entry["installed"]:
            try:
                devices = list(make_backend(name).available_devices())
                entry["devices"] = devices
                entry["cuda"] = any(d.startswith(("cuda", "gpu")) for d in devices)
            except Exception as exc:       # a broken install: report it, keep going
                entry["error"] = f"{type(exc).__name__}: {exc}"
        out.append(entry)
    return out


def _cmd_info(ns):
    from . import __version__, models

    versions = _versions()
    backends = _backend_info()
    info = {"agvi": __version__, "agvi_path": os.path.dirname(os.path.abspath(__file__)),
            "python": platform.python_version(), "python_executable": sys.executable,
            "platform": platform.platform(), "versions": versions, "backends": backends,
            "default_backend": _default_backend_name(), "models": models.list_models()}
    if ns.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"agvi {__version__} ({info['agvi_path']})")
    print(f"python {info['python']} ({sys.executable}) on {info['platform']}")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) +
          "; not installed: " + (", ".join(k for k, v in versions.items() if not v) or "none"))
    print(f"backends (default: {info['default_backend']}"
          f"{', from AGVI_BACKEND' if 'AGVI_BACKEND' in os.environ else ''}):")
    frameworks = {"numpy": ("numpy", "autograd"), "torch": ("torch",), "jax": ("jax",)}
    rows = []
    for b in backends:
        fw = ", ".join(f"{p} {versions.get(p)}" for p in frameworks.get(b["name"], ())
                       if versions.get(p))
        if not b["installed"]:
            rows.append([b["name"], "not installed", "-", "-"])
        elif b["error"]:
            rows.append([b["name"], fw, "error: " + b["error"], "-"])
        else:
            cuda = "yes" if b["cuda"] else "no"
            rows.append([b["name"], fw, ", ".join(b["devices"]), cuda if b["name"] != "numpy"
                         else "-"])
    table = _table(["backend", "framework", "devices", "CUDA"], rows, align="llll")
    print("  " + table.replace("\n", "\n  "))
    print("models: " + ", ".join(info["models"]) + " (agvi models)")
    return 0


def _cmd_models(ns):
    from . import models

    rows = []
    for name in models.list_models():
        meta = models.model_info(name)
        rows.append([name, ",".join(meta["methods"]), meta["description"]])
    print(_table(["model", "methods", "description"], rows, align="lll"))
    print("\nor a user model: agvi run path/to/file.py:function [--data file.py:function]")
    return 0


if __name__ == "__main__":       # pragma: no cover
    sys.exit(main())
