"""What data-parallel scaling costs: VGG-16's gradient all-reduce, its overlap with backward, and a GPU model.

    python bench/allreduce.py                      # all parts (minutes on 2 CPU cores); writes the results file
    python bench/allreduce.py --out FILE --repeats 3
    python bench/allreduce.py --from-json DIR      # rewrite the results file from a run's saved measurements

Measured here, on CPU ranks started with mpirun (each part is a fresh mpirun job running this file with --part):
1. comm:    the all-reduce of VGG-16's 138,357,544 gradients (553 MB in float32; half the bytes, 277 MB, as a
            bfloat16 proxy: MPI has no bfloat16 type, so int16 sums move the same bytes through the same algorithm)
            for bucket sizes 1 .. 1000 MB, buckets reduced one after another as vggcore's communication thread does.
2. overlap: a real VGG-16 (224x224, 1000 classes) training step on 2 ranks, one image per rank, gradients reduced
            by vggcore's GradReducer (25 MB buckets) while backward runs: when each bucket was launched (as a
            fraction of backward), the wait left after backward, and the fraction of the all-reduce hidden behind
            backward = 1 - exposed wait / (the same buckets reduced with nothing else running, part 1).
3. ips:     training images/s of the built-in preset (VGG-A at 1/4 width, 32-pixel crops, global batch 32) on 1 rank
            (2 threads) and on 2 ranks (1 thread each), synthetic batches.
Modelled (documented below and in the results file): the same VGG-16 bf16 step on 8 GPUs over NVLink and on 2 nodes
x 8 GPUs over InfiniBand, replaying the bucket launch fractions measured in part 2 against a bandwidth model.

On a GPU cluster (one process per GPU; the GPU model then becomes a measurement):
    mpirun -np 8 python bench/allreduce.py --part overlap --device cuda --per-rank-batch 32 --json out.json
    srun --ntasks=16 --gpus-per-task=1 python bench/allreduce.py --part overlap --device cuda --per-rank-batch 32 \\
         --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# ---- the GPU model's inputs (cited in the results file) -----------------------------------------------------------
# NVLink 4 / NVSwitch (H100/H200 SXM): 900 GB/s bidirectional per GPU, 450 GB/s each way. NCCL's all-reduce bus
# bandwidth measured by nccl-tests on 8x H100 SXM: 460-480 GB/s at large sizes; we use 360 GB/s (80% of one direction's
# line rate, below every published measurement) to stay on the safe side.
NVLINK_BUSBW = 360e9
NVLINK_LATENCY = 20e-6           # per all-reduce call, intra-node (nccl-tests small-message times are ~10-30 us)
# 2 nodes x 8 GPUs, one NDR 400 Gb/s (50 GB/s) InfiniBand NIC per GPU (DGX/HGX H100 layout). Published 2-node
# nccl-tests bus bandwidth for H100/H200 + NDR: 400-450 GB/s. Two cases: that class (we take 300 GB/s), and a
# pessimistic one at 40 GB/s (80% of a single NIC's line rate; also near the 35 GB/s published for a 2-node H200 system
# with only 4 RoCE NICs per node).
IB_BUSBW = {"NDR, 8 NICs/node (published class)": 300e9, "one NIC's rate (pessimistic)": 40e9}
IB_LATENCY = 50e-6
GPU_BF16_PEAK = 990e12           # H100/H200 SXM dense bf16 tensor-core peak (DESIGN.md section 3)
GPU_MFU = (0.25, 0.40, 0.60)      # fractions of that peak the step is assumed to reach (vggcore has no GPU figure yet)
PER_GPU_BATCH = 32               # the paper's global batch of 256 over 8 GPUs


def vgg16_flops_per_image(size=224, classes=1000):
    """Forward multiply-adds x 2 of VGG-16 (config D) at size x size; training is ~3x (forward, data and weight grads)."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    flops, c, s = 0, 3, size
    for v in cfg:
        if v == "M":
            s //= 2
            continue
        flops += 2 * s * s * 9 * c * v
        c = v
    for fin, fout in ((c * s * s, 4096), (4096, 4096), (4096, classes)):
        flops += 2 * fin * fout
    return flops


# ---- worker parts (run under mpirun) ----------------------------------------------------------------------------------
def _vgg16_numels():
    import vggcore as vc
    model = vc.models.vgg("D", num_classes=1000, input_size=224)
    return [p.numel() for p in model.parameters()]


