"""Helpers shared by the benchmarks in bench/: the results-file header, burst timing, FLOP counts, tables.

Nothing here imports torch or vggcore at module level, so a benchmark can report a missing dependency
itself with a clear message.
"""

import datetime
import math
import os
import platform
import shutil
import statistics
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# fp32 non-tensor-core peak (dense FFMA), TFLOP/s, from the vendors' datasheets at boost clock.
# Matched against the lower-cased device name in order: the first needle found wins, so the more
# specific names come first ("h100 pcie" before "h100", "a100" before "a10").
FP32_PEAK_TFLOPS = [
    ("h100 pcie", 51.2),
    ("h100 nvl", 60.0),
    ("h100", 66.9),        # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    ("h200", 66.9),        # same GH100 die and clocks as the H100 SXM5
    ("gh200", 66.9),
    ("a100", 19.5),
    ("a10g", 31.2),
    ("a10", 31.2),
    ("l40s", 91.6),
    ("l40", 90.5),
    ("l4", 30.3),
    ("rtx 4090", 82.6),
    ("rtx 3090", 35.6),
    ("v100", 15.7),
]


# dense tensor-core peaks (no sparsity), TFLOP/s, from the datasheets: (needle, tf32, bf16); same matching rule.
TENSOR_PEAK_TFLOPS = [
    ("h100 pcie", 378.0, 756.0),
    ("h100 nvl", 417.0, 835.0),
    ("h100", 494.7, 989.4),     # H100 SXM5
    ("h200", 494.7, 989.4),     # same GH100 tensor cores and clocks as the H100 SXM5
    ("gh200", 494.7, 989.4),
    ("a100", 156.0, 312.0),
    ("a10g", 35.0, 70.0),
    ("l40s", 183.0, 366.0),
    ("l4", 60.0, 121.0),
]


def peak_tflops(device_name, precision="fp32"):
    """The GPU's dense peak in TFLOP/s for "fp32" (non-tensor), "tf32" or "bf16"; None when not in the tables."""
    if precision == "fp32":
        return fp32_peak_tflops(device_name)
    name = (device_name or "").lower()
    for needle, tf32, bf16 in TENSOR_PEAK_TFLOPS:
        if needle in name:
            return tf32 if precision == "tf32" else bf16
    return None


def fp32_peak_tflops(device_name):
    """The GPU's fp32 (non-tensor) peak in TFLOP/s, or None when the name is not in the table."""
    name = (device_name or "").lower()
    for needle, peak in FP32_PEAK_TFLOPS:
        if needle in name:
            return peak
    return None


def conv_flops(n, p, q, k, r, s, c):
    """FLOPs of one conv pass (forward, backward-data or backward-weight): one multiply-add per MAC."""
    return 2.0 * n * p * q * k * r * s * c


def geomean(values):
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _run(cmd, cwd=None):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def git_commit():
    """Short commit of the repository, with '+dirty' when the working tree has uncommitted changes.

    VGG_COMMIT overrides it, for copies of the tree that travel without .git (the lent GPU machine)."""
    if os.environ.get("VGG_COMMIT"):
        return os.environ["VGG_COMMIT"]
    commit = _run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO) or "unknown"
    if commit != "unknown" and _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO):
        commit += "+dirty"
    return commit


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def nvidia_smi_query(field):
    """One field of `nvidia-smi --query-gpu` for GPU 0 ("" when nvidia-smi is absent or fails)."""
    if shutil.which("nvidia-smi") is None:
        return ""
    return _run(["nvidia-smi", "--query-gpu=" + field, "--format=csv,noheader", "-i", "0"])


def nvcc_version():
    text = _run(["nvcc", "--version"]) if shutil.which("nvcc") else ""
    for line in text.splitlines():
        if "release" in line:
            return line.split("release", 1)[1].strip().split(",")[0]
    return ""


def header_lines(gpu_name="", extra=()):
    """The lines every results file starts with: machine, GPU, driver, CUDA, commit, date."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"- date: {now}",
        f"- commit: {git_commit()}",
        f"- machine: {platform.node() or 'unknown'}: {cpu_name()}, {os.cpu_count()} logical cores, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
    ]
    if gpu_name:
        driver = nvidia_smi_query("driver_version") or "unknown"
        lines.append(f"- GPU: {gpu_name}; driver {driver}")
    toolkit = nvcc_version()
    if toolkit:
        lines.append(f"- nvcc: CUDA {toolkit}")
    lines.extend(f"- {e}" for e in extra)
    return lines


def measure_bursts(launch, sync, nbuf, target_ms=25.0, reps=7, max_iters=2000, events=None):
    """Per-call time (ms) of `launch(i)` run back to back, i cycling over nbuf buffer sets.

    One sample is a burst: sync, read the clock, launch `iters` calls, sync, read the clock; the sample is the
    elapsed time over iters. The result is the median over `reps` bursts. `iters` is chosen from a calibration
    burst so that one burst lasts about target_ms, which makes the one sync latency per burst (tens of
    microseconds) negligible. The caller warms up first (module load, autotuning, allocator caches).

    events: optional factory returning a (start, end) pair of CUDA events on the launching stream; when given,
    each burst is also timed on the device (events recorded around the launches) and returned too.
    Returns (median wall ms per call, median event ms per call or None, iters).
    """
    sync()
    t0 = time.perf_counter()
    for i in range(nbuf):
        launch(i)
    sync()
    estimate = max((time.perf_counter() - t0) * 1e3 / nbuf, 1e-3)
    iters = int(min(max_iters, max(nbuf, math.ceil(target_ms / estimate))))
    wall, device = [], []
    for _ in range(reps):
        pair = events() if events else None
        sync()
        t0 = time.perf_counter()
        if pair:
            pair[0].record()
        for i in range(iters):
            launch(i % nbuf)
        if pair:
            pair[1].record()
        sync()
        wall.append((time.perf_counter() - t0) * 1e3 / iters)
        if pair:
            device.append(pair[0].elapsed_time(pair[1]) / iters)
    return statistics.median(wall), (statistics.median(device) if device else None), iters


def fmt(value, spec=".3f", none="n/a"):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return none
    return format(value, spec)


def markdown_table(headers, rows, align=None):
    """A GitHub markdown table; align is a string of 'l'/'r' per column (default: first left, rest right)."""
    align = align or ("l" + "r" * (len(headers) - 1))
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
