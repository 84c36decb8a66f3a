"""GPU convolution benchmark: vggcore's conv kernels against cuDNN (through PyTorch), layer by layer and pass
by pass, on the VGG-16 conv layers and config C's 1x1 layers, plus images/s of a whole VGG-16 training step.

    python bench/conv.py                          # cuda:0, batch 32 and 128, layers and whole network
    python bench/conv.py --batch 128 --no-net --out bench/results/conv-h100.md
    python bench/conv.py --device sim --quick     # tiny shapes on the emulator, checked against NumPy (CI)
    python bench/conv.py --precision tf32         # ours on TF32 tensor cores against cuDNN with TF32 on
    python bench/conv.py --precision bf16         # ours on BF16 tensor cores against cuDNN bf16 channels_last

Precisions (--precision, one per run; each side in the same precision):
    fp32  ours: float32 CUDA-core kernels ("highest");   cuDNN: fp32 with TF32 off
    tf32  ours: vc.set_float32_matmul_precision("high"); cuDNN: fp32 tensors with TF32 allowed
    bf16  ours: the bf16 kernels on bf16 buffers (_C._bf16_run: the interface that bf16 tensors dispatch to);
          cuDNN: bfloat16 channels_last tensors. Both get the same bf16-rounded inputs.

What is compared. Our side calls the engine's raw kernels, vggcore._C.conv2d_forward / conv2d_backward_data /
conv2d_backward_weight, on engine tensors (NHWC activations, KRSC weights). The baseline ("kernel 0") is
cuDNN through PyTorch: torch.backends.cudnn.benchmark = True, fp32 with TF32 off (cudnn conv and matmul
fp32_precision "ieee", or the legacy allow_tf32 flags on older PyTorch), channels_last tensors so that both
sides read and write the same NHWC bytes; the backward passes go through torch.ops.aten.convolution_backward
with an output mask asking for one gradient, so each pass is timed alone. Every layer is 3x3 pad 1 or 1x1
pad 0, stride 1.

Validation before timing. Each pass's output, ours and cuDNN's, is compared with a float64 reference computed
from the same float32 inputs (PyTorch in float64 on the GPU; NumPy in --quick mode) by
max|out - ref| / max|ref|. Ours above --tol (1e-4) fails that layer loudly: it is not timed, the run goes on
with the next layer and exits nonzero.

Timing. vggcore runs its kernels on its own non-blocking CUDA stream, which PyTorch's events cannot
bracket, so both sides are timed the same way, in bursts: synchronise the device, read the host clock,
launch `iters` calls back to back, synchronise, read the clock; one sample is the elapsed time over iters,
and the result is the median of --reps bursts after a warm-up (which also lets cudnn.benchmark pick its
algorithms). iters is chosen so one burst lasts about --burst-ms, so the one synchronisation per burst costs
well under 1%. Our synchronisation is a read of a one-element engine tensor (a stream synchronise on
vggcore's stream) after torch.cuda.synchronize(). cuDNN's bursts are also timed with CUDA events on
PyTorch's stream; that column checks that the wall-clock method measures device time. Each call reads the
next of several input sets (rotated round-robin, enough sets to span 4x the L2 cache), so no side reads
inputs that the previous call left in L2.

FLOPs per pass: 2*N*P*Q*K*R*S*C (the same for forward, backward-data and backward-weight). The ratio is
ours/cuDNN in time: below 1 means we are faster. % of peak is against the GPU's fp32 non-tensor peak (a small
table of datasheet values in bench/common.py; --peak-tflops overrides).

Each section (layers at one batch size, a whole network on one side) runs in a child process of this
script, so each starts with empty allocator caches and a failure in one does not stop the others.
Exit status: 0 all good; 1 a validation failure or a failed section; 2 the device or a dependency is missing.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

# default --tol per precision: max|ours - ref| / max|ref| against float64 from the float32 inputs. TF32 rounds
# each operand to 10 mantissa bits (2^-11 relative), BF16 to 7 (2^-8) and its output once more.
DEFAULT_TOL = {"fp32": 1e-4, "tf32": 5e-3, "bf16": 3e-2}

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (conv_flops, fmt, geomean, header_lines, markdown_table, measure_bursts,  # noqa: E402
                    peak_tflops)
# The NumPy float64 oracle of --quick mode is the test suite's (tests/reference.py): one reference for both.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import reference  # noqa: E402

# (name, C in, K out, H = W at 224 input, kernel R = S, how many layers of VGG-16 / config C share the shape)
VGG16_LAYERS = [
    ("conv1_1", 3, 64, 224, 3, 1),
    ("conv1_2", 64, 64, 224, 3, 1),
    ("conv2_1", 64, 128, 112, 3, 1),
    ("conv2_2", 128, 128, 112, 3, 1),
    ("conv3_1", 128, 256, 56, 3, 1),
    ("conv3_2/3_3", 256, 256, 56, 3, 2),
    ("conv4_1", 256, 512, 28, 3, 1),
    ("conv4_2/4_3", 512, 512, 28, 3, 2),
    ("conv5_1/5_2/5_3", 512, 512, 14, 3, 3),
    ("C conv3_3 1x1", 256, 256, 56, 1, 1),
    ("C conv4_3 1x1", 512, 512, 28, 1, 1),
    ("C conv5_3 1x1", 512, 512, 14, 1, 1),
]
# --quick: tiny shapes that the emulator runs in seconds; C=3 and a 1x1 as in the real list.
QUICK_LAYERS = [
    ("tiny 3x3", 8, 16, 8, 3, 1),
    ("tiny first 3x3", 3, 8, 8, 3, 1),
    ("tiny 1x1", 16, 16, 8, 1, 1),
]
PASSES = ("fwd", "dgrad", "wgrad")
PASS_NAMES = {"fwd": "forward", "dgrad": "backward-data", "wgrad": "backward-weight"}
NET_CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
# whole-network settings: full size, and the --quick net (VGG-16 at width 1/8, 32x32 input) for the emulator
NET_FULL = dict(num_classes=1000, width=1.0, fc_width=4096, input_size=224)
NET_QUICK = dict(num_classes=10, width=0.125, fc_width=32, input_size=32)


class SetupError(Exception):
    """The device or a dependency is missing: exit 2 with this message."""


def log(*parts):
    print(*parts, flush=True)


# ---- the two sides -------------------------------------------------------------------------------------------

def import_torch(required, device):
    try:
        import torch
    except ImportError:
        if required:
            raise SetupError(f"PyTorch is needed as the baseline on {device} but is not installed "
                             "(run with --device sim --quick for the emulator check without it)") from None
        return None
    if required and device.startswith("cuda") and not torch.cuda.is_available():
        raise SetupError(f"PyTorch {torch.__version__} is installed but sees no GPU (torch.cuda.is_available() "
                         f"is False; built for CUDA {torch.version.cuda}): the cuDNN baseline cannot run")
    return torch


def torch_precision(torch, precision):
    """cuDNN's settings for --precision; returns their description."""
    if precision == "fp32":
        return torch_fp32_strict(torch)
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    torch.backends.cudnn.benchmark = True
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):
        cudnn_conv.fp32_precision = "tf32"
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        state = f"cudnn.conv.fp32_precision={cudnn_conv.fp32_precision}"
    else:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True
        state = f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"
    if precision == "bf16":
        state = "bfloat16 tensors (float32 accumulation inside cuDNN), " + state
    return state + ", cudnn.benchmark=True"


