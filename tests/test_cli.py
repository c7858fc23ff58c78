"""The ``agvi`` command (agvi.cli): output, numbers against references, JSON, error paths.

Most tests call ``agvi.cli.main(argv)`` in-process (fast); a few run ``python -m agvi`` in a
subprocess to check the real entry point, exit codes and that no traceback is printed.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import agvi
from agvi.backends import available_backends
from agvi.cli import CLIError, main

ROOT = Path(__file__).parents[1]
REFERENCE = json.loads((ROOT / "tests" / "data" / "posteriordb" /
                        "eight_schools-eight_schools_noncentered" / "reference.json").read_text())


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err, code, expected_code, *fragments):
    lines = [ln for ln in err.splitlines() if not ln.startswith("fitting ")]
    assert code == expected_code, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --------------------------------------------------------------------------- info, models
def test_info_json(capsys):
    code, out, _ = _run(capsys, "info", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["agvi"] == agvi.__version__
    assert info["versions"]["numpy"] == np.__version__
    by_name = {b["name"]: b for b in info["backends"]}
    assert sorted(n for n, b in by_name.items() if b["installed"]) == sorted(available_backends())
    assert by_name["numpy"]["devices"] == ["cpu"] and not by_name["numpy"]["cuda"]
    for b in by_name.values():
        if b["installed"]:
            assert b["error"] is None and "cpu" in b["devices"][0]
    assert info["models"][:3] == ["eight_schools", "logistic_regression", "baseball"]


def test_info_text_and_models(capsys):
    code, out, _ = _run(capsys, "info")
    assert code == 0 and out.startswith(f"agvi {agvi.__version__}")
    assert "backends" in out and "numpy" in out
    code, out, _ = _run(capsys, "models")
    assert code == 0
    for name in ("eight_schools", "logistic_regression", "baseball", "sir"):
        assert name in out


# --------------------------------------------------------------------------- run
def test_run_svi_prints_elbo_trace_and_summary(capsys):
    code, out, _ = _run(capsys, "run", "eight_schools", "--method", "svi", "--num-steps", "400",
                        "--num-samples", "300", "--no-progress")
    assert code == 0
    assert "ELBO (window mean)" in out and "1-40" in out and "361-400" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert {"mu", "tau", "theta_tilde[7]", "theta[0]"} <= set(rows)
    mu_mean, mu_sd = float(rows["mu"][0]), float(rows["mu"][1])
    # mean-field VI after 400 steps: mu's mean near the posterior's 4.41 (sd 3.31)
    assert abs(mu_mean - 4.41) < 2.0 and 1.5 < mu_sd < 5.0


def test_bare_command_runs_eight_schools(capsys):
    """`agvi` with options only is `agvi run` on eight schools."""
    code, out, _ = _run(capsys, "--method", "svi", "--num-steps", "20", "--num-samples", "20",
                        "--no-progress")
    assert code == 0 and out.startswith("eight_schools:")


def test_run_nuts_small(capsys):
    code, out, _ = _run(capsys, "run", "--num-warmup", "60", "--num-samples", "40",
                        "--num-chains", "1", "--no-progress", "--seed", "3")
    assert code == 0
    assert "NUTS on numpy (float64" in out and "r_hat" in out and "ess_bulk" in out
    assert "divergences after warmup:" in out and "ESS/s" in out
    assert "theta[7]" in out       # the deterministic site is summarised too


def test_compare_nuts_json_matches_reference(tmp_path, capsys):
    """NUTS through `agvi compare` on eight schools: mu, tau and the school effects within 4
    combined MCSEs of posteriordb's reference (long Stan runs), with converged chains. On JAX
    when installed (compiled: more draws for the time), else on NumPy."""
    backend, n = ("jax", 300) if "jax" in available_backends() else ("numpy", 150)
    path = tmp_path / "nuts.json"
    code, out, _ = _run(capsys, "compare", "--backends", backend, "--methods", "nuts",
                        "--num-warmup", str(n), "--num-samples", str(n), "--num-chains", "2",
                        "--single-run", "--no-progress", "--output", str(path))
    assert code == 0, out
    report = json.loads(path.read_text())
    entry = report["results"]["nuts"][backend]
    assert entry["status"] == "ok" and entry["time_steady_s"] is None
    assert entry["compile_s"] is None and entry["transitions"] == 2 * n
    assert entry["ess_per_s"] > 0 and entry["max_r_hat"] < 1.1
    for name in ("mu", "tau"):
        got, ref = entry["params"][name], REFERENCE["params"][name]
        assert got["ess_bulk"] >= 50
        tol = 4 * math.hypot(got["mcse"], ref["mcse_mean"])
        assert abs(got["mean"] - ref["mean"]) < tol, (name, got, ref)
    for j in range(8):
        got, ref = entry["params"][f"theta[{j}]"], REFERENCE["params"][f"theta[{j + 1}]"]
        assert abs(got["mean"] - ref["mean"]) < 4 * math.hypot(got["mcse"], ref["mcse_mean"])
    assert report["disagreement"] == {}            # one backend: nothing to compare
    assert "largest disagreement between backends, nuts: -" in out


def test_compare_svi_across_backends(tmp_path, capsys):
    backends = [b for b in ("numpy", "torch", "jax") if b in available_backends()]
    path, fig = tmp_path / "svi.json", tmp_path / "svi.png"
    argv = ["compare", "--backends", ",".join(backends), "--methods", "svi", "--num-steps",
            "600", "--learning-rate", "0.1", "--num-samples", "300", "--no-progress",
            "--output", str(path)]
    has_mpl = __import__("importlib").util.find_spec("matplotlib") is not None
    if has_mpl:
        argv += ["--plot", str(fig)]
    code, out, _ = _run(capsys, *argv)
    assert code == 0, out
    report = json.loads(path.read_text())
    assert report["backends"] == backends and report["methods"] == ["svi"]
    assert set(report["settings"]["svi"]) >= {"num_steps", "learning_rate", "seed"}
    assert report["model"]["name"] == "eight_schools"
    res = report["results"]["svi"]
    for b in backends:
        e = res[b]
        assert e["status"] == "ok" and e["precision"] == "float64" and e["device"] == "cpu"
        assert e["compiles"] == (b == "jax")
        assert e["time_first_s"] > 0 and e["time_steady_s"] > 0 and e["compile_s"] >= 0
        assert e["steps_per_s"] > 0 and len(e["loss_trace"]) == 600
        assert e["objective"] == "ELBO" and math.isfinite(e["final_objective"])
        assert abs(e["params"]["mu"]["mean"] - 4.41) < 2.5
    if "torch" in backends:
        # on the CPU torch draws its noise from the same host generator as NumPy: same fit
        for row, r in res["numpy"]["params"].items():
            assert res["torch"]["params"][row]["mean"] == pytest.approx(r["mean"], rel=1e-7,
                                                                       abs=1e-9)
    if len(backends) > 1:
        d = report["disagreement"]["svi"]
        assert set(d["backends"]) <= set(backends) and d["param"] in res["numpy"]["params"]
        assert d["max_mcse_units"] == pytest.approx(max(d["per_param"].values()))
        assert f"largest disagreement between backends, svi: {d['max_mcse_units']:.2f}" in out
    if has_mpl:
        assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gvi_on_sir(capsys):
    pytest.importorskip("agvi.infer.gvi")
    code, out, _ = _run(capsys, "run", "sir", "--method", "gvi", "--num-steps", "6",
                        "--num-samples", "100", "--no-progress")
    assert code == 0, out
    assert "loss + w KL (window mean)" in out and "theta[0]" in out and "theta[1]" in out


# --------------------------------------------------------------------------- user models
USER_MODEL = """
import numpy as np
import agvi
import agvi.distributions as dist

