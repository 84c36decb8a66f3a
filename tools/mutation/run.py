"""Mutation harness for the sim backend: plants each bug of catalogue.py in a copy of the source tree, rebuilds only
what changed (the sim backend, CUDA off), runs the sim tests and says whether they caught it, and how.

    python tools/mutation/run.py                       # every mutant; report to docs/mutation-report.md
    python tools/mutation/run.py --only sm-sum-width,red-atomic --report /tmp/r.md
    python tools/mutation/run.py --checks ""           # the default emulator mode instead of every check
    python tools/mutation/run.py --only a,b --merge full.log   # re-run a and b; the report: full.log's run with
                                                               # their new verdicts (after a fix)

Not part of CI: a full pass rebuilds the sim backend once per mutant (tens of minutes on 2 cores). A mutant is
"caught" when the sim tests fail (a run past --timeout gives no verdict); "by diagnostic" when the failure is an emulator
error naming the bug (race, out-of-bounds, uninitialised read, guard zone, divergence, misalignment) rather than
a wrong value. The copy lives in --workdir; the repository itself is never modified.
"""
import argparse
import collections
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from catalogue import MUTANTS  # noqa: E402

# The test files that exercise each kernel file (their sim tests run; collecting the whole suite costs more than
# running these); --all-tests runs the whole sim suite instead.
COMMON_TESTS = ["test_ops.py", "test_grad.py", "test_sim_checks_ops.py", "test_sim_thresholds.py"]
GEMM_TESTS = COMMON_TESTS + ["test_gpu_gemm_plans.py", "test_conv_paths.py"]
# The tensor-core kernels run on sim only under matmul precision "high" (tf32) or on bfloat16 tensors.
TC_TESTS = ["test_tensor_cores.py", "test_tc_emulation.py", "test_bfloat16.py", "test_mixed_precision.py"]
TESTS_FOR = {
    "elementwise.cu": COMMON_TESTS + ["test_autograd.py", "test_sim_alignment.py"],
    "softmax.cu": COMMON_TESTS,
    "pool.cu": COMMON_TESTS,
    "bias_backward.cu": COMMON_TESTS + ["test_gpu_gemm_plans.py"],
    "sgd.cu": ["test_optim.py", "test_sim_thresholds.py", "test_sim_checks_ops.py", "test_sim_alignment.py"],
    "lrn.cu": COMMON_TESTS,
    "common.cuh": GEMM_TESTS + ["test_sim_alignment.py"],
    "gemm_kernel.cuh": GEMM_TESTS,
    "gemm_loaders.cuh": GEMM_TESTS,
    "gemm_plan.cuh": GEMM_TESTS,
    "conv2d.cu": GEMM_TESTS,
    "linear.cu": COMMON_TESTS + ["test_gpu_gemm_plans.py"],
    "tc_gemm.cuh": TC_TESTS,
    "mma.cuh": TC_TESTS,
}

DIAGNOSTICS = re.compile(r"simt: .*(race on|out-of-bounds|uninitialised|wrote outside|divergent|misaligned|"
                         r"overflow|reads lane|launch of kernel|exceeds|__launch_bounds__|read before its)"
                         # any other error the emulator raises from inside a kernel names the kernel and thread
                         r"|RuntimeError: simt: kernel ")


def sh(cmd, cwd=None, env=None, timeout=None):
    return subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True)


def copy_tree(dst):
    files = sh(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO).stdout.split()
    for f in files:
        src = REPO / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)


def build(src, bld, targets=("_C", "_simt_selftest")):
    r = sh(["ninja", "-C", str(bld), *targets], timeout=1800)
    return r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def make_package(src, bld, pkg):
    dst = pkg / "vggcore"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src / "vggcore", dst)
    for so in bld.glob("*.so"):
        (dst / so.name).symlink_to(so)