def torch_fp32_strict(torch):
    """fp32 with TF32 off for cuDNN convolutions and matmuls; returns a description of the state set."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    if cudnn_conv is not None and hasattr(cudnn_conv, "fp32_precision"):
        # PyTorch >= 2.9: the fp32_precision API, which replaces the deprecated allow_tf32 flags
        cudnn_conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        state = (f"cudnn.conv.fp32_precision={cudnn_conv.fp32_precision}, "
                 f"cuda.matmul.fp32_precision={torch.backends.cuda.matmul.fp32_precision}")
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        state = (f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
                 f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
    torch.backends.cudnn.benchmark = True
    return state + ", cudnn.benchmark=True"


class Ours:
    """vggcore's raw conv kernels on engine tensors (fp32, tf32), or on bf16 buffers (bf16)."""

    def __init__(self, device, torch=None, precision="fp32"):
        import vggcore as vc
        self.C = vc._C
        self.device = device
        self.precision = precision
        self.torch_cuda = torch is not None and device.startswith("cuda")
        self.C.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
        # one element on our device: reading it synchronises vggcore's stream (numpy() syncs)
        self._probe = self.C.full([1], 0.0, "float32", device)

    def upload(self, array):
        t = self.C.Tensor.from_numpy(np.ascontiguousarray(array, dtype=np.float32), self.device)
        if self.precision == "bf16":
            return (self.C._bf16_from_float(t), list(array.shape))
        return t

    def variants(self, base, count):
        """base and count-1 scaled copies made on the device (distinct buffers, no host traffic)."""
        if self.precision == "bf16":   # via float32 on the way (setup only)
            buf, shape = base
            f = self.C._bf16_to_float(buf, shape)
            return [base] + [(self.C._bf16_from_float(self.C.scale(f, 1.0 + i / 16.0)), shape)
                             for i in range(1, count)]
        return [base] + [self.C.scale(base, 1.0 + i / 16.0) for i in range(1, count)]

    def event_ms(self, call, nbuf, iters):
        """CUDA-event time per call on vggcore's stream (sim: wall clock), rotating the buffer sets."""
        state = {"i": 0}

        def one():
            call(state["i"] % nbuf)
            state["i"] += 1
        return self.C._stream_time_ms(self.device, one, max(1, int(iters)))

    def sync(self):
        if self.torch_cuda:
            import torch
            torch.cuda.synchronize()
        self._probe.numpy()

    def fwd(self, x, w, pad):
        if self.precision == "bf16":
            return self.C._bf16_run("conv2d_forward", x[0], x[1], w[0], w[1], None, [], 1, pad)
        return self.C.conv2d_forward(x, w, None, 1, pad)

    def dgrad(self, dy, w, x_shape, pad):
        if self.precision == "bf16":
            return self.C._bf16_run("conv2d_backward_data", dy[0], dy[1], w[0], w[1], None, list(x_shape), 1, pad)
        return self.C.conv2d_backward_data(dy, w, list(x_shape), 1, pad)

    def wgrad(self, x, dy, w_shape, pad):
        if self.precision == "bf16":
            return self.C._bf16_run("conv2d_backward_weight", x[0], x[1], dy[0], dy[1], None, list(w_shape), 1, pad)
        return self.C.conv2d_backward_weight(x, dy, list(w_shape), 1, pad)

    def numpy(self, t):
        if self.precision == "bf16":
            return self.C._bf16_to_float(t[0], t[1]).numpy()
        return t.numpy()