def model(x, y=None):
    slope = agvi.sample("slope", dist.Normal(0.0, 10.0))
    with agvi.plate("data", x.shape[0]):
        agvi.sample("y", dist.Normal(slope * x, 1.0), obs=y)

def data():
    x = np.linspace(-1.0, 1.0, 20)
    return (x,), {"y": 2.0 * x}

def other_data():
    x = np.linspace(-1.0, 1.0, 20)
    return (x,), {"y": -3.0 * x}

def broken(x, y=None):
    raise ValueError("boom")

def bad_data():
    return [1, 2, 3]

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(textwrap.dedent(USER_MODEL))
    return path


def _slope_mean(out):
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("slope"))
    return float(line.split()[1])


def test_user_model_with_data_function(user_file, capsys):
    # posterior of the slope: Normal with mean ~ 2 (20 points, noise 1, prior sd 10)
    x = np.linspace(-1.0, 1.0, 20)
    post_var = 1.0 / (1.0 / 100 + x @ x)
    code, out, _ = _run(capsys, "run", f"{user_file}:model", "--method", "svi", "--num-steps",
                        "1500", "--num-samples", "2000", "--learning-rate", "0.1",
                        "--no-progress")
    assert code == 0, out
    expected = post_var * (x @ (2.0 * x))
    assert abs(_slope_mean(out) - expected) < 0.15
    code, out, _ = _run(capsys, "run", f"{user_file}:model", "--data", "other_data",
                        "--method", "svi", "--num-steps", "1500", "--num-samples", "2000",
                        "--learning-rate", "0.1", "--no-progress")
    assert code == 0 and abs(_slope_mean(out) - post_var * (x @ (-3.0 * x))) < 0.15


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("argv, code, fragments", [
    (["run", "nope"], 2, ["unknown model 'nope'", "eight_schools"]),
    (["run", "--backend", "tensorflow"], 2, ["unknown backend 'tensorflow'"]),
    (["run", "--method", "vmp"], 2, ["unknown method 'vmp'"]),
    (["run", "--method", "gvi"], 2, ["method 'gvi' does not fit model 'eight_schools'"]),
    (["run", "sir", "--method", "nuts"], 2, ["method 'nuts' does not fit model 'sir'"]),
    (["run", "--num-samples", "0"], 2, ["--num-samples", "positive integer"]),
    (["run", "--precision", "float16"], 2, ["--precision", "invalid choice"]),
    (["run", "--backend", "numpy", "--device", "cuda"], 2, ["device"]),
    (["compare", "--backends", "numpy,nope"], 2, ["unknown backend 'nope'"]),
    (["compare", "--methods", "nuts,vmp"], 2, ["unknown method 'vmp'"]),
    (["run", "missing_file.py:model"], 2, ["does not exist"]),
    (["run", "eight_schools", "--data", "x.py:f"], 2, ["--data is for user models"]),
    (["frobnicate"], 2, ["unknown model 'frobnicate'"]),
])
def test_bad_input_is_one_line_and_exit_2(argv, code, fragments, capsys):
    rc, _, err = _run(capsys, *argv)
    _one_line_error(err, rc, code, *fragments)