def run_tests(pkg, tests, checks, timeout, extra, files=None):
    env = dict(os.environ, PYTHONPATH=str(pkg), VGG_SIM_CHECKS=checks)
    paths = [str(tests / f) for f in files] if files else [str(tests)]
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "sim"] + paths + extra
    start = time.time()
    try:
        r = sh(cmd, cwd=pkg, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result after {timeout} s", time.time() - start
    out = r.stdout + r.stderr
    if r.returncode == 0:
        return "missed", "", time.time() - start
    diag = DIAGNOSTICS.search(out)
    if diag:
        line = out[diag.start():].splitlines()[0]
        return "diagnostic", line[:300], time.time() - start
    errors = [l for l in out.splitlines() if l.startswith("E ")]
    if r.returncode < 0 or "Fatal Python error" in out or "core dumped" in out:
        return "crash", (errors[:1] or [out[-300:]])[0][:300], time.time() - start
    return "value", (errors[:1] or ["test failed"])[0][:300], time.time() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated mutant ids")
    ap.add_argument("--checks", default="all", help="VGG_SIM_CHECKS for the test runs (default: all)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per test run")
    ap.add_argument("--workdir", default="/tmp/vggcore-mutation")
    ap.add_argument("--report", default=str(REPO / "docs" / "mutation-report.md"))
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments")
    ap.add_argument("--all-tests", action="store_true", help="the whole sim suite per mutant, not the file's tests")
    ap.add_argument("--skip-baseline", action="store_true", help="do not run the sim suite on the unmutated tree")
    ap.add_argument("--fresh", default="", help="comma-separated csrc/cuda files to recompile at the start (a run "
                    "killed mid-mutant may have left a mutated object behind)")
    ap.add_argument("--from-log", default="", help="only write the report from the lines of earlier runs' logs "
                    "(comma-separated; a later log's verdict replaces an earlier one's)")
    ap.add_argument("--merge", default="", help="the log of an earlier full run: the report is that run with the "
                    "verdicts of this run's mutants replaced (re-runs after a fix)")
    args = ap.parse_args()
    if args.from_log:
        return report_from_log([pathlib.Path(f) for f in args.from_log.split(",")], pathlib.Path(args.report),
                               args.checks)
    only = list(filter(None, args.only.split(",")))
    by_id = {m[0]: m for m in MUTANTS}
    unknown = [o for o in only if o not in by_id]
    if unknown:
        sys.exit("unknown mutants: " + ", ".join(unknown))
    mutants = [by_id[o] for o in only] if only else MUTANTS  # in the order given

    work = pathlib.Path(args.workdir)
    src, bld, pkg = work / "src", work / "build", work / "pkg"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    pkg.mkdir(parents=True, exist_ok=True)
    copy_tree(src)
    for name in filter(None, args.fresh.split(",")):
        (src / "csrc" / "cuda" / name).touch()
    # A stop (SIGTERM, timeout) must not leave a mutant in the copy: restore it like an exception would.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    import pybind11
    r = sh(["cmake", "-S", str(src), "-B", str(bld), "-G", "Ninja", "-DVGG_CUDA=OFF", "-DCMAKE_BUILD_TYPE=Release",
            # No link-time optimisation: every mutant relinks _C, and an LTO link recompiles the whole module.
            "-DCMAKE_INTERPROCEDURAL_OPTIMIZATION=OFF",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}"])
    if r.returncode != 0:
        sys.exit("cmake failed:\n" + r.stdout[-2000:] + r.stderr[-2000:])
    ok, log = build(src, bld)
    if not ok:
        sys.exit("the unmutated tree does not build:\n" + log)
    make_package(src, bld, pkg)
    extra = args.pytest_args.split()
    if not args.skip_baseline:
        status, detail, secs = run_tests(pkg, src / "tests", args.checks, args.timeout, extra)
        if status != "missed":
            sys.exit(f"the unmutated tree fails the sim tests ({status}): {detail}")
        print(f"baseline: sim tests pass in {secs:.0f} s", flush=True)

    results = []
    for mid, fname, cls, desc, old, new in mutants:
        path = src / "csrc" / "cuda" / fname
        original = path.read_text()
        if original.count(old) != 1:
            results.append((mid, fname, cls, desc, "invalid", "patch does not apply", 0.0))
            continue
        path.write_text(original.replace(old, new))
        try:
            ok, log = build(src, bld, ("_C",))  # the mutants are in csrc/cuda: only _C's sim objects change
            if not ok:
                err = [l for l in log.splitlines() if "error" in l][:1]
                results.append((mid, fname, cls, desc, "invalid", "does not compile: " + "".join(err)[:200], 0.0))
            else:
                files = None if args.all_tests else TESTS_FOR.get(fname)
                status, detail, secs = run_tests(pkg, src / "tests", args.checks, args.timeout, extra, files)
                results.append((mid, fname, cls, desc, status, detail, secs))
        finally:
            path.write_text(original)
        print(f"{mid:28s} {results[-1][4]:10s} {results[-1][6]:5.0f}s  {results[-1][5][:150]}", flush=True)
    build(src, bld)
    note = ""
    if args.merge:
        rerun = {r[0] for r in results}
        merged = {r[0]: r for r in parse_log(pathlib.Path(args.merge))}
        merged.update({r[0]: r for r in results})
        results = [merged[m[0]] for m in MUTANTS if m[0] in merged]
        note = (f"Merged: the run logged in {pathlib.Path(args.merge).name}, with the verdicts of "
                f"{', '.join(sorted(rerun))} from a re-run after the fixes.")
    write_report(pathlib.Path(args.report), results, args.checks, note)


def parse_log(log):
    """The results in the per-mutant lines a run prints (details truncated to 150 characters)."""
    by_id = {m[0]: m for m in MUTANTS}
    results = {}
    for line in log.read_text().splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[0] in by_id and parts[2].endswith("s"):
            mid, fname, cls, desc = by_id[parts[0]][:4]
            status, detail = parts[1], parts[3] if len(parts) > 3 else ""
            # An emulator diagnostic that the run's own pattern did not know yet (the pattern grew since).
            if status == "value" and DIAGNOSTICS.search(detail):
                status = "diagnostic"
            results[mid] = (mid, fname, cls, desc, status, detail, float(parts[2][:-1]))
    return list(results.values())


def report_from_log(logs, report, checks):
    """A report from the lines of runs' logs (a run stopped before the end, re-runs after a fix), in catalogue order."""
    merged = {}
    for log in logs:
        merged.update({r[0]: r for r in parse_log(log)})
    results = [merged[m[0]] for m in MUTANTS if m[0] in merged]
    write_report(report, results, checks, "From the logs of " + ", then ".join(log.name for log in logs) +
                 f" ({len(results)} of the catalogue's {len(MUTANTS)} mutants have a line).")


def write_report(path, results, checks, note=""):
    # A run that timed out gives no verdict (on a loaded machine a slow pass looks the same as a hang).
    valid = [r for r in results if r[4] not in ("invalid", "timeout")]
    timeouts = [r for r in results if r[4] == "timeout"]
    caught = [r for r in valid if r[4] != "missed"]
    diag = [r for r in valid if r[4] == "diagnostic"]
    by_class = collections.defaultdict(lambda: [0, 0, 0])
    for r in valid:
        c = by_class[r[2]]
        c[0] += 1
        c[1] += r[4] != "missed"
        c[2] += r[4] == "diagnostic"
    lines = [
        "# Mutation report (tools/mutation/run.py)", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with VGG_SIM_CHECKS={checks!r}: each "
        "mutant of tools/mutation/catalogue.py planted alone, the sim backend rebuilt, the sim tests of its kernel "
        "file run (`pytest -x -k sim` on the test files of TESTS_FOR in run.py; --all-tests: the whole sim suite).",
        "",
        f"**{len(caught)} of {len(valid)} caught ({100.0 * len(caught) / max(1, len(valid)):.0f}%)**, "
        f"{len(diag)} of them by an emulator diagnostic naming the bug; "
        f"{len(timeouts)} without a verdict (the test run timed out), "
        f"{len(results) - len(valid) - len(timeouts)} invalid (patch did not apply or compile).", "",
    ] + ([note, ""] if note else []) + [
        "| class | mutants | caught | by diagnostic |", "|---|---|---|---|",
    ]
    for cls in sorted(by_class):
        n, c, d = by_class[cls]
        lines.append(f"| {cls} | {n} | {c} | {d} |")
    lines += ["", "| mutant | file | class | bug | result | first failure |", "|---|---|---|---|---|---|"]
    for mid, fname, cls, desc, status, detail, secs in results:
        detail = detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {mid} | {fname} | {cls} | {desc} | {status} | {detail} |")
    path.write_text("\n".join(lines) + "\n")
    print(f"{len(caught)}/{len(valid)} caught, {len(diag)} by diagnostic; report: {path}")


if __name__ == "__main__":
    main()