class TorchConv:
    """cuDNN (or PyTorch CPU in --quick mode) on NHWC tensors viewed as channels_last NCHW."""

    def __init__(self, torch, device, dtype=None):
        self.torch = torch
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.is_cuda = self.device.type == "cuda"

    def upload(self, array):
        """An NHWC (or KRSC) array -> the same bytes as an NCHW (KCRS) channels_last tensor."""
        t = self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device, self.dtype)
        return t.permute(0, 3, 1, 2)

    def variants(self, base, count):
        # scale the NHWC-contiguous storage, then view again: the copies stay channels_last
        nhwc = base.permute(0, 2, 3, 1)
        return [base] + [(nhwc * (1.0 + i / 16.0)).permute(0, 3, 1, 2) for i in range(1, count)]

    def sync(self):
        if self.is_cuda:
            self.torch.cuda.synchronize()

    def events(self):
        return (self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True))

    def fwd(self, x, w, pad):
        return self.torch.nn.functional.conv2d(x, w, None, 1, pad)

    def _backward(self, dy, x, w, pad, mask):
        return self.torch.ops.aten.convolution_backward(dy, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0],
                                                        1, mask)

    def dgrad(self, dy, x, w, pad):
        return self._backward(dy, x, w, pad, [True, False, False])[0]

    def wgrad(self, x, dy, w, pad):
        return self._backward(dy, x, w, pad, [False, True, False])[1]

    @staticmethod
    def numpy(t):
        """NCHW/KCRS (any memory format) -> a float64 NHWC/KRSC array."""
        return t.permute(0, 2, 3, 1).double().cpu().numpy()


def rel_err_np(out, ref):
    scale = float(np.max(np.abs(ref)))
    err = float(np.max(np.abs(np.asarray(out, dtype=np.float64) - ref)))
    return err / scale if scale > 0 else err


# ---- child: one batch size, every layer and pass --------------------------------------------------------------

def device_info(args, torch):
    info = {"device": args.device}
    try:
        import vggcore as vc
        info["vggcore_devices"] = list(vc.devices())
        if args.device.startswith("cuda"):
            info["vggcore_device_name"] = vc._C.cuda_device_name(int(args.device.partition(":")[2] or 0))
    except Exception as error:  # noqa: BLE001 - reported, not fatal for the header
        info["vggcore_error"] = str(error)
    if torch is not None:
        info["torch"] = torch.__version__
        if args.device.startswith("cuda"):
            index = torch.device(args.device).index or 0
            props = torch.cuda.get_device_properties(index)
            info.update(gpu=torch.cuda.get_device_name(index), torch_cuda=torch.version.cuda,
                        cudnn=torch.backends.cudnn.version(), sm_count=props.multi_processor_count,
                        l2_bytes=getattr(props, "L2_cache_size", 0), gpu_mem_gib=props.total_memory / 2**30)
    return info


class Results:
    """The child's JSON file, rewritten after every row so a killed child still leaves what it measured."""

    def __init__(self, path, info):
        self.path = path
        self.data = {"info": info, "rows": [], "net": None, "errors": []}
        self.save()

    def save(self):
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
        os.replace(tmp, self.path)


def random_array(torch, shape, seed, device):
    """Uniform(-1, 1) float32, drawn on the GPU when there is one (host RNG is slow at these sizes)."""
    if torch is not None and device.startswith("cuda"):
        g = torch.Generator(device=device).manual_seed(seed)
        return (torch.rand(shape, generator=g, device=device) * 2 - 1).cpu().numpy()
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)


def run_layers(args, results, torch):
    """Validate, then time, every layer and pass at one batch size."""
    dev = args.device
    on_gpu = dev.startswith("cuda")
    ctx = argparse.Namespace(args=args, torch=torch, dev=dev, on_gpu=on_gpu,
                             ours=Ours(dev, torch, args.precision), base=None, ref64=None)
    if torch is not None:
        results.data["info"]["precision"] = torch_precision(torch, args.precision)
        # PyTorch CPU (--quick) stays float32 for bf16: it only exercises the code path, its numbers mean nothing
        base_dtype = torch.bfloat16 if args.precision == "bf16" and on_gpu else torch.float32
        if not on_gpu:
            results.data["info"]["precision"] = "PyTorch CPU float32 (--quick: exercises the code path only)"
        ctx.base = TorchConv(torch, dev if on_gpu else "cpu", base_dtype)
        if on_gpu:
            torch.cuda.set_device(torch.device(dev))   # events record on the current device's stream
            ctx.ref64 = TorchConv(torch, dev, torch.float64)
    ctx.l2 = results.data["info"].get("l2_bytes") or 50 * 2**20
    layers = QUICK_LAYERS if args.quick else VGG16_LAYERS
    if args.layers:
        wanted = set(args.layers.split(","))
        layers = [layer for layer in layers if layer[0] in wanted]
    failed = 0
    for index, layer in enumerate(layers):
        name, c, k, hw, rs, count = layer
        n = args.batch
        rows = {p: dict(layer=name, C=c, K=k, H=hw, R=rs, count=count, batch=n, pass_=p, status="ok",
                        flops=conv_flops(n, hw, hw, k, rs, rs, c)) for p in PASSES}
        if args.deadline and time.time() > args.deadline:
            for row in rows.values():
                row["status"] = "skipped: time budget spent"
        else:
            log(f"[batch {n}] {name}: C={c} K={k} {hw}x{hw} {rs}x{rs}")
            failed += bench_layer(ctx, layer, index, rows)
        results.data["rows"] += rows.values()
        results.save()
        if on_gpu:
            torch.cuda.empty_cache()
    return failed


