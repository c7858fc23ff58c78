"""The agvi test matrix: `nox -l` lists the sessions.

- ``lint``: ruff.
- ``tests(backend=...)``: the suite on one backend, in an environment that holds only that
  framework (numpy: NumPy + autograd alone, which also proves that agvi works without torch/JAX).
- ``agreement``: every framework in one environment; every backend compared with the NumPy oracle.
- ``docs``: the documentation site (``mkdocs build --strict``).
- ``bench``: the benchmarks side by side with NumPyro, BlackJAX and Pyro (benchmarks/results.md).
- ``examples``: every script in ``examples/``, short runs, on NumPy and on torch/JAX when present.
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


@nox.session
def docs(session):
    """The documentation site: ``mkdocs build --strict`` into ``site/`` (warnings are errors).

    The API reference is read from the source by mkdocstrings (no framework is imported); the
    backend tables are generated from ``agvi.backends`` by ``docs/hooks.py`` at build time.
    """
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", *session.posargs,
                env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def bench(session):
    """Benchmarks side by side with NumPyro, BlackJAX and Pyro: writes benchmarks/results.md and
    results.json and prints the ratios (``nox -s bench -- --quick`` for a smoke test)."""
    session.install(TORCH)  # first, so the pinned torch satisfies the extras
    session.install("-e", ".[all,crosscheck]", "pyro-ppl", "blackjax")
    session.run("python", "-m", "benchmarks.run", *session.posargs)


@nox.session
def examples(session):
    """Every script in ``examples/`` on the NumPy backend, then on torch and JAX where installed.

    Each script reads ``AGVI_BACKEND`` (the backend) and ``AGVI_EXAMPLES_QUICK=1`` (short runs,
    the default here). ``nox -s examples -- full`` runs them at full length; other arguments
    select scripts by name (``nox -s examples -- kl_annealing``). With ``--no-venv`` it runs in
    the current environment, installing nothing.
    """
    if session.venv_backend != "none":   # `--no-venv`: the current environment as it is
        session.install(TORCH)  # first, so the pinned torch satisfies the extra
        session.install("-e", ".[all]")
    probe = ("import importlib.util as u\n"
             "print(','.join(n for n in ('torch', 'jax') if u.find_spec(n)))\n")
    found = session.run("python", "-c", probe, silent=True).strip().splitlines()[-1:]
    backends = ["numpy"] + [b for b in (found[0].split(",") if found else []) if b]
    quick = "0" if "full" in session.posargs else "1"
    wanted = [a for a in session.posargs if a != "full"]
    scripts = sorted(p for p in os.listdir("examples") if p.endswith(".py")
                     and (not wanted or any(w in p for w in wanted)))
    if not scripts:
        session.error(f"no script in examples/ matches {wanted}")
    for backend in backends:
        for script in scripts:
            session.log(f"examples/{script} on {backend}")
            session.run("python", os.path.join("examples", script),
                        env={"AGVI_BACKEND": backend, "AGVI_EXAMPLES_QUICK": quick})