def part_comm(group, repeats):
    from vggcore import _parallel
    numels = _vgg16_numels()
    results = []
    for name, dtype in (("float32", np.float32), ("bf16 (int16 proxy)", np.int16)):
        for bucket_mb in (1, 5, 25, 100, 1000):
            fake = [_Sized(n, np.dtype(dtype).itemsize) for n in numels]
            buckets = _parallel._bucket_indices(fake, bucket_mb * 1e6)
            flats = [np.ones(sum(numels[i] for i in b), dtype) for b in buckets]
            times = []
            for _ in range(repeats):
                group.barrier()
                t0 = time.perf_counter()
                for flat in flats:
                    group.allreduce_array(flat, group.MPI.SUM, comm=group.grad_comm)
                times.append(time.perf_counter() - t0)
            nbytes = sum(f.nbytes for f in flats)
            results.append({"dtype": name, "bucket_mb": bucket_mb, "buckets": len(buckets), "bytes": nbytes,
                            "seconds": float(np.median(times)), "all_seconds": times})
            del flats
    return {"comm": results}


class _Sized:
    """A stand-in with the numel and dtype that _bucket_indices reads."""

    def __init__(self, n, itemsize):
        self.n, self.dtype = n, {4: "float32", 2: "bfloat16"}[itemsize]

    def numel(self):
        return self.n


def part_overlap(group, repeats, device, per_rank_batch, bucket_mb):
    import vggcore as vc
    from vggcore import _parallel
    vc.manual_seed(0)
    device = _parallel.device_for_rank(device)           # "cuda": one GPU per process, from the local rank
    model = vc.models.vgg("D", num_classes=1000, input_size=224, dropout=0.5).to(device)
    optimizer = vc.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    dp = _parallel.DataParallel(group, model, bucket_mb=bucket_mb)
    rng = np.random.default_rng(group.rank)
    x = rng.standard_normal((per_rank_batch, 224, 224, 3)).astype(np.float32)
    y = rng.integers(0, 1000, per_rank_batch).astype(np.int64)
    steps = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        dp.train_step(model, optimizer, x, y, device, (224, 224, 3))
        vc._C.synchronize(device)
        total = time.perf_counter() - t0
        if i == 0:
            continue                     # warm-up: allocator and caches
        r = dp.reducer
        steps.append({"step_s": total, "backward_s": r.backward_s, "exposed_s": r.exposed_wait_s[-1],
                      "launch_fraction": [t / r.backward_s for t in r.timeline]})
    bucket_bytes = [sum(dp.reducer.params[i].numel() * 4 for i in b) for b in dp.reducer.buckets]
    return {"overlap": {"steps": steps, "bucket_bytes": bucket_bytes, "bucket_mb": bucket_mb,
                        "per_rank_batch": per_rank_batch, "ranks": group.size, "device": device}}