def bf16_round(a):
    """float32 -> the nearest bfloat16 value (ties to even), still as float32."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


def rel_err(torch, out, ref):
    """max |out - ref| / max |ref| in float64; ref is a NumPy array or a torch tensor (compared where it lives)."""
    if isinstance(ref, np.ndarray):
        return rel_err_np(out if isinstance(out, np.ndarray) else out.double().cpu().numpy(), ref)
    out = torch.from_numpy(out) if isinstance(out, np.ndarray) else out
    out = out.to(ref.device, torch.float64)
    scale = ref.abs().max().item()
    err = (out - ref).abs().max().item()
    return err / scale if scale > 0 else err


def float64_reference(ctx, x, w, dy, pad, x_shape, w_shape):
    """Each pass's result in float64 from the float32 inputs, as NHWC/KRSC; None when it cannot be computed."""
    if ctx.ref64 is None:
        x64, w64, dy64 = x.astype(np.float64), w.astype(np.float64), dy.astype(np.float64)
        dx, dw, _ = reference.conv2d_backward(x64, w64, dy64, 1, pad)
        return {"fwd": reference.conv2d(x64, w64, None, 1, pad), "dgrad": dx, "wgrad": dw}
    torch, ref64 = ctx.torch, ctx.ref64
    try:
        torch.backends.cudnn.benchmark = False   # no autotuning for the one float64 call of each pass
        rx, rw, rdy = ref64.upload(x), ref64.upload(w), ref64.upload(dy)
        refs = {"fwd": ref64.fwd(rx, rw, pad), "dgrad": ref64.dgrad(rdy, rx, rw, pad),
                "wgrad": ref64.wgrad(rx, rdy, rw, pad)}
        return {p: r.permute(0, 2, 3, 1) for p, r in refs.items()}
    except RuntimeError as error:   # out of memory, or no float64 kernel: cuDNN fp32 becomes the reference
        log(f"  float64 reference failed ({str(error).splitlines()[0]}); comparing with cuDNN fp32")
        return None
    finally:
        torch.backends.cudnn.benchmark = True


def bench_layer(ctx, layer, index, rows):
    """Validate and time the three passes of one layer; fills rows, returns the number of failed passes."""
    args, torch, dev, ours, base = ctx.args, ctx.torch, ctx.dev, ctx.ours, ctx.base
    name, c, k, hw, rs, count = layer
    n, pad = args.batch, rs // 2
    x_shape, w_shape, y_shape = (n, hw, hw, c), (k, rs, rs, c), (n, hw, hw, k)
    out_shape = {"fwd": y_shape, "dgrad": x_shape, "wgrad": w_shape}
    x = random_array(torch, x_shape, 3 * index + 1, dev)
    w = random_array(torch, w_shape, 3 * index + 2, dev)
    dy = random_array(torch, y_shape, 3 * index + 3, dev)
    if args.precision == "bf16":   # both sides see the same bf16 values; the reference is exact from them
        x, w, dy = (bf16_round(a) for a in (x, w, dy))
    set_bytes = 4 * (x.size + w.size + dy.size)
    nbuf = int(min(8, max(2, math.ceil(4 * ctx.l2 / set_bytes)))) if ctx.on_gpu else 2
    refs = float64_reference(ctx, x, w, dy, pad, x_shape, w_shape)

    # buffer set 0 holds the validated inputs; sets 1.. are scaled copies made on each side's device
    oxs, ows, odys = (ours.variants(ours.upload(a), nbuf) for a in (x, w, dy))
    ours_call = {"fwd": lambda i: ours.fwd(oxs[i], ows[i], pad),
                 "dgrad": lambda i: ours.dgrad(odys[i], ows[i], x_shape, pad),
                 "wgrad": lambda i: ours.wgrad(oxs[i], odys[i], w_shape, pad)}
    base_call = {}
    if base is not None:
        txs, tws, tdys = (base.variants(base.upload(a), nbuf) for a in (x, w, dy))
        base_call = {"fwd": lambda i: base.fwd(txs[i], tws[i], pad),
                     "dgrad": lambda i: base.dgrad(tdys[i], txs[i], tws[i], pad),
                     "wgrad": lambda i: base.wgrad(txs[i], tdys[i], tws[i], pad)}
    del x, w, dy

    failed = 0
    for p in PASSES:
        row = rows[p]
        row["nbuf"] = nbuf
        try:   # validation first; a pass that fails it is not timed
            base_nhwc = base_call[p](0).permute(0, 2, 3, 1) if base is not None else None
            if refs is not None:
                ref = refs[p]
                if base_nhwc is not None:
                    row["err_ref"] = rel_err(torch, base_nhwc, ref)
            else:
                ref = base_nhwc.double()
                row["reference"] = "cuDNN fp32"
            got = ours.numpy(ours_call[p](0))
            if tuple(got.shape) != out_shape[p]:
                raise AssertionError(f"ours returned shape {tuple(got.shape)}, expected {out_shape[p]}")
            row["err_ours"] = rel_err(torch, got, ref)
            del got, base_nhwc, ref
            if not math.isfinite(row["err_ours"]) or row["err_ours"] > args.tol:
                raise AssertionError(f"relative error {row['err_ours']:.3g} > tolerance {args.tol:g} "
                                     f"(max |ours - ref| / max |ref|)")
        except Exception as error:  # noqa: BLE001 - any failure of one pass is recorded, the run goes on
            row["status"] = f"FAILED validation: {type(error).__name__}: {error}"
            failed += 1
            log(f"  {p}: {row['status']}")
            if not isinstance(error, AssertionError):
                traceback.print_exc()
    del refs

    for p in PASSES:
        row = rows[p]
        if row["status"] != "ok":
            continue
        try:
            for call in filter(None, (ours_call[p], base_call.get(p))):   # warm-up over every buffer set
                for i in range(nbuf):
                    call(i)
            ours.sync()
            if base is not None:
                base.sync()
                row["ref_ms"], row["ref_event_ms"], _ = measure_bursts(
                    base_call[p], base.sync, nbuf, args.burst_ms, args.reps,
                    events=base.events if base.is_cuda else None)
            row["ours_ms"], _, row["iters"] = measure_bursts(ours_call[p], ours.sync, nbuf, args.burst_ms,
                                                             args.reps)
            ours.sync()
            row["ours_event_ms"] = ours.event_ms(ours_call[p], nbuf, row["iters"])
            summary = f"  {p:5s}: ours {row['ours_ms']:.3f} ms"
            if base is not None:
                summary += f", {'cuDNN' if ctx.on_gpu else 'torch'} {row['ref_ms']:.3f} ms"
            summary += f"  (err ours {row['err_ours']:.2g}"
            summary += f", err ref {row['err_ref']:.2g})" if "err_ref" in row else ")"
            log(summary)
        except Exception as error:  # noqa: BLE001
            row["status"] = f"FAILED timing: {type(error).__name__}: {error}"
            failed += 1
            log(f"  {p}: {row['status']}")
            traceback.print_exc()
    return failed


