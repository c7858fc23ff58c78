"""agvi: approximate Bayesian inference written once, run on NumPy+autograd, PyTorch or JAX.

>>> import agvi
>>> agvi.get_backend().name
'numpy'
>>> with agvi.use_backend("numpy", precision="float32") as B:
...     str(B.float_dtype)
'float32'

Importing agvi imports no framework besides NumPy; torch and JAX are imported when their backend
is first used.
"""

from . import handlers, random
from .backends import (
    Backend,
    available_backends,
    get_backend,
    register_backend,
    set_backend,
    use_backend,
)
from .handlers import deterministic, factor, param, plate, sample

__version__ = "0.1.0"

__all__ = [
    "Backend", "__version__", "available_backends", "deterministic", "factor", "get_backend",
    "handlers", "param", "plate", "random", "register_backend", "sample", "set_backend",
    "use_backend",
]