def part_ips(group, repeats):
    import vggcore as vc
    from vggcore import _parallel
    vc.manual_seed(0)
    global_batch = 32
    model = vc.models.vgg("A", num_classes=10, width=0.25, fc_width=128, input_size=32, dropout=0.0, init="he")
    optimizer = vc.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=5e-4)
    dp = _parallel.DataParallel(group, model)
    share = global_batch // group.size
    rng = np.random.default_rng(group.rank)
    x = rng.standard_normal((share, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, share).astype(np.int64)
    steps = 10 * repeats
    for _ in range(2):
        dp.train_step(model, optimizer, x, y, "cpu", (32, 32, 3))
    group.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        dp.train_step(model, optimizer, x, y, "cpu", (32, 32, 3))
    seconds = time.perf_counter() - t0
    return {"ips": {"ranks": group.size, "images_per_s": global_batch * steps / seconds, "steps": steps,
                    "threads_per_rank": os.environ.get("OMP_NUM_THREADS", "default")}}


def worker(args):
    from vggcore import distributed as dist
    group = dist.init()
    if args.part == "comm":
        result = part_comm(group, args.repeats)
    elif args.part == "overlap":
        result = part_overlap(group, args.repeats, args.device, args.per_rank_batch, args.bucket_mb)
    else:
        result = part_ips(group, args.repeats)
    if group.rank == 0:
        Path(args.json).write_text(json.dumps(result))


# ---- the model ----------------------------------------------------------------------------------------------------------
def allreduce_seconds(nbytes, ranks, busbw, latency):
    """NCCL's convention: bus bandwidth = algorithm bandwidth * 2 (n - 1) / n, so a ring all-reduce of S bytes
    takes latency + S * 2 (n - 1) / n / busbw."""
    return latency + nbytes * 2 * (ranks - 1) / ranks / busbw


def model_step(launch_fraction, bucket_bytes, ranks, busbw, latency, mfu, dtype_bytes=2):
    """One data-parallel step of VGG-16 on GPUs: compute from FLOPs at mfu x peak (forward 1/3, backward 2/3), buckets
    launched at the measured fractions of backward, reduced one after another; returns (efficiency, exposed s, comm s)."""
    compute = 3 * vgg16_flops_per_image() * PER_GPU_BATCH / (mfu * GPU_BF16_PEAK)
    backward = compute * 2 / 3
    end, comm_total = 0.0, 0.0
    for fraction, nbytes in zip(launch_fraction, bucket_bytes):
        c = allreduce_seconds(nbytes * dtype_bytes / 4, ranks, busbw, latency)
        end = max(end, fraction * backward) + c
        comm_total += c
    exposed = max(0.0, end - backward)
    return compute / (compute + exposed), exposed, comm_total, compute


# ---- driver ---------------------------------------------------------------------------------------------------------------
def _mpirun(part, ranks, threads, out, extra=()):
    flags = ["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    cmd = ["mpirun", *flags, "--oversubscribe", "-np", str(ranks), "-x", f"OMP_NUM_THREADS={threads}",
           sys.executable, str(Path(__file__).resolve()), "--part", part, "--json", str(out), *extra]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    print(f"  {part} on {ranks} rank(s): {time.monotonic() - start:.0f} s", flush=True)
    return json.loads(Path(out).read_text())


PARTS = ("comm", "overlap", "alone", "ips1", "ips2")


def driver(args):
    if args.from_json:
        tmp = Path(args.from_json)
    else:
        if shutil.which("mpirun") is None:
            raise SystemExit("bench/allreduce.py needs mpirun (OpenMPI) and mpi4py")
        tmp = Path(tempfile.mkdtemp(prefix="vggcore-allreduce-"))
        print(f"measuring (CPU ranks under mpirun), measurements saved in {tmp}:", flush=True)
        sys.path.insert(0, str(HERE))
        import common
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        (tmp / "load.json").write_text(json.dumps({"loadavg_before": os.getloadavg(), "commit": common.git_commit(),
                                                   "started": started}))
        repeats = ["--repeats", str(args.repeats)]
        _mpirun("comm", 2, 1, tmp / "comm.json", repeats)
        _mpirun("overlap", 2, 1, tmp / "overlap.json", repeats)
        _mpirun("overlap", 1, 1, tmp / "alone.json", repeats)
        _mpirun("ips", 1, 2, tmp / "ips1.json", repeats)
        _mpirun("ips", 2, 1, tmp / "ips2.json", repeats)
        load = json.loads((tmp / "load.json").read_text())
        load["loadavg_after"] = os.getloadavg()
        (tmp / "load.json").write_text(json.dumps(load))
    data = [next(iter(json.loads((tmp / f"{name}.json").read_text()).values())) for name in PARTS]
    load = json.loads((tmp / "load.json").read_text()) if (tmp / "load.json").is_file() else {}
    text = report(*data, load=load)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


def report(comm, overlap, alone, ips1, ips2, load=None):
    sys.path.insert(0, str(HERE))
    import common
    lines = []
    add = lines.append
    add("# Data-parallel scaling: VGG-16 gradient all-reduce, overlap with backward, GPU model")
    add("")
    measured = (f"measured at commit {load['commit']}, starting {load['started']}; this file written later"
                if load and "commit" in load else None)
    lines.extend(common.header_lines(extra=[e for e in [
        measured,
        "no GPU; ranks: OpenMPI mpirun on this one machine (shared-memory transport), mpi4py",
        "command: `python bench/allreduce.py`" + (f" (load average {load['loadavg_before'][0]:.1f} before, "
                                                 f"{load['loadavg_after'][0]:.1f} after: the 2 cores were shared "
                                                 "with other jobs, so every CPU figure here is a lower bound)"
                                                 if load and "loadavg_after" in load else "")] if e]))
    add("")
    add("## 1. All-reduce of VGG-16's gradients on 2 CPU ranks, by bucket size (measured)")
    add("")
    add("138,357,544 gradients; buckets cut in reverse parameter order (as in training) and reduced one after another, "
        "median of the repeats. The bf16 rows move half the bytes (int16 sums: MPI has no bfloat16 type).")
    add("")
    add("| gradients | bucket cap | buckets | MB | seconds | GB/s (algorithm) |")
    add("|---|---|---|---|---|---|")
    for r in comm:
        add(f"| {r['dtype']} | {r['bucket_mb']} MB | {r['buckets']} | {r['bytes'] / 1e6:.0f} | {r['seconds']:.3f} | "
            f"{r['bytes'] / r['seconds'] / 1e9:.2f} |")
    comm25 = next(r["seconds"] for r in comm if r["dtype"] == "float32" and r["bucket_mb"] == overlap["bucket_mb"])
    add("")
    add("## 2. Overlap with backward on 2 CPU ranks (measured)")
    add("")
    steps = overlap["steps"]
    bwd = float(np.median([s["backward_s"] for s in steps]))
    exposed = float(np.median([s["exposed_s"] for s in steps]))
    step_s = float(np.median([s["step_s"] for s in steps]))
    bwd1 = float(np.median([s["backward_s"] for s in alone["steps"]]))
    step1 = float(np.median([s["step_s"] for s in alone["steps"]]))
    hidden = max(0.0, 1.0 - exposed / comm25)
    contended = np.median(np.array([s["launch_fraction"] for s in steps]), axis=0)
    # The GPU model replays the 1-rank timeline: when each gradient is ready in an uncontended backward.
    fractions = np.median(np.array([s["launch_fraction"] for s in alone["steps"]]), axis=0)
    add(f"A real VGG-16 step (224x224, 1000 classes, dropout 0.5), {overlap['per_rank_batch']} image(s) per rank, "
        f"{overlap['bucket_mb']:g} MB buckets ({len(overlap['bucket_bytes'])} buckets), 1 thread per rank, median of "
        f"{len(steps)} steps after a warm-up:")
    add("")
    add(f"- step {step_s:.2f} s on 2 ranks vs {step1:.2f} s on 1 rank with no communication; backward {bwd:.2f} s "
        f"(1 rank: {bwd1:.2f} s)")
    add(f"- the same buckets' all-reduce alone (part 1): {comm25:.3f} s; wait left after backward: {exposed:.3f} s")
    add(f"- **fraction of the all-reduce hidden behind backward: {hidden:.0%}** (1 - exposed / alone)")
    add("- bucket launch times as a fraction of backward, 1 rank (the input of the GPU model below): "
        + ", ".join(f"{f:.3f} ({b / 1e6:.0f} MB)" for f, b in zip(fractions, overlap["bucket_bytes"])))
    add("- the same on 2 ranks: " + ", ".join(f"{f:.3f}" for f in contended))
    add("")
    add("The FC layers' 100 MB of gradients (fc8, fc7) are ready within the first 3% of backward and fc6's 411 MB "
        "at about 19%, leaving the conv layers' backward to hide them. On 2 shared CPU cores the transport's copies "
        "and sums (MPI's shared-memory transport runs on the CPU) compete with the compute thread, so backward "
        "itself is slower on 2 ranks than on 1 (compare the backward times): the communication is hidden, but not "
        "for free. On GPUs NCCL runs on its own stream with a few SMs and the NVLink/IB engines.")
    add("")
    add("## 3. Training images/s on CPU (measured)")
    add("")
    add("The built-in preset (VGG-A at 1/4 width, fc 128, 32-pixel crops, 10 classes), global batch 32, synthetic "
        "batches, " + f"{ips1['steps']} steps:")
    add("")
    add("| ranks | threads per rank | images/s |")
    add("|---|---|---|")
    add(f"| 1 | {ips1['threads_per_rank']} | {ips1['images_per_s']:.0f} |")
    add(f"| 2 | {ips2['threads_per_rank']} | {ips2['images_per_s']:.0f} |")
    add("")
    add("Both rows use the same 2 cores, so data parallelism cannot gain here; it trades OpenMP threads for ranks. "
        "The 2-rank rate also pays two small collectives per step (batch sizes, loss check) and the bucket "
        "all-reduces, each of which waits until the other rank is scheduled: on cores shared with other jobs (see "
        "the load average above) that wait dominates this small model's step.")
    add("")
    add("## 4. Model: VGG-16 bf16 at 224 on 8 GPUs (NVLink) and 2 nodes x 8 GPUs (InfiniBand)")
    add("")
    flops = vgg16_flops_per_image()
    add(f"Compute per GPU: {PER_GPU_BATCH} images per GPU (the paper's 256 over 8), 3 x {flops / 1e9:.1f} GFLOP per "
        f"image (forward, data and weight gradients), at a fraction (MFU) of the {GPU_BF16_PEAK / 1e12:.0f} TFLOP/s "
        "bf16 dense peak of an H100/H200 SXM; forward 1/3 and backward 2/3 of it. vggcore has no measured GPU "
        "training throughput yet, so three MFUs are shown (a faster GPU step makes communication harder to hide).")
    add("Communication: the 277 MB of bf16 gradients in the measured buckets, each launched at its measured fraction "
        "of backward (section 2), reduced one after another, each taking latency + S x 2(n-1)/n / busbw (NCCL's "
        "bus-bandwidth convention). Exposed time = what is left after backward ends; efficiency = compute / (compute "
        "+ exposed). Optimizer and data loading are left out on both sides.")
    add("")
    add("| system | busbw | MFU | step compute ms | all-reduce ms (if serial) | exposed ms | efficiency |")
    add("|---|---|---|---|---|---|---|")
    systems = [("8 GPUs, NVLink 4 + NVSwitch", 8, NVLINK_BUSBW, NVLINK_LATENCY)]
    systems += [(f"2 nodes x 8 GPUs, IB: {k}", 16, v, IB_LATENCY) for k, v in IB_BUSBW.items()]
    eight = []
    for name, ranks, busbw, latency in systems:
        for mfu in GPU_MFU:
            eff, exp_s, comm_s, comp = model_step(fractions, overlap["bucket_bytes"], ranks, busbw, latency, mfu)
            if ranks == 8:
                eight.append(eff)
            add(f"| {name} | {busbw / 1e9:.0f} GB/s | {mfu:.0%} | {comp * 1e3:.2f} | {comm_s * 1e3:.2f} | "
                f"{exp_s * 1e3:.3f} | {eff:.1%} |")
    add("")
    add(f"Modelled efficiency at 8 GPUs: {min(eight):.1%} .. {max(eight):.1%} (>= 90% required).")
    add("")
    add("Bandwidths and their sources:")
    add("- NVLink 4 on H100/H200 SXM: 18 links, 900 GB/s bidirectional, 450 GB/s each way per GPU (NVIDIA's H100/H200 "
        "system descriptions, e.g. MLCommons inference v4.1 'H200-SXM-141GBx8' system file: '18x 4th Gen NVLink, "
        "900GB/s'; Scaleway H100-SXM docs). Measured: p2p 380 GB/s one way (NVIDIA/nccl issue #1264); nccl-tests "
        "all_reduce_perf bus bandwidth on 8x H100 SXM 460-480 GB/s at large sizes (Alaya NeW 'NCCL-tests in practice', "
        "2026). Model: 360 GB/s, 20 us per call.")
    add("- InfiniBand NDR: 400 Gb/s = 50 GB/s per NIC, one per GPU on DGX/HGX H100 (8 per node). Published 2-node "
        "all_reduce_perf bus bandwidth for H100/H200 SXM + NDR: 400-450 GB/s (Saturn Cloud, 'Validating multi-node "
        "GPU clusters with NCCL tests'); a 2-node H200 NVL system with 4 RoCE NICs per node: ~35 GB/s "
        "(kubernetes.recipes, 'NCCL all-reduce benchmarking on multi-node GPUs'). Model: 300 GB/s and a pessimistic "
        "40 GB/s, 50 us per call.")
    add("")
    add("What is measured and what is assumed: the bucket schedule (sizes, order, and when each is launched during a "
        "real backward of vggcore's autograd) and the CPU overlap are measured; GPU compute speed (MFU) and NCCL "
        "bandwidth are inputs taken from the sources above. The launch fractions carry over to a GPU to the extent "
        "that the per-layer share of backward time is similar on both (both follow the layers' FLOPs). To measure "
        "instead of model, run part 2 on the cluster (commands in bench/allreduce.py's header).")
    add("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("comm", "overlap", "ips"), default=None,
                        help="run one measurement (under mpirun); default: the driver, which runs them all")
    parser.add_argument("--json", default=None, help="where a part writes its result (rank 0)")
    parser.add_argument("--out", default=str(HERE / "results" / "allreduce.md"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--per-rank-batch", type=int, default=1)
    parser.add_argument("--bucket-mb", type=float, default=25.0)
    parser.add_argument("--from-json", default=None, help="a run's measurement folder: write the report only")
    args = parser.parse_args()
    if args.part is None:
        driver(args)
    else:
        if args.json is None:
            parser.error("--part needs --json")
        worker(args)


if __name__ == "__main__":
    main()