# ---- child: one whole-network training step -------------------------------------------------------------------

def torch_vgg16(torch, num_classes, width, fc_width, input_size):
    nn = torch.nn
    layers, c = [], 3
    for v in NET_CFG_D:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            v = max(1, int(round(v * width)))
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    side = input_size // 32
    return nn.Sequential(*layers, nn.Flatten(),
                         nn.Linear(c * side * side, fc_width), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Linear(fc_width, fc_width), nn.ReLU(inplace=True), nn.Dropout(0.5),
                         nn.Linear(fc_width, num_classes))


def run_net(args, results, torch, side):
    """images/s of SGD training steps (forward, backward, momentum SGD with weight decay) at --batch."""
    cfg = NET_QUICK if args.quick else NET_FULL
    n, size = args.batch, cfg["input_size"]
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, size=(n, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, cfg["num_classes"], size=n)
    net = {"side": side, "batch": n, **cfg}
    net["precision"] = args.precision
    if side == "ours" and args.precision == "bf16":
        # the bf16 kernels exist; bf16 activations through every op of the stack (vc.train(precision="bf16"))
        # come with the bfloat16 tensor dtype: until then this side is not measured.
        net["status"] = "skipped: a bf16 training step of our side needs bfloat16 tensors through the stack"
        results.data["net"] = net
        results.save()
        log(net["status"])
        return 0
    if side == "ours":
        import vggcore as vc
        import vggcore.nn.functional as F
        try:
            import vggcore.models as models   # the submodule import (vc.models may not exist yet)
            build = models.vgg
        except (ImportError, AttributeError) as error:
            net["status"] = f"skipped: vggcore.models is not available ({error})"
            results.data["net"] = net
            results.save()
            log(net["status"])
            return 0
        vc.manual_seed(0)
        model = build("D", dropout=0.5, **cfg)
        model.to(args.device)
        model.train()
        opt = vc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        x = vc.tensor(images, device=args.device)
        ours = Ours(args.device, None, args.precision)
        sync = ours.sync
        losses = []

        def step(_i):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), labels)
            loss.backward()
            opt.step()
            return loss
    else:
        dev = args.device if args.device.startswith("cuda") else "cpu"
        net["torch_settings"] = torch_precision(torch, args.precision)
        autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16)
                    if args.precision == "bf16" and dev.startswith("cuda") else None)
        torch.manual_seed(0)
        model = torch_vgg16(torch, cfg["num_classes"], cfg["width"], cfg["fc_width"], size)
        model = model.to(dev, memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        x = torch.from_numpy(images).to(dev).permute(0, 3, 1, 2)     # NHWC bytes = channels_last NCHW
        y = torch.from_numpy(labels).to(dev)
        losses = []

        def sync():
            if dev.startswith("cuda"):
                torch.cuda.synchronize()

        def step(_i):
            opt.zero_grad(set_to_none=True)
            if autocast is not None:   # bf16 autocast: convs and linears in bf16, loss in float32
                with autocast:
                    out = model(x)
                loss = torch.nn.functional.cross_entropy(out.float(), y)
            else:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

    for _ in range(2 if args.quick else 3):     # warm-up: allocator caches, cudnn.benchmark's search
        losses.append(float(step(0).item()))
    if not all(math.isfinite(v) for v in losses):
        raise AssertionError(f"{side} VGG-16 training step gave a non-finite loss: {losses}")
    ms, _, iters = measure_bursts(step, sync, 1, target_ms=args.net_burst_ms, reps=args.net_reps, max_iters=50)
    net.update(status="ok", step_ms=ms, images_per_s=n / (ms / 1e3), iters=iters, first_losses=losses)
    log(f"[batch {n}] VGG-16 training step, {side}: {ms:.1f} ms, {net['images_per_s']:.1f} images/s "
        f"(losses at warm-up {', '.join(f'{v:.3f}' for v in losses)})")
    results.data["net"] = net
    results.save()
    return 0


def child_main(args):
    torch = None
    if args.child in ("layers", "net-torch"):
        torch = import_torch(required=args.device.startswith("cuda") or args.child == "net-torch",
                             device=args.device)
        if args.no_torch:
            torch = None
    results = Results(args.json, device_info(args, torch))
    try:
        if args.child == "layers":
            failed = run_layers(args, results, torch)
        else:
            failed = run_net(args, results, torch, "ours" if args.child == "net-ours" else "torch")
    except SetupError:
        raise
    except Exception as error:  # noqa: BLE001 - recorded for the parent, then a nonzero exit
        results.data["errors"].append(f"{type(error).__name__}: {error}")
        results.save()
        traceback.print_exc()
        return 1
    return 1 if failed else 0


# ---- parent: run the sections, assemble the report ------------------------------------------------------------

def check_setup(args):
    """Fail early, with a clear message, when the device or a dependency is missing."""
    try:
        import vggcore as vc
    except ImportError as error:
        raise SetupError(f"vggcore is not importable ({error}): install it first "
                         "(pip install --no-build-isolation -v .)") from None
    available = list(vc.devices())
    if args.device not in available:
        why = ""
        if args.device.startswith("cuda"):
            why = (" (this build has no CUDA backend: nvcc was not found at build time, or VGG_CUDA=OFF)"
                   if not vc._C.cuda_compiled() else " (CUDA backend built, but no usable GPU or driver here)")
        elif args.device == "sim" and not vc._C.sim_compiled():
            why = " (built with VGG_SIM=OFF)"
        raise SetupError(f"device {args.device!r} is not available: vggcore.devices() = {available}{why}")
    if args.device.startswith("cuda"):
        import_torch(required=True, device=args.device)
    elif args.device == "cpu":
        raise SetupError("--device cpu: use bench/cpu_conv.py for the CPU benchmark")


def run_child(args, section, batch, deadline, hard_timeout):
    fd, path = tempfile.mkstemp(prefix=f"conv-{section}-{batch}-", suffix=".json")
    os.close(fd)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", section, "--device", args.device,
           "--batch", str(batch), "--json", path, "--tol", str(args.tol), "--reps", str(args.reps),
           "--precision", args.precision,
           "--burst-ms", str(args.burst_ms), "--net-reps", str(args.net_reps),
           "--net-burst-ms", str(args.net_burst_ms)]
    if args.quick:
        cmd.append("--quick")
    if args.no_torch:
        cmd.append("--no-torch")
    if args.layers:
        cmd += ["--layers", args.layers]
    if deadline:
        cmd += ["--deadline", str(deadline)]
    log(f"\n== {section}, batch {batch} ==")
    env = dict(os.environ)
    if not args.device.startswith("cuda"):
        # vggcore's and PyTorch's OpenMP pools would otherwise spin against each other on the host cores
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    started = time.time()
    try:
        rc = subprocess.run(cmd, timeout=hard_timeout, env=env).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        data = {"info": {}, "rows": [], "net": None, "errors": []}
    finally:
        for p in (path, path + ".tmp"):
            if os.path.exists(p):
                os.remove(p)
    data["rc"] = rc
    data["seconds"] = time.time() - started
    if rc not in (0, 1):
        data["errors"].append(f"child process for {section} at batch {batch} ended with "
                              f"{'a timeout' if rc == 'timeout' else f'exit status {rc}'}")
    return data


