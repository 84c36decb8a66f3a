"""The training step of vc.train, eager against captured-and-replayed (``cuda_graph=True``), in one run.

    python bench/step_graph.py                          # cuda:0, VGG-A at width 1/4, 32-pixel crops, batch 32
    python bench/step_graph.py --batch 128 --precision bf16 --out bench/results/step-graph-<gpu>-<date>.md
    python bench/step_graph.py --device sim             # tiny shapes: checks that it runs; the times mean nothing

Both sides run the step exactly as the training loop does (vggcore/_graph_step.py): forward, loss, ``loss.item()``,
zero_grad, backward, SGD (momentum 0.9, weight decay 5e-4, dropout 0.5 on fc6 and fc7), the logits read back for
the error count; the graph side copies each batch into the graph's fixed input and labels first. The batches
live on the device already (no input pipeline), so the difference is the launch overhead a graph removes:
one graph launch for the forward and one for the update instead of one launch per kernel. Small layers are
where it pays, so the default net is thin and the images small. Both sides start from the same weights and
seed, so their losses must be bit-identical; the script says whether they are (a correctness check of the
CUDA graph on the first GPU run). Times: median of --reps timed bursts of --steps steps each, after warm-up.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def build(vc, args):
    from vggcore import models
    vc.manual_seed(0)
    model = models.vgg(args.config, num_classes=10, width=args.width, fc_width=args.fc_width,
                       input_size=args.crop, dropout=0.5, init="he")
    model.to(args.device)
    model.train()
    optimizer = vc.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    return model, optimizer


def run(vc, args, graphed):
    """(median ms per step, the losses of every step) for one side."""
    import contextlib
    from vggcore import _graph_step
    from vggcore.nn import functional as F
    model, optimizer = build(vc, args)
    compute = F.autocast("bfloat16") if args.precision == "bf16" else contextlib.nullcontext()
    step = _graph_step.GraphedStep(model, optimizer, args.device, compute, args.batch,
                                   warmup=_graph_step.WARMUP_STEPS if graphed else 10**9)
    rng = np.random.default_rng(1)
    batches = [(vc.tensor(rng.standard_normal((args.batch, args.crop, args.crop, 3)).astype(np.float32),
                          device=args.device), rng.integers(0, 10, args.batch)) for _ in range(4)]
    losses = []

    def one(i):
        x, y = batches[i % len(batches)]
        losses.append(step.forward(x, y))
        step.update()

    for i in range(args.warmup):
        one(i)
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        for i in range(args.steps):
            one(i)
        times.append((time.perf_counter() - t0) / args.steps * 1e3)
    if graphed and step.replays == 0:
        raise RuntimeError("step_graph: the graph side never replayed (warm-up too short?)")
    return statistics.median(times), losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda:0 (default) or sim")
    parser.add_argument("--config", default="A")
    parser.add_argument("--width", type=float, default=None, help="channel width factor (default 0.25; sim 1/16)")
    parser.add_argument("--fc-width", type=int, default=None, help="fc6/fc7 width (default 512; sim 16)")
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--batch", type=int, default=None, help="default 32 (sim 4)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed burst (default 20; sim 2)")
    parser.add_argument("--reps", type=int, default=None, help="timed bursts (default 5; sim 1)")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (the graph is captured in them)")
    parser.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32")
    parser.add_argument("--out", default=None, help="also write the markdown report here")
    args = parser.parse_args()

    import vggcore as vc
    if args.device is None:
        args.device = "cuda:0" if vc.cuda_available() else "sim"
    sim = args.device == "sim"
    args.width = args.width if args.width is not None else (1 / 16 if sim else 0.25)
    args.fc_width = args.fc_width if args.fc_width is not None else (16 if sim else 512)
    args.batch = args.batch if args.batch is not None else (4 if sim else 32)
    args.steps = args.steps if args.steps is not None else (2 if sim else 20)
    args.reps = args.reps if args.reps is not None else (1 if sim else 5)
    if args.warmup <= 2:
        parser.error("--warmup must exceed the 2 eager steps before the capture")
    if args.device == "cpu":
        parser.error("a graph needs device sim or cuda")
    if args.precision == "tf32":
        vc.set_float32_matmul_precision("high")

    eager_ms, eager_losses = run(vc, args, graphed=False)
    graph_ms, graph_losses = run(vc, args, graphed=True)
    same = eager_losses == graph_losses
    gpu = vc._C.cuda_device_name(int(args.device.split(":")[1])) if args.device.startswith("cuda") else ""
    lines = ["# Training step: eager vs CUDA graph (bench/step_graph.py)", ""]
    lines += common.header_lines(gpu)
    lines += ["", f"VGG-{args.config}, width {args.width:g}, fc {args.fc_width}, {args.crop}x{args.crop} crops, batch "
              f"{args.batch}, {args.precision}, device {args.device}; median of {args.reps} bursts of {args.steps} "
              "steps", ""]
    lines += common.markdown_table(
        ["step", "ms/step", "images/s"],
        [["eager", f"{eager_ms:.3f}", f"{args.batch / eager_ms * 1e3:.0f}"],
         ["graph replay", f"{graph_ms:.3f}", f"{args.batch / graph_ms * 1e3:.0f}"]],
        align="lrr").splitlines()
    lines += ["", f"eager / graph time: **{eager_ms / graph_ms:.2f}x**", "",
              f"losses of the {len(eager_losses)} steps bit-identical between the two: **{'yes' if same else 'NO'}**"]
    if sim:
        lines += ["", "On sim the times mean nothing: the emulator runs every launch on the CPU, so a replay costs "
                  "what the eager launches cost; only the losses' agreement is a result here."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
