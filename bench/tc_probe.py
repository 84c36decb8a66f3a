"""Fragment-layout probe: what mma.sync (tf32 m16n8k8, bf16 m16n8k16) and ldmatrix (.x4, .x4.trans) put in
each lane, printed per lane and checked against the PTX ISA tables that the emulator implements
(csrc/simt/tensor_core.cpp, csrc/cuda/mma.cuh).

    python bench/tc_probe.py --device cuda:0      # the hardware (first GPU run: confirms the emulator's tables)
    python bench/tc_probe.py --device sim         # the emulator's model (tests/test_tc_emulation.py runs this)

The probe kernel (csrc/cuda/tc_probe.cu) fills one operand's fragments with per-lane codes and makes the other
operand an identity matrix, so every element of D names the lane and register it came from. Exit status 0 when
every lane matches the tables, 1 otherwise (the mismatches are listed), 2 when the device is missing.
"""
import argparse
import sys

import numpy as np

KINDS = {0: "tf32 A", 1: "tf32 B", 2: "bf16 A (k < 8)", 3: "bf16 A (k >= 8)", 4: "bf16 B",
         5: "ldmatrix.x4", 6: "ldmatrix.x4.trans"}


def cd_positions(lane):
    """(row, col) of d0..d3 in lane's C/D fragment: (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)."""
    g, t = lane >> 2, lane & 3
    return [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)]


def tf32_a(r, k):
    """The code the probe gave A (r, k): lane 4*(r%8) + k%4, register (r >= 8) + 2*(k >= 4)."""
    lane, reg = 4 * (r % 8) + k % 4, (r >= 8) + 2 * (k >= 4)
    return 4 * lane + reg + 1


def tf32_b(k, n):
    lane, reg = 4 * n + k % 4, int(k >= 4)
    return 2 * lane + reg + 1


def bf16_a(r, k):
    """lane 4*(r%8) + (k%8)//2, register (r >= 8) + 2*(k >= 8), half k%2."""
    lane, reg, half = 4 * (r % 8) + (k % 8) // 2, (r >= 8) + 2 * (k >= 8), k % 2
    return 8 * lane + 2 * reg + half + 1


def bf16_b(k, n):
    lane, reg, half = 4 * n + (k % 8) // 2, int(k >= 8), k % 2
    return 4 * lane + 2 * reg + half + 1


def expected(kind):
    """32 x 4 expected words (float values for kinds 0-4, register bits for 5-6)."""
    out = np.zeros((32, 4), np.float64)
    for lane in range(32):
        for i, (r, n) in enumerate(cd_positions(lane)):
            if kind == 0:
                out[lane, i] = tf32_a(r, n)
            elif kind == 1:
                out[lane, i] = tf32_b(r, n) if r < 8 else 0
            elif kind == 2:
                out[lane, i] = bf16_a(r, n)
            elif kind == 3:
                out[lane, i] = bf16_a(r, n + 8)
            elif kind == 4:
                out[lane, i] = bf16_b(r, n)
        if kind in (5, 6):
            for m in range(4):
                if kind == 5:   # row lane//4, columns 2(lane%4), +1
                    r, c = lane // 4, 2 * (lane % 4)
                    lo, hi = 1000 * m + 10 * r + c, 1000 * m + 10 * r + c + 1
                else:           # rows 2(lane%4), +1 of column lane//4
                    r, c = 2 * (lane % 4), lane // 4
                    lo, hi = 1000 * m + 10 * r + c, 1000 * m + 10 * (r + 1) + c
                out[lane, m] = lo | (hi << 16)
    return out


def decode(kind, words):
    words = np.asarray(words, np.uint32).reshape(32, 4)
    if kind in (5, 6):
        return words.astype(np.float64)
    return words.view(np.float32).astype(np.float64)


def probe(device, kind):
    import vggcore as vc
    return decode(kind, vc._C._tc_probe(device, kind))


def describe(kind, value):
    if kind in (5, 6):
        v = int(value)
        return f"{v & 0xFFFF}|{v >> 16}"
    return f"{value:g}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--quiet", action="store_true", help="only the summary and the mismatches")
    args = ap.parse_args(argv)
    try:
        import vggcore as vc
    except ImportError as error:
        print(f"tc_probe.py: vggcore is not importable: {error}", file=sys.stderr)
        return 2
    if args.device not in vc.devices():
        print(f"tc_probe.py: device {args.device!r} not in vggcore.devices() = {vc.devices()}", file=sys.stderr)
        return 2
    bad = 0
    for kind, name in KINDS.items():
        got, want = probe(args.device, kind), expected(kind)
        mismatches = [(lane, i) for lane in range(32) for i in range(4) if got[lane, i] != want[lane, i]]
        bad += len(mismatches)
        print(f"== {name}: {'matches the PTX ISA tables' if not mismatches else f'{len(mismatches)} MISMATCHES'}")
        if not args.quiet:
            for lane in range(32):
                cells = " ".join(f"{describe(kind, v):>9}" for v in got[lane])
                print(f"   lane {lane:2d}: {cells}")
        for lane, i in mismatches[:32]:
            print(f"   MISMATCH lane {lane} word {i}: hardware {describe(kind, got[lane, i])}, "
                  f"tables {describe(kind, want[lane, i])}")
    print(f"tc_probe on {args.device}: {'all lanes match' if bad == 0 else f'{bad} mismatching words'}")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