def layer_table(rows, peak, ref_name):
    headers = ["layer", "C->K", "HxW", "RxS", "pass", "ours ms", "ours TFLOP/s", "ours % peak",
               f"{ref_name} ms", f"{ref_name} TFLOP/s", f"{ref_name} % peak", "ours/" + ref_name,
               f"{ref_name} event ms", "ours event ms", "err ours", f"err {ref_name}", "status"]
    out = []
    for r in rows:
        ours_tf = r["flops"] / (r["ours_ms"] * 1e9) if r.get("ours_ms") else None
        ref_tf = r["flops"] / (r["ref_ms"] * 1e9) if r.get("ref_ms") else None
        ratio = r["ours_ms"] / r["ref_ms"] if r.get("ours_ms") and r.get("ref_ms") else None
        pct = (lambda tf: 100 * tf / peak if tf is not None and peak else None)
        out.append([r["layer"], f"{r['C']}->{r['K']}", f"{r['H']}x{r['H']}", f"{r['R']}x{r['R']}",
                    r["pass_"], fmt(r.get("ours_ms")), fmt(ours_tf, ".2f"), fmt(pct(ours_tf), ".1f"),
                    fmt(r.get("ref_ms")), fmt(ref_tf, ".2f"), fmt(pct(ref_tf), ".1f"), fmt(ratio, ".2f"),
                    fmt(r.get("ref_event_ms")), fmt(r.get("ours_event_ms")), fmt(r.get("err_ours"), ".1e"),
                    fmt(r.get("err_ref"), ".1e"),
                    (r["status"] + (f" (vs {r['reference']})" if r.get("reference") else ""))
                    if r["status"] == "ok" else f"**{r['status']}**"])
    return markdown_table(headers, out, "lllll" + "r" * 11 + "l")


