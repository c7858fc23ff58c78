"""Run every benchmark side by side and write ``results.md`` / ``results.json``.

``python -m benchmarks.run`` (or ``nox -s bench``) runs, one after the other and each in its own
process (so that no framework's settings or threads leak into another's timings):

1. the one-gradient floors (``benchmarks.floor``) of JAX, torch, autograd, NumPy by hand and of
   agvi's log densities on each backend;
2. NUTS (``benchmarks.bench_nuts``) on the three targets: 1 chain for agvi on each backend,
   NumPyro, BlackJAX and Pyro; 4 vectorised chains for agvi on each backend and NumPyro;
3. SVI (``benchmarks.bench_svi``) with 1 and 16 particles: agvi on each backend, NumPyro, a
   hand-written JAX loop, Pyro (``Trace_ELBO``, ``JitTrace_ELBO``) and a hand-written torch loop,
   with the error of the posterior mean against a long NumPyro NUTS run
   (``logistic_reference.json``, computed on first use).

It then prints the ratios that the project's targets name and writes ``results.md`` (tables,
ratios, the machine and the versions) and ``results.json`` (everything, per repeat) next to this
file, or into ``--out-dir``. ``--quick`` is a smoke test (200 + 200 NUTS transitions, 500 SVI
steps, 1 repeat); ``--render`` rewrites ``results.md`` from an existing ``results.json``.

The machines are shared and noisy: compare the ratios measured in one run, not absolute numbers
across runs, and prefer a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from . import tasks
from ._common import machine_info, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

FLOOR_FRAMEWORKS = ("jax", "torch", "autograd", "numpy-hand", "agvi-jax", "agvi-torch",
                    "agvi-numpy")
NUTS_ONE_CHAIN = ("agvi-jax", "numpyro", "blackjax", "agvi-torch", "pyro", "agvi-numpy")
NUTS_FOUR_CHAINS = ("agvi-jax", "numpyro", "agvi-torch", "agvi-numpy")
SVI_FRAMEWORKS = ("agvi-jax", "numpyro", "jax-hand", "agvi-torch", "pyro", "pyro-jit",
                  "torch-hand", "agvi-numpy")
REFERENCE = os.path.join(HERE, "logistic_reference.json")
#: the benchmarks attempted in this process (for --update)
LABELS: list = []


# --------------------------------------------------------------------------- subprocesses
def _child(module: str, args: list, timeout: float, label: str, errors: list):
    """Run ``python -m benchmarks.<module> ... --out tmp`` and return its JSON (None on
    failure, recorded in ``errors``)."""
    fd, out = tempfile.mkstemp(suffix=".json", prefix="agvi-bench-")
    os.close(fd)
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *map(str, args), "--out", out]
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TQDM_DISABLE", "1")
    t0 = time.perf_counter()
    LABELS.append(label)
    print(f"  {label} ...", end="", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            raise RuntimeError(f"exit status {proc.returncode}:\n" + "\n".join(tail))
        with open(out) as f:
            result = json.load(f)
        print(f" {time.perf_counter() - t0:.0f} s", flush=True)
        return result
    except (subprocess.TimeoutExpired, RuntimeError, OSError, ValueError) as exc:
        msg = f"timed out after {timeout:.0f} s" if isinstance(
            exc, subprocess.TimeoutExpired) else str(exc)
        print(f" FAILED ({msg.splitlines()[0]})", flush=True)
        errors.append({"what": label, "error": msg})
        return None
    finally:
        if os.path.exists(out):
            os.remove(out)


# --------------------------------------------------------------------------- ratios
def _get(records, **match):
    for r in records:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def _med(record, key):
    return None if record is None else record["median"].get(key)


def _ratio(num, den):
    if num is None or den is None or den == 0:
        return None
    return num / den


def compute_ratios(res: dict) -> list:
    """The ratios that the targets of the MCMC and VI issues name, as a list of dicts
    ``{"name", "case", "value", "op", "target", "met"}`` (``met`` None without a target or a
    value)."""
    nuts, svi, floors = res.get("nuts", []), res.get("svi", []), res.get("floors", {})
    out = []

    def add(name, case, value, op=None, target=None, note=""):
        met = None
        if value is not None and op is not None:
            met = value >= target if op == ">=" else value <= target
        out.append({"name": name, "case": case, "value": value, "op": op, "target": target,
                    "met": met, "note": note})

    def floor(fw, task, variant):
        try:
            return floors[fw][task][variant]["us_median"]
        except (KeyError, TypeError):
            return None

    for task in tasks.TASKS:
        one = {fw: _get(nuts, framework=fw, task=task, chains=1) for fw in NUTS_ONE_CHAIN}
        four = {fw: _get(nuts, framework=fw, task=task, chains=4) for fw in NUTS_FOUR_CHAINS}
        ess = {fw: _med(r, "ess_per_s_sampling") for fw, r in one.items()}
        add("NUTS sampling ESS/s: agvi-JAX / NumPyro", task,
            _ratio(ess["agvi-jax"], ess["numpyro"]), ">=", 1.0)
        add("NUTS sampling ESS/s: agvi-JAX / BlackJAX", task,
            _ratio(ess["agvi-jax"], ess["blackjax"]), ">=", 1.0)
        add("NUTS re-run ESS per wall s: agvi-JAX / NumPyro", task,
            _ratio(_med(one["agvi-jax"], "rerun_ess_per_wall_s"),
                   _med(one["numpyro"], "rerun_ess_per_wall_s")), ">=", 10.0)
        add("NUTS sampling ESS/s: agvi-torch / Pyro", task,
            _ratio(ess["agvi-torch"], ess["pyro"]), ">=", 2.0)
        add("NUTS us/gradient: agvi-torch / bare torch gradient", task,
            _ratio(_med(one["agvi-torch"], "us_per_grad"), floor("torch", task, "grad")),
            "<=", 1.5)
        add("NUTS us/gradient: agvi-numpy / bare autograd gradient", task,
            _ratio(_med(one["agvi-numpy"], "us_per_grad"), floor("autograd", task, "grad")),
            "<=", 1.5)
        add("NUTS us/gradient: agvi-JAX / JAX gradient in a compiled loop", task,
            _ratio(_med(one["agvi-jax"], "us_per_grad"), floor("jax", task, "loop")),
            note="no target; NumPyro: " + _fmt(_ratio(_med(one["numpyro"], "us_per_grad"),
                                                       floor("jax", task, "loop"))))
        for fw in NUTS_FOUR_CHAINS:
            name = f"NUTS 4 vectorised chains / 1 chain, wall time of a re-run: {fw}"
            value = _ratio(_med(four[fw], "rerun_wall_s"), _med(one[fw], "rerun_wall_s"))
            if fw == "numpyro":
                add(name, task, value, note="no target (a peer)")
            else:
                add(name, task, value, "<=", 2.0)
    for p in (1, 16):
        s = {fw: _med(_get(svi, framework=fw, particles=p), "steps_per_s")
             for fw in SVI_FRAMEWORKS}
        case = f"{p} particle{'s' if p > 1 else ''}"
        add("SVI steps/s: agvi-JAX / NumPyro", case, _ratio(s["agvi-jax"], s["numpyro"]),
            ">=", 1.0)
        add("SVI steps/s: agvi-torch / Pyro Trace_ELBO", case,
            _ratio(s["agvi-torch"], s["pyro"]), ">=", 3.0)
        add("SVI steps/s: hand-written torch loop / agvi-torch", case,
            _ratio(s["torch-hand"], s["agvi-torch"]), "<=", 1.5)
        add("SVI steps/s: agvi-torch / Pyro JitTrace_ELBO", case,
            _ratio(s["agvi-torch"], s["pyro-jit"]), note="no target")
        add("SVI steps/s: agvi-JAX / hand-written JAX loop", case,
            _ratio(s["agvi-jax"], s["jax-hand"]), note="no target")
    return out


# --------------------------------------------------------------------------- results.md
def _fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}g}"


def _table(header, rows) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def render(res: dict) -> str:
    """``results.md`` from the results dict."""
    m, st = res["machine"], res["settings"]
    v = m["versions"]
    lines = ["# agvi benchmarks", "",
             f"{'QUICK (smoke-test settings: not for comparison)' if st['quick'] else 'Full'} "
             f"run of {m['date']}, commit `{res.get('commit') or '?'}`.", "",
             f"- Machine: {m['cores']} cores ({m['usable_cores']} usable), {m['cpu']}, "
             f"{m['platform']}; load average at start {_loads(m.get('load_average'))}, "
             f"at end {_loads(res.get('load_average_end'))}.",
             "- Versions: " + ", ".join(f"{k} {v[k]}" for k in v if v[k] is not None) + ".",
             f"- Settings: NUTS {st['warmup']} warmup + {st['samples']} draws (diagonal "
             "windowed adaptation, target 0.8, max depth 10, init zeros), SVI "
             f"{st['steps']} steps (AutoNormal, Adam 0.01), {st['repeats']} repeat(s) after a "
             "cold run, medians; float64; each framework in its own process; torch with "
             "1 thread.",
             f"- Total time {res.get('elapsed_s', 0):.0f} s.", *[
                 f"- Re-run later ({u['date']}, load {_loads(u['load_average'])}): "
                 + ", ".join(u["labels"]) + "." for u in res.get("updates", [])], "",
             "## Ratios against the targets", ""]
    rows = []
    for r in res["ratios"]:
        target = f"{r['op']} {r['target']:g}" if r["op"] else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r["met"]]
        rows.append([r["name"], r["case"], _fmt(r["value"]), target, met, r.get("note", "")])
    lines += _table(["ratio", "case", "value", "target", "met", "note"], rows)

    lines += ["## NUTS", "",
              "ESS: minimum bulk ESS over coordinates (all chains). ESS/s: over the sampling "
              "phase without compilation. Re-run: ESS per wall second of a second full run "
              "(warmup + sampling, as a user re-runs). us/grad: sampling time per gradient "
              "evaluation per chain; x floor: over the framework's bare gradient (JAX: inside a "
              "compiled loop; torch: eager; NumPy: autograd). Compile: of the cold run.", ""]
    floors = res.get("floors", {})
    floor_of = {"agvi-jax": ("jax", "loop"), "numpyro": ("jax", "loop"),
                "blackjax": ("jax", "loop"), "agvi-torch": ("torch", "grad"),
                "pyro": ("torch", "grad"), "agvi-numpy": ("autograd", "grad")}
    for task in tasks.TASKS:
        rows = []
        for r in res.get("nuts", []):
            if r["task"] != task:
                continue
            md, cold = r["median"], r["cold"]
            fl = floor_of.get(r["framework"])
            fv = None
            if fl is not None:
                fv = floors.get(fl[0], {}).get(task, {}).get(fl[1], {}).get("us_median")
            rows.append([r["framework"], str(r["chains"]), _fmt(md["min_bulk_ess"]),
                         _fmt(md["ess_per_s_sampling"]), _fmt(md["rerun_ess_per_wall_s"]),
                         _fmt(md["ess_per_1000_grads"]),
                         f"{_fmt(md['grads_warmup'])} / {_fmt(md['grads_sample'])}",
                         _fmt(md["us_per_grad"]), _fmt(_ratio(md["us_per_grad"], fv)),
                         _fmt(cold["compile_s"]), _fmt(cold["wall_s"]),
                         _fmt(md["rerun_wall_s"]), _fmt(md["step_size"]),
                         _fmt(md["divergences"])])
        lines += [f"### {task} (d = {tasks.DIMS[task]})", ""]
        lines += _table(["framework", "chains", "ESS", "ESS/s", "re-run ESS/wall s",
                         "ESS/1000 grads", "grads warmup / sampling", "us/grad", "x floor",
                         "compile s", "cold wall s", "re-run wall s", "step size",
                         "divergences"], rows)

    lines += ["## SVI (logistic regression)", "",
              "steps/s without compilation (and with it, for the cold run and a re-run); final "
              "ELBO: minus the mean loss of the last 100 steps; error: the guide's mean against "
              "a long NumPyro NUTS run (max and RMS over the 25 coordinates).", ""]
    rows = []
    for r in res.get("svi", []):
        md, cold = r["median"], r["cold"]
        rows.append([r["framework"], str(r["particles"]), _fmt(md["steps_per_s"]),
                     _fmt(md["steps_per_s_incl_compile"]),
                     _fmt(cold["steps_per_s_incl_compile"]), _fmt(cold["compile_s"]),
                     _fmt(md["final_elbo"], 6), _fmt(md.get("mean_err_max")),
                     _fmt(md.get("mean_err_rms"))])
    lines += _table(["framework", "particles", "steps/s", "re-run steps/s incl. compile",
                     "cold steps/s incl. compile", "cold compile s", "final ELBO",
                     "mean err max", "mean err RMS"], rows)

    lines += ["## One-gradient floors (us per value and gradient, median over blocks)", ""]
    cols = [(fw, var) for fw in FLOOR_FRAMEWORKS for var in
            sorted({var for t in floors.get(fw, {}).values() for var in t})]
    rows = [[task] + [_fmt(floors.get(fw, {}).get(task, {}).get(var, {}).get("us_median"))
                      for fw, var in cols] for task in tasks.TASKS]
    lines += _table(["task"] + [f"{fw} {var}" for fw, var in cols], rows)
    if res.get("errors"):
        lines += ["## Failures", ""]
        for e in res["errors"]:
            lines += [f"- {e['what']}:", "", "```", e["error"], "```", ""]
    return "\n".join(lines)


def _merge(json_path: str, new: dict) -> dict:
    """``new``'s records merged into the results in ``json_path`` (same settings required)."""
    with open(json_path) as f:
        old = json.load(f)
    keys = ("quick", "repeats", "warmup", "samples", "steps")
    if any(old["settings"][k] != new["settings"][k] for k in keys):
        raise SystemExit(f"--update: the settings of {json_path} ({old['settings']}) differ "
                         f"from this call's ({new['settings']})")
    old["floors"].update(new["floors"])
    for part, ident in (("nuts", ("framework", "task", "chains")),
                        ("svi", ("framework", "particles"))):
        fresh = {tuple(r[k] for k in ident): r for r in new[part]}
        kept = [r for r in old[part] if tuple(r[k] for k in ident) not in fresh]
        old[part] = kept + list(fresh.values())
    redone = set(new.get("labels", []))
    old["errors"] = [e for e in old["errors"] if e["what"] not in redone] + new["errors"]
    old.setdefault("updates", []).append({"date": new["machine"]["date"],
                                          "labels": sorted(redone),
                                          "load_average": new["machine"]["load_average"]})
    old["elapsed_s"] = old.get("elapsed_s", 0) + new["elapsed_s"]
    return old


