"""The agvi test matrix: `nox -l` lists the sessions.

- ``lint``: ruff.
- ``tests(backend=...)``: the suite on one backend, in an environment that holds only that
  framework (numpy: NumPy + autograd alone, which also proves that agvi works without torch/JAX).
- ``agreement``: every framework in one environment; every backend compared with the NumPy oracle.
- ``gpu``: tests and agreement on device ``cuda`` for torch and JAX, with the frameworks already
  installed (a GPU machine may have no network); skips with a message when there is no GPU.

Test environments pin torch 2.13.0 (the CPU wheel on our machines; other versions pull CUDA).
"""

import os

import nox

nox.options.sessions = ["lint", "tests", "agreement"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"
FRAMEWORKS = {"numpy": [], "torch": [TORCH], "jax": ["jax"]}


@nox.session
def lint(session):
    """Static checks with ruff."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")


@nox.session
@nox.parametrize("backend", list(FRAMEWORKS))
def tests(session, backend):
    """The suite on one backend, in an environment holding only that framework."""
    for req in FRAMEWORKS[backend]:
        session.install(req)  # first, so the pinned torch satisfies the extra
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", *session.posargs,
                env={"AGVI_TEST_BACKENDS": backend})


@nox.session
def agreement(session):
    """All frameworks in one process: every backend against the NumPy oracle (float64)."""
    session.install(TORCH)
    session.install("-e", ".[all,test]")
    session.run("python", "-m", "pytest", "-q", "tests/agreement", *session.posargs)


@nox.session(venv_backend="none")
def gpu(session):
    """Tests and agreement on device cuda for torch and JAX, using installed frameworks."""
    probe = (
        "import importlib.util as u\n"
        "ok = []\n"
        "if u.find_spec('torch'):\n"
        "    import torch; ok += ['torch'] if torch.cuda.is_available() else []\n"
        "if u.find_spec('jax'):\n"
        "    import jax\n"
        "    try: ok += ['jax'] if jax.devices('gpu') else []\n"
        "    except RuntimeError: pass\n"
        "print(','.join(ok))\n"
    )
    found = session.run("python", "-c", probe, silent=True).strip().splitlines()[-1:]
    backends = found[0] if found and found[0] else ""
    if not backends:
        session.skip("no CUDA device visible to torch or JAX: nothing to run on a GPU")
    env = {"AGVI_TEST_BACKENDS": "numpy," + backends, "AGVI_TEST_DEVICE": "cuda",
           "PYTHONPATH": os.getcwd()}
    session.run("python", "-m", "pytest", "-q", "tests/backends", "tests/agreement",
                *session.posargs, env=env)