def summary_table(rows, ref_name):
    headers = ["pass", "geomean ours/" + ref_name + " (3x3)", "worst 3x3", "3x3 layers within 2x",
               "geomean (1x1)", "conv total ms, ours", f"conv total ms, {ref_name}"]
    out = []
    for p in PASSES:
        prs = [r for r in rows if r["pass_"] == p and r.get("ours_ms") and r.get("ref_ms")]
        r3 = [r["ours_ms"] / r["ref_ms"] for r in prs if r["R"] == 3]
        r1 = [r["ours_ms"] / r["ref_ms"] for r in prs if r["R"] == 1]
        # the 13 conv layers of VGG-16 (config D) in one pass; n/a unless all of them were measured
        d_rows = [r for r in rows if r["pass_"] == p and r["R"] == 3]
        complete = d_rows and all(r.get("ours_ms") and r.get("ref_ms") for r in d_rows)
        tot_ours = sum(r["ours_ms"] * r["count"] for r in d_rows) if complete else None
        tot_ref = sum(r["ref_ms"] * r["count"] for r in d_rows) if complete else None
        within = f"{sum(r <= 2.0 for r in r3)}/{len(r3)}" if r3 else "n/a"
        out.append([PASS_NAMES[p], fmt(geomean(r3), ".2f"), fmt(max(r3) if r3 else None, ".2f"), within,
                    fmt(geomean(r1), ".2f"), fmt(tot_ours, ".2f"), fmt(tot_ref, ".2f")])
    return (markdown_table(headers, out) + "\n\nRatios are ours/" + ref_name + " in time (below 1: we are "
            "faster). \"Within 2x\" counts the 3x3 layers where we reach at least half of " + ref_name + "'s speed "
            "(the target for this kernel generation, at batch 128). The totals weight each row by the number "
            "of VGG-16 layers of that shape (its 13 conv layers; --quick: the tiny layers once each).")


# rough seconds each section takes on an H100, to share a --time-budget among them
def section_weight(section, batch):
    return {"layers": 20 + 0.5 * batch, "net-ours": 12 + 0.1 * batch, "net-torch": 10 + 0.08 * batch}[section]


def parent_main(args):
    check_setup(args)
    on_gpu = args.device.startswith("cuda")
    have_torch = not args.no_torch and (on_gpu or _torch_importable())
    sections = [("layers", b) for b in args.batch_list]
    if not args.no_net:
        sides = ("net-ours", "net-torch") if have_torch else ("net-ours",)
        sections += [(side, b) for b in args.batch_list for side in sides]
    end = time.time() + args.time_budget if args.time_budget else None
    results = []
    for i, (section, batch) in enumerate(sections):
        deadline = hard = None
        if end:
            # this section's share of what is left, in proportion to its expected length
            now = time.time()
            left = end - now
            share = section_weight(section, batch) / sum(section_weight(*s) for s in sections[i:])
            deadline = now + max(0.0, left) * share
            hard = max(30.0, min(deadline - now + 60, left + 15))
            if section != "layers" and left < 15:
                results.append((section, batch, {"info": {}, "rows": [], "errors": [],
                                                  "net": {"status": "skipped: time budget spent"}}))
                continue
        results.append((section, batch, run_child(args, section, batch, deadline, hard)))
        report, problems = render_report(args, results, have_torch)
        if args.out:
            write_file(args.out, report)
    report, problems = render_report(args, results, have_torch)
    print("\n" + report)
    if args.out:
        write_file(args.out, report)
        log(f"wrote {args.out}")
    if problems:
        print(f"\nFAILED: {len(problems)} problem(s), listed above", file=sys.stderr, flush=True)
        return 1
    return 0


