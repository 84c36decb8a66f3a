"""CPU convolution benchmark: vggcore's conv2d against PyTorch CPU (oneDNN) on the VGG-16 3x3 layers.

    python bench/cpu_conv.py [--batch 4] [--size 224] [--layers conv1_2,conv3_1] [--threads 2]
                             [--pass fwd,fwdbwd] [--repeats 5] [--out bench/results/cpu_conv_<date>.md]
                             [--network [A:32:128,D:224:8]] [--no-layers]

For each layer it validates our output (and, for fwd+bwd, the input and weight gradients) against PyTorch
before timing, then times both libraries in this process with the same thread count: a warm-up, then the
median of --repeats runs. PyTorch runs in NCHW and in channels_last and the faster layout is reported.
FLOPs: forward 2*N*P*Q*K*R*S*C; forward+backward counts three times that (data and weight gradients).

--network adds whole training steps (forward, cross-entropy, backward, SGD with momentum 0.9 and weight decay
5e-4) of VGG configurations, each given as config:size:batch (default A and D at 32 px batch 128 and at 224 px
batch 8), in images/s: vggcore.models.vgg against the same network written by hand in PyTorch, channels_last.
At 32 px the classifier is CIFAR-sized (fc width 512, 10 classes); at 224 px it is the paper's (4096, 1000).
VGG_CONV_ALGO=gemm|winograd4|winograd2|direct forces one convolution path in vggcore (default: the heuristic).
"""

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

# (name, C in, K out, spatial size at input 224); conv5_1..5_3 share one shape
VGG16_LAYERS = [
    ("conv1_1", 3, 64, 224), ("conv1_2", 64, 64, 224),
    ("conv2_1", 64, 128, 112), ("conv2_2", 128, 128, 112),
    ("conv3_1", 128, 256, 56), ("conv3_2", 256, 256, 56),
    ("conv4_1", 256, 512, 28), ("conv4_2", 512, 512, 28),
    ("conv5_x", 512, 512, 14),
]


def median_ms(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def rel_err(ours, ref):
    return float(np.max(np.abs(ours - ref)) / max(1.0, float(np.max(np.abs(ref)))))


def machine_header(threads):
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    return (f"machine: {cpu}, {os.cpu_count()} logical cores; threads: {threads}; commit: {commit}; "
            f"date: {datetime.date.today().isoformat()}")


# conv widths per stage for the configurations the network mode knows ("M" = 2x2 max-pool)
NET_CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def torch_vgg(torch, config, size, fc_width, classes):
    nn = torch.nn
    layers, c = [], 3
    for v in NET_CONFIGS[config]:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    side = size // 32
    layers += [nn.Flatten(), nn.Linear(c * side * side, fc_width), nn.ReLU(inplace=True), nn.Dropout(0.5),
               nn.Linear(fc_width, fc_width), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(fc_width, classes)]
    return nn.Sequential(*layers).to(memory_format=torch.channels_last)


def network_rows(spec, repeats, torch, vc, F):
    """One table row per config:size:batch: training-step images/s of vggcore and PyTorch."""
    rows = []
    for item in spec.split(","):
        config, size, batch = item.split(":")
        size, batch = int(size), int(batch)
        fc_width, classes = (512, 10) if size < 64 else (4096, 1000)
        rng = np.random.default_rng(0)
        images = rng.standard_normal((batch, size, size, 3), dtype=np.float32)
        labels = rng.integers(0, classes, batch)

        if hasattr(vc, "models") and hasattr(vc.models, "vgg"):
            model = vc.models.vgg(config, num_classes=classes, fc_width=fc_width, input_size=size)
            model.train()
            opt = vc.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
            xv, yv = vc.tensor(images), vc.tensor(labels)

            def ours():
                opt.zero_grad()
                F.cross_entropy(model(xv), yv).backward()
                opt.step()
        else:
            sys.exit("--network needs vggcore.models.vgg")

        net = torch_vgg(torch, config, size, fc_width, classes)
        net.train()
        topt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
        xt = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        yt = torch.from_numpy(labels)

        def theirs():
            topt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt), yt).backward()
            topt.step()

        our_ms = median_ms(ours, repeats)
        torch_ms = median_ms(theirs, repeats)
        rows.append(f"| {config} | {size} | {batch} | {batch / our_ms * 1e3:.1f} | {batch / torch_ms * 1e3:.1f} | "
                    f"{our_ms / torch_ms:.2f} |")
        print(rows[-1], flush=True)
    return rows


