"""tests/distributed_worker.py with device augmentation: one rank of tests/test_distributed_augment.py.

    python distributed_augment_worker.py [--device DEV] [--jpeg-bytes] DATA OUT.npz [distributed_worker's options]

Trains the data-parallel tests' net with ``device_augment=True`` on DEV (default cpu); with --jpeg-bytes the loader
leaves the baseline JPEGs as bytes, decoded into the packed buffer on the device by the CPU implementation of the
decoder interface (vggcore.decode.CpuJpegDecoder), the path nvJPEG takes on cuda.
"""

import sys

import distributed_worker

from vggcore import decode


def main():
    argv = sys.argv[1:]
    device = "cpu"
    if "--device" in argv:
        at = argv.index("--device")
        device = argv[at + 1]
        del argv[at:at + 2]
    jpeg_bytes = "--jpeg-bytes" in argv
    argv = [a for a in argv if a != "--jpeg-bytes"]
    distributed_worker.NET.update(device=device, device_augment=True,
                                  decode=decode.CpuJpegDecoder() if jpeg_bytes else "cpu")
    sys.argv = [sys.argv[0]] + argv
    distributed_worker.main()


if __name__ == "__main__":
    main()