def _loads(la):
    return "-" if not la else "/".join(f"{x:.2f}" for x in la)


def _commit():
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return (head + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def print_ratios(ratios: list) -> None:
    """Print one line per ratio with its target and whether it is met."""
    print("\nRatios (targets of the MCMC and VI issues):")
    for r in ratios:
        if r["value"] is None:      # a framework that was not run (or failed)
            continue
        target = f"{r['op']} {r['target']:g}" if r["op"] else "(no target)"
        met = {True: "met", False: "NOT MET", None: ""}[r["met"]]
        note = r.get("note", "") if r["op"] else r.get("note", "").replace("no target", "")
        print(f"  {r['name']} [{r['case']}]: {_fmt(r['value'])} {target} {met} "
              f"{note.strip('; ')}".rstrip())


# --------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 200 + 200 NUTS transitions, 500 SVI steps, 1 repeat")
    p.add_argument("--repeats", type=int, default=None, help="repeats after the cold run "
                   "(default 3; 1 with --quick)")
    p.add_argument("--only", default="floor,nuts,svi",
                   help="comma-separated parts to run: floor, nuts, svi")
    p.add_argument("--frameworks", default=None,
                   help="comma-separated frameworks to run (default: all)")
    p.add_argument("--tasks", default=",".join(tasks.TASKS))
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per benchmark process (default 1800; 900 with --quick)")
    p.add_argument("--out-dir", default=HERE)
    p.add_argument("--render", action="store_true",
                   help="only rewrite results.md (and print the ratios) from results.json")
    p.add_argument("--update", action="store_true",
                   help="merge what this call runs into the existing results.json (replacing "
                        "the same framework/task/chains or framework/particles), e.g. to redo "
                        "one failed benchmark; the settings must match")
    a = p.parse_args(argv)
    json_path = os.path.join(a.out_dir, "results.json")
    md_path = os.path.join(a.out_dir, "results.md")
    if a.render:
        with open(json_path) as f:
            res = json.load(f)
        res["ratios"] = compute_ratios(res)
        with open(md_path, "w") as f:
            f.write(render(res))
        print_ratios(res["ratios"])
        return

    quick = a.quick
    repeats = a.repeats if a.repeats is not None else (1 if quick else 3)
    warmup = samples = 200 if quick else 1000
    steps = 500 if quick else 5000
    timeout = a.timeout or (900.0 if quick else 1800.0)
    only = set(a.only.split(","))
    keep = None if a.frameworks is None else set(a.frameworks.split(","))
    task_list = [t for t in a.tasks.split(",") if t]
    for t in task_list:
        if t not in tasks.TASKS:
            p.error(f"unknown task {t!r}; choose from {tasks.TASKS}")

    def wanted(fw):
        return keep is None or fw in keep

    t_start = time.perf_counter()
    errors: list = []
    res = {"machine": machine_info(), "commit": _commit(),
           "settings": {"quick": quick, "repeats": repeats, "warmup": warmup,
                        "samples": samples, "steps": steps, "tasks": task_list},
           "floors": {}, "nuts": [], "svi": [], "errors": errors, "labels": LABELS}
    m = res["machine"]
    print(f"agvi benchmarks ({'quick' if quick else 'full'}): {m['cores']} cores, {m['cpu']}, "
          f"load {_loads(m['load_average'])}")

    if "floor" in only:
        print("One-gradient floors")
        for fw in FLOOR_FRAMEWORKS:
            if wanted(fw):
                r = _child("floor", ["--framework", fw, "--tasks", ",".join(task_list),
                                     "--target-s", 0.5 if quick else 2.0],
                           timeout, f"floor {fw}", errors)
                if r is not None:
                    res["floors"][fw] = r["floors"]

    if "nuts" in only:
        print("NUTS")
        for task in task_list:
            for chains, fws in ((1, NUTS_ONE_CHAIN), (4, NUTS_FOUR_CHAINS)):
                for fw in fws:
                    if not wanted(fw):
                        continue
                    r = _child("bench_nuts", ["--framework", fw, "--task", task, "--chains",
                                              chains, "--warmup", warmup, "--samples", samples,
                                              "--repeats", repeats],
                               timeout, f"nuts {task} {fw} chains={chains}", errors)
                    if r is not None:
                        res["nuts"].append(r)

    if "svi" in only:
        print("SVI")
        if not os.path.exists(REFERENCE):
            _child("bench_svi", ["--make-reference", REFERENCE], timeout,
                   "reference posterior (NumPyro NUTS, 4 x 5000 draws)", errors)
        ref = ["--reference", REFERENCE] if os.path.exists(REFERENCE) else []
        for particles in (1, 16):
            for fw in SVI_FRAMEWORKS:
                if wanted(fw):
                    r = _child("bench_svi", ["--framework", fw, "--particles", particles,
                                             "--steps", steps, "--repeats", repeats, *ref],
                               timeout, f"svi {fw} particles={particles}", errors)
                    if r is not None:
                        res["svi"].append(r)

    res["elapsed_s"] = time.perf_counter() - t_start
    res["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if a.update and os.path.exists(json_path):
        res = _merge(json_path, res)
    res["ratios"] = compute_ratios(res)
    os.makedirs(a.out_dir, exist_ok=True)
    write_json(json_path, res)
    with open(md_path, "w") as f:
        f.write(render(res))
    print_ratios(res["ratios"])
    print(f"\nwrote {md_path} and {json_path} ({res['elapsed_s']:.0f} s)")
    if errors:
        print(f"{len(errors)} benchmark(s) failed: see {md_path}")


if __name__ == "__main__":
    main()