def write_file(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def render_report(args, results, have_torch):
    """The markdown report of the sections run so far, and the list of problems."""
    on_gpu = args.device.startswith("cuda")
    batches = args.batch_list
    info = {}
    for _, _, data in results:
        for key, value in data.get("info", {}).items():
            info.setdefault(key, value)
    ref_name = "cuDNN" if on_gpu else "torch-cpu"
    gpu = info.get("gpu", "")
    peak = args.peak_tflops or peak_tflops(gpu, args.precision)
    extra = [f"device: {args.device}" + (f" (vggcore: {info['vggcore_device_name']})"
                                         if info.get("vggcore_device_name") else "")]
    if info.get("torch"):
        extra.append(f"PyTorch {info['torch']}" + (f", CUDA {info['torch_cuda']}, cuDNN {info['cudnn']}"
                                                  if on_gpu else ""))
    if not have_torch:
        extra.append("baseline: none (PyTorch not installed, or --no-torch): ours against NumPy only")
    if info.get("precision"):
        extra.append(f"precision: {args.precision}; baseline settings: {info['precision']}, channels_last")
    if on_gpu:
        extra.append(f"GPU: {info.get('sm_count', '?')} SMs, L2 {info.get('l2_bytes', 0) / 2**20:.0f} MiB, "
                     f"{info.get('gpu_mem_gib', 0):.0f} GiB; {args.precision} dense peak used for %: "
                     + (f"{peak:g} TFLOP/s" if peak else "n/a (GPU not in bench/common.py's table)"))
    extra.append(f"timing: median of {args.reps} bursts of back-to-back calls (~{args.burst_ms:g} ms each) "
                 "between device syncs, after warm-up; inputs rotated over several buffer sets "
                 "(see bench/conv.py's docstring); \"ours event ms\": one more burst timed with CUDA events on "
                 "vggcore's stream (vggcore._C._stream_time_ms)")
    lines = [f"# vggcore conv benchmark, {args.precision}" + (" (--quick, emulator)" if args.quick else ""), ""]
    lines += header_lines(gpu, extra)
    problems = []
    for section, batch, data in results:
        problems += [f"{section} at batch {batch}: {e}" for e in data.get("errors", [])]
        problems += [f"{r['layer']} {r['pass_']} at batch {batch}: {r['status']}" for r in data.get("rows", [])
                     if r["status"] != "ok"]
        net = data.get("net") or {}
        if (section.startswith("net") and net.get("status", "ok") != "ok" and "vggcore.models" not in net["status"]
                and "needs bfloat16 tensors" not in net["status"]):
            problems.append(f"{section} at batch {batch}: {net['status']}")
    for section, batch, data in results:
        if section != "layers":
            continue
        rows = data["rows"]
        lines += ["", f"## Conv layers, batch {batch}", ""]
        if not rows:
            lines.append("(no results: see the errors below)")
            continue
        lines += [layer_table(rows, peak, ref_name), "", summary_table(rows, ref_name)]
        ev = [abs(r["ref_ms"] / r["ref_event_ms"] - 1) for r in rows
              if r.get("ref_ms") and r.get("ref_event_ms")]
        if ev:
            lines += ["", f"Wall-clock vs CUDA-event time of the {ref_name} bursts: largest difference "
                          f"{100 * max(ev):.2f}% (median {100 * sorted(ev)[len(ev) // 2]:.2f}%)."]
    nets = [(s, b, d) for s, b, d in results if s.startswith("net")]
    if nets:
        lines += ["", "## Whole network: VGG-16 training step (forward, backward, SGD momentum 0.9, "
                      "weight decay 5e-4)", ""]
        cfg = NET_QUICK if args.quick else NET_FULL
        lines.append(f"{cfg['input_size']}x{cfg['input_size']} images, {cfg['num_classes']} classes, width "
                     f"{cfg['width']:g}, fc {cfg['fc_width']}, dropout 0.5, precision {args.precision}; PyTorch in "
                     "channels_last (fp32: TF32 off; tf32: TF32 on; bf16: autocast); one fixed batch already on the "
                     "device (no data loading).")
        lines.append("")
        rows = []
        for batch in batches:
            by_side = {s: d.get("net") or {} for s, b, d in nets if b == batch}
            o = by_side.get("net-ours", {})
            t = by_side.get("net-torch", {} if have_torch else {"status": "skipped: no PyTorch"})
            ratio = (t["images_per_s"] / o["images_per_s"]
                     if o.get("images_per_s") and t.get("images_per_s") else None)
            rows.append([str(batch), fmt(o.get("step_ms"), ".1f"), fmt(o.get("images_per_s"), ".1f"),
                         fmt(t.get("step_ms"), ".1f"), fmt(t.get("images_per_s"), ".1f"), fmt(ratio, ".2f"),
                         "; ".join(f"{k}: {v.get('status', 'no result')}" for k, v in
                                   (("ours", o), ("PyTorch", t)) if v.get("status") != "ok") or "ok"])
        lines.append(markdown_table(["batch", "ours ms/step", "ours images/s", "PyTorch ms/step",
                                     "PyTorch images/s", "time ratio ours/PyTorch", "status"], rows,
                                    "rrrrrrl"))
    lines += ["", "## Problems", ""]
    lines += [f"- {p}" for p in problems] or ["none"]
    return "\n".join(lines) + "\n", problems


def _torch_importable():
    try:
        __import__("torch")
        return True
    except ImportError:
        return False


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda:0", help="cuda, cuda:N, or sim (with --quick); default cuda:0")
    ap.add_argument("--batch", default=None,
                    help="batch size(s), comma-separated (default: 32,128; with --quick: 1)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny shapes validated against NumPy (for the emulator: proves the script works)")
    ap.add_argument("--layers", default="", help="only these layer names (comma-separated)")
    ap.add_argument("--no-net", action="store_true", help="skip the whole-network training-step benchmark")
    ap.add_argument("--no-torch", action="store_true", help="--quick without the PyTorch CPU comparison")
    ap.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                    help="fp32 (CUDA cores, TF32 off on both sides), tf32 or bf16 (tensor cores on both sides)")
    ap.add_argument("--tol", type=float, default=None,
                    help="max relative error of ours (default per precision: fp32 1e-4, tf32 5e-3, bf16 3e-2)")
    ap.add_argument("--reps", type=int, default=None, help="timed bursts per measurement (default 7; quick 3)")
    ap.add_argument("--burst-ms", type=float, default=None, help="length of one burst (default 25; quick 2)")
    ap.add_argument("--net-reps", type=int, default=3)
    ap.add_argument("--net-burst-ms", type=float, default=None,
                    help="length of one whole-network burst (default 1500; quick 100)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the GPU's dense peak in this precision, for the %% column (default: bench/common.py's table)")
    ap.add_argument("--time-budget", type=float, default=0,
                    help="seconds for the whole run; later layers are skipped (and marked) once it is spent")
    ap.add_argument("--out", default="", help="also write the markdown report to this file")
    # internal: one section in a child process
    ap.add_argument("--child", choices=("layers", "net-ours", "net-torch"), help=argparse.SUPPRESS)
    ap.add_argument("--json", default="", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.device == "cuda":
        args.device = "cuda:0"
    if args.device == "sim" and not args.quick:
        ap.error("--device sim runs only the --quick shapes (the emulator is far too slow for VGG-16 sizes)")
    default_batch = "1" if args.quick else "32,128"
    try:
        args.batch_list = [int(b) for b in (args.batch or default_batch).split(",")]
    except ValueError:
        ap.error(f"--batch must be integers separated by commas, got {args.batch!r}")
    if any(b < 1 for b in args.batch_list):
        ap.error("--batch sizes must be positive")
    args.batch = args.batch_list[0]
    args.reps = args.reps or (3 if args.quick else 7)
    args.tol = args.tol if args.tol is not None else DEFAULT_TOL[args.precision]
    args.burst_ms = args.burst_ms or (2.0 if args.quick else 25.0)
    args.net_burst_ms = args.net_burst_ms or (100.0 if args.quick else 1500.0)
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        return child_main(args) if args.child else parent_main(args)
    except SetupError as error:
        print(f"bench/conv.py: {error}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