START_LOAD = os.getloadavg()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=224, help="input image size; layers scale with it (e.g. 112)")
    ap.add_argument("--layers", default="", help="comma-separated layer names (default: all)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--pass", dest="passes", default="fwd,fwdbwd", help="fwd, fwdbwd or both")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="", help="also write the table (with a machine header) to this file")
    ap.add_argument("--network", nargs="?", const="A:32:128,D:32:128,A:224:8,D:224:8", default="",
                    help="also time training steps of whole networks, config:size:batch[,...]")
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    args = ap.parse_args()

    # our OpenMP pool reads this when the library loads: set it before importing vggcore
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    import vggcore as vc
    import vggcore.nn.functional as F

    torch.set_num_threads(args.threads)
    wanted = [s for s in args.layers.split(",") if s]
    layers = [] if args.no_layers else [l for l in VGG16_LAYERS if not wanted or l[0] in wanted]
    unknown = set(wanted) - {l[0] for l in VGG16_LAYERS}
    if unknown:
        sys.exit(f"unknown layers: {sorted(unknown)}; choose from {[l[0] for l in VGG16_LAYERS]}")
    passes = [p for p in args.passes.split(",") if p]
    rng = np.random.default_rng(0)

    rows, ratios = [], []
    for name, C, K, size224 in layers:
        H = max(1, size224 * args.size // 224)
        N = args.batch
        x = rng.standard_normal((N, H, H, C), dtype=np.float32)
        w = rng.standard_normal((K, 3, 3, C), dtype=np.float32) * np.float32(1.0 / math.sqrt(9 * C))
        dy = rng.standard_normal((N, H, H, K), dtype=np.float32)
        flops = 2.0 * N * H * H * K * 9 * C
        shape = f"{N}x{H}x{H}x{C} -> {K}"

        # PyTorch in both layouts; tensors made once, outside the timed region
        xt_nchw = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        wt_nchw = torch.from_numpy(w).permute(0, 3, 1, 2).contiguous()
        dyt_nchw = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous()
        torch_inputs = {
            "NCHW": (xt_nchw, wt_nchw, dyt_nchw),
            "channels_last": tuple(t.contiguous(memory_format=torch.channels_last)
                                   for t in (xt_nchw, wt_nchw, dyt_nchw)),
        }

        xv = vc.tensor(x, requires_grad=True)
        wv = vc.tensor(w, requires_grad=True)
        dyv = vc.tensor(dy)

        for p in passes:
            if p == "fwd":
                def ours():
                    with vc.no_grad():
                        return F.conv2d(xv, wv, stride=1, padding=1)

                def theirs(xt, wt, dyt):
                    with torch.no_grad():
                        return torch.nn.functional.conv2d(xt, wt, padding=1)

                ref = torch.nn.functional.conv2d(xt_nchw, wt_nchw, padding=1).permute(0, 2, 3, 1).numpy()
                err = rel_err(ours().numpy(), ref)
                pass_flops = flops
            elif p == "fwdbwd":
                def ours():
                    xv.grad = None
                    wv.grad = None
                    F.conv2d(xv, wv, stride=1, padding=1).backward(dyv)

                def theirs(xt, wt, dyt):
                    xg = xt.detach().requires_grad_(True)
                    wg = wt.detach().requires_grad_(True)
                    torch.nn.functional.conv2d(xg, wg, padding=1).backward(dyt)
                    return xg.grad, wg.grad

                dxt, dwt = theirs(*torch_inputs["NCHW"])
                ours()
                err = max(rel_err(xv.grad.numpy(), dxt.permute(0, 2, 3, 1).numpy()),
                          rel_err(wv.grad.numpy(), dwt.permute(0, 2, 3, 1).numpy()))
                pass_flops = 3 * flops
            else:
                sys.exit(f"unknown pass {p!r}: use fwd or fwdbwd")
            if not err < 1e-4:
                sys.exit(f"{name} {p}: vggcore differs from PyTorch, relative error {err:.2e}")

            our_ms = median_ms(ours, args.repeats)
            torch_ms, layout = min((median_ms(lambda: theirs(*ins), args.repeats), lay)
                                   for lay, ins in torch_inputs.items())
            ratio = our_ms / torch_ms
            ratios.append(ratio)
            rows.append(f"| {name} | {shape} | {p} | {our_ms:.2f} | {pass_flops / our_ms / 1e6:.1f} | "
                        f"{torch_ms:.2f} | {pass_flops / torch_ms / 1e6:.1f} | {layout} | {ratio:.2f} |")
            print(rows[-1], flush=True)

    net_rows = network_rows(args.network, max(1, args.repeats // 2), torch, vc, F) if args.network else []

    header = machine_header(args.threads)
    load = "load average at start: {:.2f} {:.2f} {:.2f}".format(*START_LOAD)
    table = [f"CPU conv2d, vggcore vs PyTorch {torch.__version__} (batch {args.batch}, input {args.size}, "
             f"fp32, 3x3 pad 1); {header}; {load}; "
             f"VGG_CONV_ALGO={os.environ.get('VGG_CONV_ALGO', 'auto')}", "",
             "| layer | shape (NHWC -> K) | pass | ours ms | ours GFLOP/s | torch ms | torch GFLOP/s | torch layout "
             "| ratio (ours/torch) |",
             "|---|---|---|---|---|---|---|---|---|", *rows]
    if ratios:
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        table += ["", f"geometric mean ratio (ours/torch, lower is better): {geo:.2f}"]
        for p in passes:
            pr = [r for r, row in zip(ratios, rows) if f" | {p} | " in row]
            if pr:
                table.append(f"- {p}: {math.exp(sum(math.log(r) for r in pr) / len(pr)):.2f}")
    if net_rows:
        table += ["", "Training step (forward, cross-entropy, backward, SGD momentum 0.9), images/s; PyTorch "
                  "channels_last; 32 px nets have fc width 512 and 10 classes, 224 px the paper's 4096 and 1000.", "",
                  "| config | size | batch | ours img/s | torch img/s | time ratio (ours/torch) |",
                  "|---|---|---|---|---|---|", *net_rows]
    table += ["", "load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())]
    text = "\n".join(table) + "\n"
    print()
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