def test_user_file_errors(user_file, tmp_path, capsys):
    rc, _, err = _run(capsys, "run", f"{user_file}:nope")
    _one_line_error(err, rc, 2, "has no function 'nope'", "model", "data")
    rc, _, err = _run(capsys, "run", f"{user_file}:NOT_A_FUNCTION")
    _one_line_error(err, rc, 2, "not callable")
    rc, _, err = _run(capsys, "run", f"{user_file}:model", "--data", "bad_data")
    _one_line_error(err, rc, 2, "must return (args, kwargs)")
    rc, _, err = _run(capsys, "run", f"{user_file}:broken", "--method", "svi")
    _one_line_error(err, rc, 1, "raised ValueError: boom")
    bad = tmp_path / "bad_import.py"
    bad.write_text("import this_module_does_not_exist\n")
    rc, _, err = _run(capsys, "run", f"{bad}:model")
    _one_line_error(err, rc, 1, "importing", "ModuleNotFoundError")


def test_debug_raises_instead(capsys):
    with pytest.raises(CLIError, match="unknown model"):
        main(["run", "nope", "--debug"])


def test_entry_point_subprocess(tmp_path):
    """`python -m agvi`: exit codes, one-line errors, no traceback, and no torch/JAX import
    for a command that does not need them."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("AGVI_BACKEND", None)
    proc = subprocess.run([sys.executable, "-m", "agvi", "run", "nope"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("agvi run: error: unknown model 'nope'")
    proc = subprocess.run([sys.executable, "-m", "agvi", "--version"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"agvi {agvi.__version__}"
    code = ("import sys, agvi.cli, agvi.models, agvi.models.eight_schools, "
            "agvi.models.logistic_regression, agvi.models.hierarchical\n"
            "assert agvi.cli.main(['models']) == 0\n"
            "bad = [m for m in ('torch', 'jax', 'matplotlib') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
