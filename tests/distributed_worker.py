"""One rank of the data-parallel tests (tests/test_distributed.py), started by mpirun or as a plain process.

    python distributed_worker.py DATA OUT.npz [--epochs N] [--batch-size B] [--checkpoint-dir D] [--resume]
                                 [--die-at STEP] [--hang-at STEP] [--nan-at STEP]

Trains the tests' tiny VGG-A with vc.train and, on rank 0, writes the final parameters and the history to OUT.npz;
a rank whose vc.train raises writes the exception's type and message to OUT.npz.rankN.error first.
--die-at / --hang-at / --nan-at make rank 1 kill itself (SIGKILL), sleep forever or feed NaN images at its STEP-th
training step (counted over the whole run), to check that a dead or hung rank ends the job and that a NaN on one
rank stops every rank.
"""

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

import vggcore as vc
from vggcore import _parallel
from vggcore import distributed as dist

# The tests' net: VGG-A at 1/16 width with 16-wide FC layers and dropout 0.5 (so the masks are exercised), on
# 32-pixel crops with scale jittering, flips and the colour shift (so every augmentation is exercised).
NET = dict(config="A", width=1 / 16, fc_width=16, dropout=0.5, init="he", scale=(32, 36), crop=32, lr=0.02,
           momentum=0.9, weight_decay=5e-4, seed=3, device="cpu", num_workers=1, stats_sample=50)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--die-at", type=int, default=0)
    parser.add_argument("--hang-at", type=int, default=0)
    parser.add_argument("--nan-at", type=int, default=0)
    args = parser.parse_args()

    if args.die_at or args.hang_at or args.nan_at:
        step = _parallel.DataParallel.train_step
        calls = [0]

        def faulty_step(self, *a, **k):
            calls[0] += 1
            if self.group.rank == 1 and calls[0] == args.die_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if self.group.rank == 1 and calls[0] == args.hang_at:
                while True:
                    time.sleep(1)
            if self.group.rank == 1 and calls[0] == args.nan_at:
                a = (a[0], a[1], np.full_like(a[2], np.nan)) + a[3:]
            return step(self, *a, **k)

        _parallel.DataParallel.train_step = faulty_step

    try:
        result = vc.train(data=args.data, epochs=args.epochs, batch_size=args.batch_size,
                          checkpoint_dir=args.checkpoint_dir, resume=args.resume, verbose=True, progress=False,
                          **NET)
    except Exception as error:
        # Each rank writes its own error to OUT.rankN.error: mpirun merges the ranks' stderr streams without
        # regard to lines, so two tracebacks printed at once can interleave mid-line.
        rank = os.environ.get("OMPI_COMM_WORLD_RANK", "0")
        with open(f"{args.out}.rank{rank}.error", "w") as f:
            f.write(f"{type(error).__name__}: {error}\n")
        raise
    if dist.rank() == 0:
        params = {name: p.numpy() for name, p in result.model.named_parameters()}
        np.savez(args.out, history=json.dumps(result.history), world_size=dist.world_size(), **params)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
