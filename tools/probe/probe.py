"""Hostile-user probe of the installed vggcore package (a tool beside the test suite, not run in CI).

    python tools/probe/probe.py --out tools/probe/results.json [--kinds api,images,...] [--seed 0] [--scale 1.0]

It tries what a hostile or careless user would, each case in a child process with a timeout, and classifies
every outcome:

  good     the call worked and (where the case checks it) gave the reference answer, or it was refused with a
           ValueError/TypeError/MemoryError/OSError-family exception whose message names what was wrong
  finding  crash   the child died (segfault, abort, the kernel's OOM killer)
           hang    no answer within the case's timeout
           memory  the child grew past --rss-limit-mb without a MemoryError (sizes must be refused up front)
           wrong   a silent wrong answer: the result differs from a NumPy reference or between devices, or a
                   corrupted file loaded as something other than what was saved
           accepted  a bad value was accepted silently (the case expected a refusal)
           exception an exception of a type the contract does not allow (RuntimeError, AttributeError, ...)
           leak    an allowed exception type whose message is an internal one (pybind11's "incompatible
                   function arguments", NumPy's "negative dimensions are not allowed", an empty message, ...)
           traceback the CLI printed a Python traceback instead of one line
           lost    a checkpoint was lost or corrupted (kill -9, SIGINT, disk full), or a resumed run is not
                   bit-exact against an uninterrupted one

Kinds (each a section below):
  api          every public function of DESIGN.md section 2 with bad shapes (0, negative, huge, overflowing
               products, wrong rank), dtypes, devices (cpu and sim), values (NaN, inf, 1e30, ints >= 2**63,
               bools, strings, None) and keyword typos; special values are also compared between devices and
               against NumPy
  images       mutated image files (bit flips, truncation, header lies, 16-bit/float/palette/CMYK/alpha/1-bit
               images) through load_rgb, ImageFolder + DataLoader, and vc.evaluate
  checkpoints  crafted and mutated checkpoints (bit flips, truncation, wrong dtype/shape/offsets, huge header,
               nested JSON, missing and extra tensors) through load_file, load_state, vc.models.load,
               interop.load_weights, from_torchvision and the CLI's info/eval
  kill9        `kill -9` of a CLI training run at a random moment, then `--resume`; the final weights must be
               bit-exact against an uninterrupted run
  sigint       SIGINT during long ops (cpu and sim conv, first-layer conv gradients, linear, pools) and during CLI
               training: a prompt KeyboardInterrupt / exit 130, no traceback, the checkpoint still loads
  diskfull     CLI training with the checkpoint folder on a small tmpfs (needs root and `mount -t tmpfs`): one
               line naming the file and the reason, no lost or half-written checkpoint, no temporary left

Cases of the api/images/checkpoints kinds run in batches inside worker processes (one import of vggcore per
batch); a worker that dies or stops answering is replaced and its current case recorded as a crash or a hang.
The output file holds the counts per kind and outcome and every finding (case name, outcome, detail, the
code that reproduces it). Exit status 1 when there are findings. See tools/probe/RESULTS.md for the last run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter, defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD_CWD = None   # set by main(): a private folder, so children import the installed package (never a
                   # folder named vggcore that another program left in a shared /tmp)
FINDINGS = ("crash", "hang", "memory", "wrong", "accepted", "exception", "leak", "traceback", "lost")

# ---------------------------------------------------------------------------------------------------------------
# The worker: runs cases from a JSON file, one line per event on stdout
# ---------------------------------------------------------------------------------------------------------------

WORKER_PRELUDE = r'''
import io, json, math, os, struct, sys, warnings, contextlib
import numpy as np
import vggcore as vc
import vggcore.nn.functional as F
from vggcore import nn, checkpoint
warnings.simplefilter("ignore")

def same(a, b, rtol=1e-5, atol=1e-6):
    """Values equal up to rounding, NaN where the other has NaN, infinities of the same sign."""
    a = np.asarray(a, np.float64); b = np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} vs {b.shape}"
    na, nb = np.isnan(a), np.isnan(b)
    assert (na == nb).all(), f"NaN at different places: {np.argwhere(na != nb)[:3].tolist()}"
    fa, fb = a[~na], b[~nb]
    ia, ib = np.isinf(fa), np.isinf(fb)
    assert (ia == ib).all() and (fa[ia] == fb[ib]).all(), "infinities differ"
    fa, fb = fa[~ia], fb[~ib]
    assert np.allclose(fa, fb, rtol=rtol, atol=atol), f"max diff {np.abs(fa - fb).max() if fa.size else 0}"

def T(a, device="cpu", dtype="float32"):
    return vc.tensor(np.asarray(a, dtype=np.float64 if dtype == "float64" else np.float32), device=device)

def state_equal(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(state_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) == type(b) and a == b

def cli(*argv):
    """vggcore's CLI in-process: (exit code, stderr). An exception escaping main() is a traceback."""
    from vggcore.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as e:            # argparse errors: usage + one line, exit 2
            code = e.code
    text = err.getvalue()
    if "Traceback" in text:
        raise CliTraceback(text[-600:])
    if code not in (0, None):
        lines = [l for l in text.strip().splitlines() if l.strip()]
        last = lines[-1] if lines else ""
        if not last.startswith(("error:", "vggcore")) and "error" not in last:
            raise CliTraceback("exit %r without a one-line error: %r" % (code, text[-400:]))
    return code, text

class CliTraceback(Exception):
    pass
'''

ALLOWED = ("ValueError", "TypeError", "MemoryError", "FileNotFoundError", "IsADirectoryError",
           "NotADirectoryError", "PermissionError", "FileExistsError", "KeyboardInterrupt",
           "UnicodeDecodeError", "JSONDecodeError", "NonFiniteScores", "AutogradError", "FloatingPointError",
           "UnpicklingError")   # read_pth's documented refusal of a pickle it will not run
LEAKS = ("incompatible function arguments", "negative dimensions are not allowed", "state must be for a",
         "std::bad_alloc", "bad_alloc", "has no attribute",
         "list index out of range", "not supported between instances",
         "invalid literal for int", "cannot convert float", "too large to convert to C", "int too big",
         "Unable to cast", "maximum recursion depth", "object cannot be interpreted as an integer",
         "only integer scalar arrays", "setting an array element with a sequence", "unhashable type",
         "argument must be", "must be real number, not", "got multiple values", "only integer scalar arrays")


# "conv2d: stride must be ..." names the op; NumPy's text quoted after such a prefix is context, not a leak
import re  # noqa: E402
OP_PREFIX = re.compile(r"^[\w./<>\-]+(\(\))?: ")


def worker_main(case_file, start, rss_limit_mb):
    cases = json.loads(Path(case_file).read_text())
    ns = {"__name__": "probe_case"}
    exec(compile(WORKER_PRELUDE, "<prelude>", "exec"), ns)
    for i in range(start, len(cases)):
        case = cases[i]
        print(f"S {i}", flush=True)
        local = dict(ns)
        local.update(case.get("env", {}))
        outcome, detail = "good", ""
        try:
            exec(compile(case["code"], f"<{case['name']}>", "exec"), local)
            if case["expect"] == "refuse":
                outcome, detail = "accepted", "no error was raised"
        except AssertionError as e:
            outcome, detail = "wrong", str(e)[:300]
        except BaseException as e:  # noqa: BLE001 - classification is the point
            name, msg = type(e).__name__, str(e)
            if name == "CliTraceback":
                outcome, detail = "traceback", msg
            elif name == "SystemExit":
                outcome, detail = "exception", f"SystemExit {msg}"
            elif case["expect"] == "ok":
                outcome, detail = ("exception", f"{name}: {msg[:300]}")
            elif name not in ALLOWED:
                outcome, detail = "exception", f"{name}: {msg[:300]}"
            elif len(msg.strip()) < 12 or (any(leak in msg for leak in LEAKS) and
                                            (not OP_PREFIX.match(msg) or "incompatible function" in msg)):
                outcome, detail = "leak", f"{name}: {msg[:300]}"
            else:
                outcome, detail = "good", f"{name}: {msg[:160]}"
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        if outcome == "good" and rss > rss_limit_mb:
            outcome, detail = "memory", f"peak RSS {rss} MB"
        print("R " + json.dumps([i, outcome, detail]), flush=True)
        if rss > rss_limit_mb:     # a fresh worker, so the next case's peak is its own
            return


def run_batch(cases, timeout_default, rss_limit_mb, env=None):
    """Runs the cases in worker processes; returns one (outcome, detail) per case."""
    results = [None] * len(cases)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cases, f)
        case_file = f.name
    start = 0
    try:
        while start < len(cases):
            errf = tempfile.TemporaryFile("w+")   # a pipe nobody reads would fill up and block the worker
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", case_file, str(start),
                                     str(rss_limit_mb)], stdout=subprocess.PIPE, stderr=errf,
                                    cwd=CHILD_CWD, env=env, text=True, bufsize=1)
            current, deadline = None, time.monotonic() + 120   # the import
            buf = ""
            while True:
                left = deadline - time.monotonic()
                ready = select.select([proc.stdout], [], [], max(0.0, left))[0] if left > 0 else []
                if not ready:
                    proc.kill()
                    proc.wait()
                    if current is None:
                        raise RuntimeError("probe worker did not start")
                    results[current] = ("hang", f"no answer within {cases[current].get('timeout', timeout_default)} s")
                    start = current + 1
                    break
                line = proc.stdout.readline()
                if not line:   # the worker ended
                    rc = proc.wait()
                    errf.seek(0)
                    err = errf.read()[-500:]
                    if current is not None and results[current] is None:
                        why = f"signal {-rc}" if rc < 0 else f"exit {rc}"
                        results[current] = ("crash", f"{why}: {err.strip()[-300:]}")
                        start = current + 1
                    elif current is None:
                        raise RuntimeError(f"probe worker failed to start: {err}")
                    else:
                        start = current + 1
                    break
                kind, _, rest = line.rstrip("\n").partition(" ")
                if kind == "S":
                    current = int(rest)
                    deadline = time.monotonic() + cases[current].get("timeout", timeout_default)
                elif kind == "R":
                    i, outcome, detail = json.loads(rest)
                    results[i] = (outcome, detail)
                    deadline = time.monotonic() + 30   # until the next case starts
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            errf.close()
    finally:
        os.unlink(case_file)
    return [r or ("crash", "never ran") for r in results]


def case(kind, name, code, expect="either", timeout=None, **env):
    c = {"kind": kind, "name": name, "code": textwrap.dedent(code), "expect": expect}
    if timeout:
        c["timeout"] = timeout
    if env:
        c["env"] = env
    return c


# ---------------------------------------------------------------------------------------------------------------
# api: every public function with bad arguments
# ---------------------------------------------------------------------------------------------------------------

# (source, the kind of value); validity per slot type decides what is expected
BAD_VALUES = [
    ("0", "int0"), ("-1", "neg"), ("-2**63 - 1", "neg"), ("2**31", "bigint"), ("2**63", "hugeint"),
    ("2**64 + 3", "hugeint"), ("10**30", "hugeint"), ("1e30", "bigfloat"), ("float('nan')", "nan"),
    ("float('inf')", "inf"), ("-float('inf')", "inf"), ("True", "bool"), ("False", "bool"), ("2.5", "float"),
    ("2.0", "float"), ("'3'", "str"), ("''", "str"), ("None", "none"), ("[]", "list"), ("[2]", "list"),
    ("(2, 3)", "list"), ("{}", "dict"), ("b'x'", "bytes"), ("np.int64(2)", "npint"), ("np.float32(2.0)", "npfloat"),
    ("1j", "complex"), ("object()", "object"), ("np.array([1, 2])", "array"), ("1e-45", "tiny"), ("-0.0", "float"),
]


def _expect(slot, vkind):
    """'ok', 'refuse' or 'either' for a value of kind vkind in a slot of type slot."""
    if slot == "pos_int":   # kernel sizes, strides, channels: a Python or NumPy int >= 1
        if vkind == "npint":
            return "ok"
        if vkind in ("bigint", "hugeint"):
            return "either"
        return "refuse"
    if slot == "nonneg_int":
        if vkind in ("npint", "int0"):
            return "ok"
        if vkind in ("bigint", "hugeint"):
            return "either"
        return "refuse"
    if slot == "real":      # alpha, beta, k, lr...: a finite real number
        if vkind in ("int0", "float", "npint", "npfloat", "tiny", "bigint", "bigfloat"):
            return "either"
        if vkind in ("nan", "inf", "hugeint", "neg"):
            return "either"   # refusing or computing the IEEE answer are both fine; devices are compared below
        return "refuse"
    if slot == "finite_nonneg":   # lr, momentum, weight decay
        if vkind in ("int0", "float", "npint", "npfloat", "tiny", "bigint", "bigfloat", "hugeint"):
            return "either"
        return "refuse"
    if slot == "prob":       # dropout p in [0, 1)
        if vkind in ("int0", "tiny"):
            return "ok"
        if vkind == "float" :
            return "either"
        return "refuse"
    if slot == "bool":
        if vkind == "bool":
            return "ok"
        return "either" if vkind in ("int0", "npint") else "refuse"
    if slot == "tensor":
        return "refuse"
    if slot == "opt_tensor":
        return "ok" if vkind == "none" else "refuse"
    if slot == "device":
        return "refuse"
    if slot == "dtype":
        return "refuse" if vkind != "none" else "ok"
    if slot == "anything":
        return "either"
    raise ValueError(slot)


def api_cases(devices, rng):
    cases = []
    # function call templates: {A} is replaced by the bad value; x, w, ... are made in the setup
    setups = {
        "conv": "x = T(np.arange(50).reshape(1, 5, 5, 2) % 7, D); w = T(np.ones((3, 3, 3, 2)), D); b = T([1, 2, 3], D)",
        "pool": "x = T(np.arange(32).reshape(1, 4, 4, 2), D)",
        "lin": "x = T(np.arange(8).reshape(2, 4), D); w = T(np.ones((3, 4)), D); b = T([1, 2, 3], D)",
        "vec": "x = T(np.arange(6).reshape(2, 3) - 2, D)",
        "ce": "x = T(np.arange(6).reshape(2, 3), D)",
    }
    calls = [
        # (name, setup, template, slot)
        ("conv2d.stride", "conv", "F.conv2d(x, w, b, stride={A}, padding=1)", "pos_int"),
        ("conv2d.padding", "conv", "F.conv2d(x, w, b, stride=1, padding={A})", "nonneg_int"),
        ("conv2d.bias", "conv", "F.conv2d(x, w, {A}, stride=1, padding=1)", "opt_tensor"),
        ("conv2d.weight", "conv", "F.conv2d(x, {A}, b)", "tensor"),
        ("conv2d.x", "conv", "F.conv2d({A}, w, b)", "tensor"),
        ("max_pool2d.kernel_size", "pool", "F.max_pool2d(x, kernel_size={A}, stride=2)", "pos_int"),
        ("max_pool2d.stride", "pool", "F.max_pool2d(x, kernel_size=2, stride={A})", "pos_int_or_none"),
        ("avg_pool2d.kernel_size", "pool", "F.avg_pool2d(x, kernel_size={A}, stride=2)", "pos_int"),
        ("avg_pool2d.stride", "pool", "F.avg_pool2d(x, kernel_size=2, stride={A})", "pos_int_or_none"),
        ("local_response_norm.size", "pool", "F.local_response_norm(x, size={A})", "pos_int"),
        ("local_response_norm.alpha", "pool", "F.local_response_norm(x, alpha={A})", "real"),
        ("local_response_norm.beta", "pool", "F.local_response_norm(x, beta={A})", "real"),
        ("local_response_norm.k", "pool", "F.local_response_norm(x, k={A})", "real"),
        ("linear.bias", "lin", "F.linear(x, w, {A})", "opt_tensor"),
        ("linear.weight", "lin", "F.linear(x, {A})", "tensor"),
        ("relu.x", "vec", "F.relu({A})", "tensor"),
        ("dropout.p", "vec", "F.dropout(x, p={A})", "prob"),
        ("dropout.training", "vec", "F.dropout(x, p=0.5, training={A})", "bool"),
        ("softmax.x", "vec", "F.softmax({A})", "tensor"),
        ("log_softmax.x", "vec", "F.log_softmax({A})", "tensor"),
        ("cross_entropy.target", "ce", "F.cross_entropy(x, {A})", "tensor_or_labels"),
        ("cross_entropy.target_list", "ce", "F.cross_entropy(x, [0, {A}])", "label"),
        ("tensor.requires_grad", "vec", "vc.tensor([1.0, 2.0], device=D, requires_grad={A})", "bool"),
        ("tensor.dtype", "vec", "vc.tensor([1.0, 2.0], dtype={A}, device=D)", "dtype"),
        ("tensor.device", "vec", "vc.tensor([1.0, 2.0], device={A})", "device"),
        ("tensor.data", "vec", "vc.tensor({A}, device=D)", "anything"),
        ("zeros.extent", "vec", "vc.zeros({A}, device=D)", "extent"),
        ("ones.extent", "vec", "vc.ones(2, {A}, device=D)", "nonneg_int"),
        ("zeros.device", "vec", "vc.zeros(2, device={A})", "device"),
        ("zeros.dtype", "vec", "vc.zeros(2, dtype={A}, device=D)", "dtype"),
        ("Tensor.reshape", "vec", "x.reshape(3, {A})", "reshape"),
        ("Tensor.to", "vec", "x.to({A})", "device"),
        ("Tensor.to.dtype", "vec", "x.to(dtype={A})", "dtype"),
        ("Tensor.backward.grad", "vec", "y = F.relu(vc.tensor(np.ones((2, 3), np.float32), device=D, requires_grad=True)); y.backward({A})", "grad"),
        ("Tensor.flatten", "vec", "x.flatten({A})", "dim"),
        ("Tensor.item", "vec", "x.item()", "n/a"),
        ("Tensor.mul", "vec", "x * {A}", "scalar"),
        ("Tensor.add", "vec", "x + {A}", "scalar"),
        ("Conv2d.in_channels", "vec", "nn.Conv2d({A}, 4, 3, device=D)", "pos_int"),
        ("Conv2d.out_channels", "vec", "nn.Conv2d(3, {A}, 3, device=D)", "pos_int"),
        ("Conv2d.kernel_size", "vec", "nn.Conv2d(3, 4, {A}, device=D)", "pos_int"),
        ("Conv2d.stride", "vec", "nn.Conv2d(3, 4, 3, stride={A}, device=D)(vc.zeros(1, 5, 5, 3, device=D))", "pos_int"),
        ("Conv2d.padding", "vec", "nn.Conv2d(3, 4, 3, padding={A}, device=D)(vc.zeros(1, 5, 5, 3, device=D))", "nonneg_int"),
        ("Linear.in_features", "vec", "nn.Linear({A}, 4, device=D)", "pos_int"),
        ("Linear.out_features", "vec", "nn.Linear(3, {A}, device=D)", "pos_int"),
        ("MaxPool2d.kernel_size", "vec", "nn.MaxPool2d({A})(vc.zeros(1, 4, 4, 2, device=D))", "pos_int"),
        ("AvgPool2d.stride", "vec", "nn.AvgPool2d(2, {A})(vc.zeros(1, 4, 4, 2, device=D))", "pos_int_or_none"),
        ("LocalResponseNorm.size", "vec", "nn.LocalResponseNorm({A})(vc.zeros(1, 4, 4, 2, device=D))", "pos_int"),
        ("Dropout.p", "vec", "nn.Dropout({A})", "prob"),
        ("Module.to", "vec", "nn.Linear(3, 4).to({A})", "device"),
        ("Module.load_state_dict", "vec", "nn.Linear(3, 4).load_state_dict({A})", "state"),
        ("SGD.lr", "vec", "vc.optim.SGD(nn.Linear(3, 4).parameters(), lr={A})", "finite_pos"),
        ("SGD.momentum", "vec", "vc.optim.SGD(nn.Linear(3, 4).parameters(), lr=0.1, momentum={A})", "finite_nonneg"),
        ("SGD.weight_decay", "vec", "vc.optim.SGD(nn.Linear(3, 4).parameters(), lr=0.1, weight_decay={A})", "finite_nonneg"),
        ("SGD.lr_setter", "vec", "o = vc.optim.SGD(nn.Linear(3, 4).parameters(), lr=0.1); o.lr = {A}; o.step()", "finite_pos"),
        ("SGD.params", "vec", "vc.optim.SGD({A}, lr=0.1)", "params"),
        ("SGD.load_state_dict", "vec", "vc.optim.SGD(nn.Linear(3, 4).parameters(), lr=0.1).load_state_dict({A})", "state"),
        ("vgg.config", "vec", "vc.models.vgg({A}, width=1/16, fc_width=8, input_size=32)", "config"),
        ("vgg.num_classes", "vec", "vc.models.vgg('A', num_classes={A}, width=1/16, fc_width=8, input_size=32)", "pos_int"),
        ("vgg.width", "vec", "vc.models.vgg('A', width={A}, fc_width=8, input_size=32)", "width"),
        ("vgg.fc_width", "vec", "vc.models.vgg('A', width=1/16, fc_width={A}, input_size=32)", "pos_int"),
        ("vgg.input_size", "vec", "vc.models.vgg('A', width=1/16, fc_width=8, input_size={A})", "input_size"),
        ("vgg.dropout", "vec", "vc.models.vgg('A', width=1/16, fc_width=8, input_size=32, dropout={A})", "prob"),
        ("vgg.init", "vec", "vc.models.vgg('A', width=1/16, fc_width=8, input_size=32, init={A})", "init"),
        ("init_from.net_a", "vec", "vc.models.init_from(vc.models.vgg('B', width=1/16, fc_width=8, input_size=32), {A})", "model"),
        ("export_onnx.input_size", "vec", "vc.export_onnx(vc.models.vgg('A', width=1/16, fc_width=8, input_size=32), os.devnull, input_size={A})", "input_size"),
        ("from_torchvision.source", "vec", "vc.models.from_torchvision({A})", "source"),
        ("evaluate.model", "vec", "vc.evaluate({A}, DATA + '/val', device=D)", "model"),
        ("evaluate.data", "vec", "vc.evaluate(MODEL, {A}, device=D)", "source"),
        ("evaluate.crop", "vec", "vc.evaluate(MODEL, DATA + '/val', crop={A}, device=D)", "crop"),
        ("evaluate.scale", "vec", "vc.evaluate(MODEL, DATA + '/val', scale={A}, device=D)", "crop"),
        ("evaluate.batch_size", "vec", "vc.evaluate(MODEL, DATA + '/val', batch_size={A}, device=D)", "pos_int"),
        ("evaluate.dense", "vec", "vc.evaluate(MODEL, DATA + '/val', dense={A}, device=D)", "bool"),
        ("evaluate.device", "vec", "vc.evaluate(MODEL, DATA + '/val', device={A})", "device"),
        ("train.epochs", "vec", "vc.train(data=DATA, epochs={A}, device=D, **TINY)", "pos_int_train"),
        ("train.lr", "vec", "vc.train(data=DATA, epochs=1, lr={A}, device=D, **TINY)", "finite_pos_train"),
        ("train.momentum", "vec", "vc.train(data=DATA, epochs=1, momentum={A}, device=D, **TINY)", "mom_train"),
        ("train.seed", "vec", "vc.train(data=DATA, epochs=1, seed={A}, device=D, **TINY)", "seed_train"),
        ("train.colour_std", "vec", "vc.train(data=DATA, epochs=1, colour_std={A}, device=D, **TINY)", "nonneg_train"),
        ("train.max_lr_drops", "vec", "vc.train(data=DATA, epochs=1, max_lr_drops={A}, device=D, **TINY)", "nonneg_int_train"),
        ("train.data", "vec", "vc.train(data={A}, epochs=1, device=D, **TINY)", "source"),
        ("train.device", "vec", "vc.train(data=DATA, epochs=1, device={A}, **TINY)", "device"),
        ("train.precision", "vec", "vc.train(data=DATA, epochs=1, precision={A}, device=D, **TINY)", "enum"),
        ("train.checkpoint_dir", "vec", "vc.train(data=DATA, epochs=1, checkpoint_dir={A}, device=D, **TINY)", "path_train"),
    ]
    valid_for = {
        # slot -> the value kinds that must be accepted, that may go either way; the rest must be refused
        "tensor_or_labels": ({"list"}, {"array"}), "label": ({"int0", "npint"}, {"float", "npfloat"}),  # integer-valued floats are labels
        "reshape": (set(), {"npint", "neg", "list"}), "grad": ({"none"}, set()), "dim": ({"int0"}, {"npint", "neg", "bool"}),
        "n/a": (set(), set()), "scalar": (set(), {"str", "neg", "int0", "float", "npint", "npfloat", "tiny", "bigfloat", "nan",
                                                "inf", "bigint", "hugeint", "bool", "array"}),
        "pos_int_or_none": ({"none", "npint"}, {"bigint", "hugeint"}), "extent": ({"int0", "npint"}, {"list", "bigint", "hugeint"}),
        "tensor_or_labels": (set(), {"array"}), "state": (set(), {"dict"}), "finite_pos": ({"float", "npfloat", "tiny"}, {"int0", "bigint", "bigfloat", "npint", "hugeint"}), "state": (set(), {"dict"}),
        "finite_pos": ({"float", "npfloat", "tiny"}, {"int0", "bigint", "bigfloat", "npint", "hugeint"}),
        "params": (set(), {"list"}), "config": (set(), set()), "grad": (set(), set()),
        "width": ({"float"}, {"npfloat", "tiny", "bigint", "bigfloat", "npint", "hugeint"}),
        "input_size": (set(), {"bigint", "hugeint", "npint"}), "init": ({"none"}, set()),
        "model": (set(), set()), "source": (set(), set()), "crop": ({"none"}, {"bigint", "hugeint", "npint"}),
        "pos_int_train": ({"npint"}, {"bigint", "hugeint"}), "finite_pos_train": ({"float", "npfloat", "tiny", "npint"}, {"bigint", "bigfloat"}),
        "mom_train": ({"int0", "tiny", "float"}, {"npfloat"}), "seed_train": ({"int0", "npint"}, {"bigint", "hugeint"}),
        "nonneg_train": ({"int0", "float", "tiny", "npint", "npfloat"}, {"bigint", "bigfloat"}),
        "nonneg_int_train": ({"int0", "npint"}, {"bigint", "hugeint"}), "enum": ({"none"}, set()),
        "path_train": ({"none"}, {"str"}),
    }
    for dev in devices:
        for name, setup, tmpl, slot in calls:
            if dev != "cpu" and (name.startswith(("train.", "evaluate.", "vgg.", "init_from", "export_onnx",
                                                  "from_torchvision", "SGD.", "Module.")) or "Pool2d" in name):
                continue   # device-independent argument checking: cpu only, to keep the run short
            for src, vkind in BAD_VALUES:
                if vkind in ("bigint", "hugeint") and (name in ("train.epochs", "zeros.extent", "ones.extent")
                                                       or name.startswith(("Conv2d.", "Linear.", "vgg.", "export_onnx"))):
                    if vkind == "bigint" or name == "train.epochs":
                        continue   # valid, just big: would run for hours or allocate gigabytes
                if slot in valid_for:
                    ok, either = valid_for[slot]
                    expect = "ok" if vkind in ok else "either" if vkind in either else "refuse"
                else:
                    expect = _expect(slot, vkind)
                if name in ("dropout.p", "vgg.dropout", "Dropout.p") and src in ("2.0", "-0.0"):
                    expect = "refuse" if src == "2.0" else "ok"
                if src == "2.0" and slot in ("pos_int", "nonneg_int", "pos_int_train", "nonneg_int_train"):
                    expect = "refuse"    # a float where an int belongs (vc.zeros(2.5) must not become 2)
                if name.startswith(("train.", "evaluate.")):
                    expect = expect if expect != "ok" else "either"
                if vkind == "none" and name in ("train.epochs", "train.data"):
                    continue   # the defaults: 74 epochs, or the built-in dataset (minutes, not a bad value)
                if vkind == "none" and slot == "device":
                    expect = "either"   # None = the default device, as in PyTorch
                if name == "vgg.width" and src == "-0.0":
                    expect = "refuse"
                if name == "cross_entropy.target_list" and vkind == "bool":
                    expect = "either"   # bool labels are documented as 0/1
                if name == "Tensor.item":
                    src, expect = "", "refuse"
                    if vkind != "int0":
                        continue
                timeout = 120 if name.startswith(("train.", "evaluate.")) else 30
                code = f"D = {dev!r}\n{setups[setup]}\nresult = {tmpl.replace('{A}', src)}\n"
                cases.append(case("api", f"{dev}:{name}={src}", code, expect, timeout=timeout))
    # keyword typos: every function must refuse a misspelled keyword
    typos = [
        "F.conv2d(x, w, b, strid=1)", "F.max_pool2d(x, kernel=2)", "F.avg_pool2d(x, kernel_sizes=2)",
        "F.local_response_norm(x, sise=5)", "F.dropout(x, prob=0.5)", "F.linear(x, w, biass=None)",
        "vc.tensor([1.0], requires_gradient=True)", "vc.zeros(2, dtyp='float32')", "vc.ones(2, devise='cpu')",
        "x.to(devic='cpu')", "nn.Conv2d(2, 3, 3, paddding=1)", "nn.Linear(2, 3, biass=False)",
        "vc.optim.SGD(nn.Linear(2, 3).parameters(), lr=0.1, momentun=0.9)",
        "vc.models.vgg('A', num_class=10)", "vc.train(data=DATA, epoch=1, **TINY)",
        "vc.train(data=DATA, epochs=1, learning_rate=0.1, **TINY)", "vc.evaluate(MODEL, DATA + '/val', crops=32)",
        "vc.export_onnx(MODEL, os.devnull, input_sise=32)", "vc.models.from_torchvision({}, num_clases=3)",
    ]
    for t in typos:
        code = f"D = 'cpu'\n{setups['conv']}\nresult = {t}\n"
        cases.append(case("api", f"typo:{t}", code, "refuse", timeout=60))
    # shapes: zero, negative, huge, overflowing products, wrong rank
    shape_cases = [
        ("vc.zeros(0)", "ok"), ("vc.zeros(0, 5)", "ok"), ("vc.zeros(-1)", "refuse"), ("vc.zeros(2**62)", "refuse"),
        ("vc.zeros(2**32, 2**32)", "refuse"), ("vc.zeros(3, 2**62, 2**62)", "refuse"),
        ("vc.zeros(4, 2**62 + 1)", "refuse"), ("vc.zeros(2**40)", "refuse"), ("vc.zeros(2.5)", "refuse"),
        ("vc.zeros((2, 3))", "either"), ("vc.zeros(*([1] * 64))", "either"), ("vc.zeros()", "either"),
        ("vc.zeros(0).reshape(1, 2**32, 2**32, 1)", "refuse"), ("vc.zeros(4).reshape(4, 2**62 + 1)", "refuse"),
        ("vc.zeros(4).reshape(-1, 2**62 + 1)", "refuse"), ("vc.zeros(0).reshape(-1, 0)", "refuse"),
        ("vc.zeros(4).reshape(-1, -1)", "refuse"), ("vc.zeros(4).reshape(-2, -2)", "refuse"),
        ("vc.zeros(4).reshape(2, 2.0)", "refuse"), ("vc.zeros(4).reshape()", "refuse"),
        ("vc.zeros(4).reshape(2, True, 2)", "refuse"),
        ("F.max_pool2d(vc.zeros(0).reshape(1, 0, 2**40, 1), 2, 2)", "either"),
        ("F.max_pool2d(vc.zeros(1, 2, 2, 1, device=D), 3, 1)", "refuse"),
        ("F.avg_pool2d(vc.zeros(1, 2, 2, 1, device=D), 2**40, 1)", "refuse"),
        ("F.conv2d(vc.zeros(1, 3, 3, 2, device=D), vc.zeros(4, 5, 5, 2, device=D))", "refuse"),
        ("F.conv2d(vc.zeros(1, 3, 3, 2, device=D), vc.zeros(4, 3, 3, 3, device=D))", "refuse"),
        ("F.conv2d(vc.zeros(3, 3, 2, device=D), vc.zeros(4, 3, 3, 2, device=D))", "refuse"),
        ("F.conv2d(vc.zeros(1, 3, 3, 2, device=D), vc.zeros(4, 3, 3, 2, device=D), padding=2**40)", "refuse"),
        ("F.conv2d(vc.zeros(1, 3, 3, 2, device=D), vc.zeros(4, 3, 3, 2, device=D), padding=2**31)", "refuse"),
        ("F.conv2d(vc.zeros(2**20, 2**12, 2**12, 1, device=D), vc.zeros(1, 1, 1, 1, device=D))", "refuse"),
        ("F.conv2d(vc.zeros(1, 2**16, 2**16, 64, device=D), vc.zeros(64, 3, 3, 64, device=D), padding=1)", "refuse"),
        ("F.conv2d(vc.zeros(0, 3, 3, 2, device=D), vc.zeros(4, 3, 3, 2, device=D))", "either"),
        ("F.conv2d(vc.zeros(1, 3, 3, 0, device=D), vc.zeros(4, 3, 3, 0, device=D))", "either"),
        ("F.conv2d(vc.zeros(1, 3, 3, 2, device=D), vc.zeros(0, 3, 3, 2, device=D))", "either"),
        ("F.conv2d(vc.zeros(1, 3, 3, 2, device=D), vc.zeros(4, 3, 3, 2, device=D), vc.zeros(5, device=D))", "refuse"),
        ("F.conv2d(vc.zeros(1, 3, 3, 2, device=D), vc.zeros(4, 3, 3, 2, device=D, dtype='float64'))", "refuse"),
        ("F.conv2d(vc.zeros(1, 3, 3, 2, device='cpu'), vc.zeros(4, 3, 3, 2, device='sim'))", "refuse"),
        ("F.linear(vc.zeros(2, 3, device=D), vc.zeros(4, 5, device=D))", "refuse"),
        ("F.linear(vc.zeros(2, 3, 1, device=D), vc.zeros(4, 3, device=D))", "refuse"),
        ("F.linear(vc.zeros(2, 0, device=D), vc.zeros(4, 0, device=D))", "either"),
        ("F.linear(vc.zeros(2**36, 0, device=D), vc.zeros(2**36, 0, device=D))", "either"),
        ("vc.zeros(2**36, device=D)", "refuse"), ("vc.ones(2**20, 2**20, device=D)", "refuse"),
        ("F.linear(vc.zeros(2, 3, device=D), vc.zeros(4, 3, device=D), vc.zeros(3, device=D))", "refuse"),
        ("F.local_response_norm(vc.zeros(1, 2, 2, 3, device=D), size=10**18)", "either"),
        ("F.local_response_norm(vc.zeros(1, 2, 2, 3, device=D), size=2**63)", "either"),
        ("F.local_response_norm(vc.zeros(2, 3, device=D))", "either"),
        ("F.max_pool2d(vc.zeros(2, 3, device=D))", "refuse"),
        ("F.softmax(vc.zeros(0, 3, device=D))", "either"), ("F.softmax(vc.zeros(2, 0, device=D))", "either"),
        ("F.cross_entropy(vc.zeros(2, 3, device=D), [0, 3])", "refuse"),
        ("F.cross_entropy(vc.zeros(2, 3, device=D), [0, -1])", "refuse"),
        ("F.cross_entropy(vc.zeros(2, 3, device=D), [0, 10**20])", "refuse"),
        ("F.cross_entropy(vc.zeros(2, 3, device=D), [0, 1.5])", "refuse"),
        ("F.cross_entropy(vc.zeros(2, 3, device=D), [0])", "refuse"),
        ("F.cross_entropy(vc.zeros(0, 3, device=D), [])", "either"),
        ("F.cross_entropy(vc.zeros(2, 0, device=D), [0, 0])", "refuse"),
        ("F.cross_entropy(vc.zeros(2, 3, device=D), np.array([0, 2**63], dtype=np.uint64))", "refuse"),
        ("F.cross_entropy(vc.zeros(2, 3, device=D), vc.tensor([0.0, 1.0], device=D))", "either"),
        ("F.dropout(vc.zeros(2**20, device=D), p=1.0)", "either"),
        ("vc.zeros(2, device=D).to('cuda:7')", "refuse"), ("vc.zeros(2, device=D).to('sim:0')", "refuse"),
        ("vc.zeros(2, device=D).to(dtype='float16')", "refuse"), ("vc.zeros(2, device=D).to(dtype='bfloat16')", "either"),
        ("vc.zeros(2, dtype='float64', device=D)", "either"), ("vc.tensor(np.zeros(3, np.int64), device=D)", "either"),
        ("vc.tensor(np.zeros(3, np.complex64), device=D)", "refuse"), ("vc.tensor(np.zeros(3, object), device=D)", "refuse"),
        ("vc.tensor('abc', device=D)", "refuse"), ("vc.tensor([[1, 2], [3]], device=D)", "refuse"),
        ("vc.tensor(np.zeros((2, 2))[:, ::-1], device=D)", "either"), ("vc.tensor(np.zeros(3, '>f4'), device=D)", "either"),
        ("vc.tensor([2**63], device=D)", "either"), ("vc.tensor([1e300], device=D)", "either"),
        ("vc.zeros(2, 3, device=D).item()", "refuse"), ("vc.zeros(2, device=D).backward()", "refuse"),
        ("vc.zeros(2, device=D, requires_grad=True).backward(vc.zeros(3, device=D))", "refuse"),
        ("F.relu(vc.zeros(2, device=D, requires_grad=True)).backward(vc.zeros(2, 1, device=D))", "refuse"),
        ("vc.zeros(2, device=D) + vc.zeros(3, device=D)", "refuse"),
        ("vc.zeros(2, device='cpu') + vc.zeros(2, device='sim')", "refuse"),
        ("nn.Linear(3, 4, device=D)(vc.zeros(2, 5, device=D))", "refuse"),
        ("nn.Conv2d(3, 4, 3, device=D)(vc.zeros(1, 2, 2, 3, device=D))", "refuse"),
        ("vc.models.vgg('A', width=1/16, fc_width=8, input_size=32)(vc.zeros(1, 31, 31, 3))", "refuse"),
        ("vc.models.vgg('A', width=1/16, fc_width=8, input_size=32)(vc.zeros(1, 32, 32, 4))", "refuse"),
        ("vc.models.vgg('A', width=1/16, fc_width=8, input_size=32)(vc.zeros(1, 32, 32, 3, device=D))", "either"),
        ("vc.models.vgg('A', width=1e-9, fc_width=8, input_size=32)", "either"),
        ("vc.models.vgg('A', width=1e6, fc_width=8, input_size=32)", "refuse"),
        ("vc.models.vgg('A', fc_width=2**40, input_size=32, width=1/16)", "refuse"),
        ("vc.models.vgg('A', num_classes=2**40, input_size=32, width=1/16, fc_width=8)", "refuse"),
        ("vc.models.vgg('A', input_size=2**20, width=1/16, fc_width=8)", "refuse"),
        ("vc.models.vgg('Z')", "refuse"), ("vc.models.vgg('a', width=1/16, fc_width=8, input_size=32)", "either"),
        ("vc.distributed.is_initialized()", "ok"), ("vc.distributed.rank()", "ok"), ("vc.distributed.world_size()", "ok"),
        ("vc.set_float32_matmul_precision('medium')", "refuse"), ("vc.set_float32_matmul_precision(None)", "refuse"),
        ("vc.evaluate(MODEL, DATA + '/val', crop=0)", "refuse"), ("vc.evaluate(MODEL, DATA + '/val', scale=[])", "refuse"),
        ("vc.evaluate(MODEL, DATA + '/val', scale=[32, -1])", "refuse"), ("vc.evaluate(MODEL, DATA)", "refuse"),
        ("vc.evaluate(MODEL, DATA + '/val', crop=10**9)", "refuse"), ("vc.evaluate(MODEL, DATA + '/val', scale=10**6)", "refuse"),
        ("vc.evaluate([], DATA + '/val')", "refuse"), ("vc.evaluate(MODEL, DATA + '/val', multi_crop='yes')", "refuse"),
        ("vc.train(data=DATA, epochs=1, scale=10**6, **{k: v for k, v in TINY.items() if k != 'scale'})", "refuse"),
        ("vc.train(data=DATA, epochs=1, scale=(40, 32), **{k: v for k, v in TINY.items() if k != 'scale'})", "refuse"),
        ("vc.train(data=DATA, epochs=1, crop=64, **{k: v for k, v in TINY.items() if k != 'crop'})", "refuse"),
        ("vc.train(data=DATA, epochs=1, batch_size=10**12, **{k: v for k, v in TINY.items() if k != 'batch_size'})", "either"),
        ("vc.train(data=DATA, epochs=1, width=100.0, **{k: v for k, v in TINY.items() if k != 'width'})", "refuse"),
        ("vc.train(data=DATA, epochs=10**12, resume=True, **TINY)", "refuse"),
        ("vc.train(data=DATA, epochs=1, config='Q', **{k: v for k, v in TINY.items() if k != 'config'})", "refuse"),
        ("vc.train(data=DATA, epochs=1, init_from='/nonexistent.safetensors', **TINY)", "refuse"),
        ("vc.train(data=DATA + '/train', epochs=1, **TINY)", "refuse"),
    ]
    for dev in devices:
        for src, expect in shape_cases:
            if dev != "cpu" and ("vc.train" in src or "vc.evaluate" in src or "vgg(" in src or "distributed" in src
                                 or "precision" in src):
                continue
            timeout = 120 if ("vc.train" in src or "vc.evaluate" in src) else 30
            cases.append(case("api", f"{dev}:{src}", f"D = {dev!r}\nresult = {src}\n", expect, timeout=timeout))
    # values: special floats through every op, compared between devices and against NumPy
    specials = {
        "nan": "np.nan", "inf": "np.inf", "-inf": "-np.inf", "1e30": "1e30", "3e38": "3e38", "-3e38": "-3e38",
        "denormal": "1e-42", "-0": "-0.0",
    }
    ops = {
        "relu": ("F.relu(X)", "np.maximum(x, 0)"),
        "max_pool2d": ("F.max_pool2d(X, 2, 2)", None),
        "avg_pool2d": ("F.avg_pool2d(X, 2, 2)", None),
        "lrn": ("F.local_response_norm(X, size=3, alpha=1e-4, beta=0.75, k=1.0)", None),
        "softmax": ("F.softmax(X.reshape(4, 8))", None),
        "log_softmax": ("F.log_softmax(X.reshape(4, 8))", None),
        "cross_entropy": ("F.cross_entropy(X.reshape(4, 8), [0, 3, 7, 1])", None),
        "conv2d": ("F.conv2d(X, W, None, stride=1, padding=1)", None),
        "linear": ("F.linear(X.reshape(4, 8), W.reshape(9, 8))", None),
        "dropout": ("F.dropout(X, p=0.5, training=True, seed=3)", None),
        "mul": ("X * 2.0", "x * np.float32(2.0)"),
        "sum_backward_relu": ("G", None),
    }
    summing = ("conv2d", "linear", "lrn")
    for sname, sval in specials.items():
        for pattern in ("one", "all", "row"):
            for op, (expr, ref) in ops.items():
                if op in summing and sname in ("3e38", "-3e38"):
                    continue   # sums of values near FLT_MAX overflow in float32 in an order-dependent way
                code = f"""
                    rng = np.random.default_rng({len(cases)})
                    x = rng.integers(-3, 4, size=(2, 4, 4, 2)).astype(np.float32)
                    pattern = {pattern!r}
                    if pattern == "one": x[0, 1, 2, 1] = {sval}
                    elif pattern == "all": x[:] = {sval}
                    else: x[1] = {sval}
                    wv = rng.integers(-2, 3, size=(8, 3, 3, 2)).astype(np.float32)
                    outs = {{}}
                    for D in DEVICES:
                        X = vc.tensor(x, device=D, requires_grad=True)
                        W = vc.tensor(wv[:9 * 8 // 18 * 2].reshape(8, 3, 3, 2) if {op!r} != "linear" else np.resize(wv, (9, 8)).reshape(9, 8, 1, 1).reshape(9, 8), device=D)
                        if {op!r} == "linear":
                            W = vc.tensor(np.resize(wv, (9, 8)), device=D)
                        if {op!r} == "sum_backward_relu":
                            y = F.relu(X); y.backward(vc.ones(*y.shape, device=D)); outs[D] = X.grad.numpy()
                        else:
                            outs[D] = ({expr}).numpy()
                    base = outs["cpu"]
                    for D, o in outs.items():
                        same(o, base, rtol=1e-5, atol=1e-5)
                """
                code = textwrap.dedent(code)
                if ref:
                    code += f"same(outs['cpu'], {ref})\n"
                cases.append(case("api", f"special:{op}:{sname}:{pattern}", code, "either", timeout=60))
    # extreme logits: the softmax family against a float64 reference on every device
    for i, logits in enumerate(["[[-1e30, -1e30]]", "[[1e30, 1e30]]", "[[3e38, -3e38]]", "[[1e16, 1e16 - 2**34]]",
                                "[[-3e38, 0.0]]", "[[88.0, -88.0]]", "[[1e-45, 0.0]]", "[[1e20, 1e20 + 1e13]]"]):
        code = f"""
            x = np.array({logits}, np.float32)
            x64 = x.astype(np.float64); m = x64.max(1, keepdims=True)
            ref = ((x64 - m) - np.log(np.exp(x64 - m).sum(1, keepdims=True))).astype(np.float32)  # float32's answer
            for D in DEVICES:
                same(F.log_softmax(vc.tensor(x, device=D)).numpy(), ref, rtol=1e-5, atol=1e-5)
                same(F.cross_entropy(vc.tensor(x, device=D), [0]).numpy(), -ref[:, 0].mean(), rtol=1e-5, atol=1e-5)
                t = vc.tensor(x, device=D, requires_grad=True)
                F.cross_entropy(t, [0]).backward()
                g = np.exp(ref); g[:, 0] -= 1
                same(t.grad.numpy(), g, rtol=1e-4, atol=1e-5)
        """
        cases.append(case("api", f"extreme-logits:{logits}", code, "ok", timeout=60))
    # exact small-integer results on every device: conv, linear, pools against NumPy
    for i in range(12):
        n, h, w, c, k = 1 + i % 2, 3 + i % 4, 3 + (i * 3) % 5, 1 + i % 4, 1 + (i * 5) % 7
        stride, pad = 1 + i % 2, i % 3
        code = f"""
            rng = np.random.default_rng({i})
            x = rng.integers(-3, 4, size=({n}, {h}, {w}, {c})).astype(np.float32)
            wt = rng.integers(-2, 3, size=({k}, 3, 3, {c})).astype(np.float32)
            xp = np.pad(x, ((0, 0), ({pad}, {pad}), ({pad}, {pad}), (0, 0)))
            P = ({h} + 2 * {pad} - 3) // {stride} + 1; Q = ({w} + 2 * {pad} - 3) // {stride} + 1
            ref = np.zeros(({n}, P, Q, {k}), np.float64)
            for p in range(P):
                for q in range(Q):
                    patch = xp[:, p * {stride}:p * {stride} + 3, q * {stride}:q * {stride} + 3, :]
                    ref[:, p, q, :] = np.einsum("nrsc,krsc->nk", patch, wt)
            for D in DEVICES:
                got = F.conv2d(vc.tensor(x, device=D), vc.tensor(wt, device=D), None, stride={stride}, padding={pad})
                assert np.array_equal(got.numpy(), ref), f"conv2d on {{D}} differs from the exact sum"
                lin = F.linear(vc.tensor(x.reshape({n}, -1), device=D), vc.tensor(np.resize(wt, (5, x[0].size)), device=D))
                assert np.array_equal(lin.numpy(), x.reshape({n}, -1) @ np.resize(wt, (5, x[0].size)).T), f"linear on {{D}}"
        """
        cases.append(case("api", f"exact:conv+linear:{i}", code, "ok", timeout=60))
    return cases


CLI_FLAGS = {
    # flag -> the subcommand; every value below is wrong for every flag, so each must end in argparse's usage
    # error (exit 2) or one "error:" line (exit 1), never a traceback or a run
    "train": ["--epochs", "--batch-size", "--lr", "--momentum", "--weight-decay", "--scale", "--crop", "--width",
              "--fc-width", "--dropout", "--seed", "--lr-patience", "--lr-factor", "--max-lr-drops", "--eval-scale",
              "--colour-std", "--input-scale", "--stats-sample", "--workers", "--device", "--precision", "--init",
              "--config", "--data", "--checkpoint-dir", "--init-from"],
    "eval": ["--scales", "--crop", "--batch-size", "--workers", "--device", "--data"],
    "predict": ["--topk", "--scales", "--crop", "--device", "--labels", "--model"],
}
CLI_VALUES = ["nan", "inf", "-inf", "-1", "1e30", str(2**63), "abc", "", "0x10", "1,2,3,4", "/nonexistent/x"]
ENV_CASES = [
    # (variable, value, expectation of a conv on cpu and sim in a fresh process)
    ("VGG_CONV_ALGO", "winogard"), ("VGG_CONV_ALGO", ""), ("VGG_CONV_ALGO", "x" * 10000),
    ("VGG_CPU_ISA", "avx1024"), ("VGG_CPU_ISA", ""), ("VGG_SIM_SCHEDULE", "backwards"),
    ("VGG_SIM_CHECKS", "maybe"), ("OMP_NUM_THREADS", "0"), ("OMP_NUM_THREADS", "-3"), ("OMP_NUM_THREADS", "100000"),
    ("VGGCORE_CACHE", "/proc/nonexistent"), ("VGGCORE_DIST_TIMEOUT", "nan"),
]


def cli_cases():
    cases = []
    for cmd, flags in CLI_FLAGS.items():
        for flag in flags:
            for value in CLI_VALUES:
                if flag in ("--data", "--checkpoint-dir", "--init-from", "--labels", "--model") and \
                        value not in ("", "/nonexistent/x", "abc"):
                    continue
                if flag == "--checkpoint-dir" and value != "":
                    continue   # a new folder anywhere is a valid checkpoint folder
                if cmd == "train":
                    argv = ["train", "--data", "DATA", "--epochs", "1", *TRAIN_ARGS]
                elif cmd == "eval":
                    argv = ["eval", "MODEL", "--data", "DATA/val", "--device", "cpu", "--no-progress"]
                else:
                    argv = ["predict", "DATA/val/circle/circle_00000.png", "--model", "MODEL", "--device", "cpu"]
                # the probe's own setting of the flag is replaced by the bad value
                if flag in argv:
                    i = argv.index(flag)
                    del argv[i:i + 2]
                argv += [flag, value]
                if cmd == "train":
                    argv += ["--checkpoint-dir", "CKDIR"] if flag != "--checkpoint-dir" else []
                code = (f"argv = [a.replace('CKDIR', CKDIR).replace('DATA', DATA).replace('MODEL', MODEL) "
                        f"for a in {argv!r}]\ncode, text = cli(*argv)\n"
                        f"assert code != 0, {('the CLI ran with ' + flag + ' ' + repr(value))!r}\n")
                # a fresh checkpoint folder per case, so an accepted run never meets the previous one
                cases.append(case("cli", f"{cmd} {flag} {value!r}", "import tempfile\nCKDIR = tempfile.mkdtemp()\n" + code,
                                  "either", timeout=120))
    return cases


def env_scenarios(env, devices):
    """Bad environment variables: a fresh process each (they are read once); a conv must still give the exact
    sum, or the process must stop with one clear line (never a crash or a silently ignored misspelling)."""
    results = []
    src = ("import numpy as np, vggcore as vc, vggcore.nn.functional as F\n"
           "for d in %r:\n"
           "    y = F.conv2d(vc.ones(1, 6, 6, 3, device=d), vc.ones(4, 3, 3, 3, device=d), None, padding=1)\n"
           "    assert float(y.numpy()[0, 2, 2, 0]) == 27.0, (d, y.numpy()[0, 2, 2, 0])\n"
           "print('ok')\n") % (devices,)
    for var, value in ENV_CASES:
        e = dict(env, **{var: value})
        name = f"env:{var}={value[:20]!r}"
        try:
            p = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, env=e, timeout=120,
                               cwd=CHILD_CWD)
        except subprocess.TimeoutExpired:
            results.append((name, "hang", "no exit within 120 s"))
            continue
        err = p.stderr.strip()
        if p.returncode < 0:
            results.append((name, "crash", f"signal {-p.returncode}: {err[-300:]}"))
        elif p.returncode == 0 and "ok" in p.stdout:
            # a misspelled setting that is silently ignored is the finding the issue names
            ignored = var in ("VGG_CONV_ALGO", "VGG_CPU_ISA", "VGG_SIM_SCHEDULE", "VGG_SIM_CHECKS") and value != ""
            results.append((name, "accepted", "the misspelled setting was silently ignored") if ignored else
                           (name, "good", "ran correctly"))
        elif "AssertionError" in err:
            results.append((name, "wrong", err[-300:]))
        else:
            last = err.splitlines()[-1] if err else ""
            ok = any(k in last for k in ("ValueError", "TypeError", "RuntimeError", "Error:")) and var in last
            results.append((name, "good" if ok else "leak", last[:240]))
    return results


# ---------------------------------------------------------------------------------------------------------------
# images: mutated files through the data pipeline
# ---------------------------------------------------------------------------------------------------------------

def make_base_images(folder: Path):
    """Small images of every mode a user may have, with the brightness each must load as (0..255 per channel)."""
    import numpy as np
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    bases = {}
    grad = (np.add.outer(np.arange(24), np.arange(20)) * 5).astype(np.uint8)
    rgb = np.stack([grad, 255 - grad, np.full_like(grad, 77)], -1)
    Image.fromarray(rgb).save(folder / "rgb.png"); bases["rgb.png"] = rgb.mean()
    Image.fromarray(rgb).save(folder / "rgb.jpg", quality=90); bases["rgb.jpg"] = rgb.mean()
    Image.fromarray(rgb).save(folder / "rgb.bmp"); bases["rgb.bmp"] = rgb.mean()
    Image.fromarray(rgb).save(folder / "rgb.gif"); bases["rgb.gif"] = None
    Image.fromarray(rgb).save(folder / "rgb.webp") if _has_webp() else None
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png"); bases["palette.png"] = None
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg"); bases["cmyk.jpg"] = None
    rgba = np.dstack([rgb, np.full_like(grad, 128)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png"); bases["rgba.png"] = None
    Image.fromarray(grad, "L").save(folder / "grey.png"); bases["grey.png"] = grad.mean()
    Image.fromarray(np.dstack([grad, grad]), "LA").save(folder / "la.png"); bases["la.png"] = None
    Image.fromarray(grad > 60).save(folder / "bits.png"); bases["bits.png"] = None
    g16 = np.full((24, 20), 1000, np.uint16)        # 1.5 % grey in 16 bits
    Image.fromarray(g16).save(folder / "grey16.png"); bases["grey16.png"] = 1000 / 65535 * 255
    g16b = (grad.astype(np.uint16) * 257)
    Image.fromarray(g16b).save(folder / "ramp16.png"); bases["ramp16.png"] = grad.mean()
    f = grad.astype(np.float32) / 255
    Image.fromarray(f, "F").save(folder / "float.tif"); bases["float.tif"] = grad.mean()
    Image.fromarray(grad.astype(np.int32) * 1000, "I").save(folder / "int32.tif"); bases["int32.tif"] = None
    Image.fromarray(rgb).save(folder / "rgb.tif"); bases["rgb.tif"] = rgb.mean()
    Image.fromarray(rgb).resize((1, 1)).save(folder / "tiny.png"); bases["tiny.png"] = None
    Image.fromarray(np.zeros((1, 3000, 3), np.uint8)).save(folder / "sliver.png"); bases["sliver.png"] = 0.0
    return {k: v for k, v in bases.items() if (folder / k).exists()}


def _has_webp():
    from PIL import features
    return features.check("webp")


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation: bit flips, truncation, a byte run, or a header lie (size fields, PNG bit depth)."""
    b = bytearray(data)
    how = rng.choice(["flip1", "flip8", "flip_header", "truncate", "truncate_header", "zero_run", "ff_run",
                      "png_size", "png_depth", "append", "swap", "empty"])
    if how == "flip1" or how == "flip8":
        for _ in range(1 if how == "flip1" else 8):
            i = rng.randrange(len(b)); b[i] ^= 1 << rng.randrange(8)
    elif how == "flip_header":
        i = rng.randrange(min(64, len(b))); b[i] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        b = b[:rng.randrange(1, len(b))]
    elif how == "truncate_header":
        b = b[:rng.randrange(1, min(64, len(b)))]
    elif how in ("zero_run", "ff_run"):
        i = rng.randrange(len(b)); n = rng.randrange(1, 64)
        b[i:i + n] = (b"\0" if how == "zero_run" else b"\xff") * n
    elif how == "png_size" and b[:8] == b"\x89PNG\r\n\x1a\n":
        # IHDR width/height: a lie (huge or zero), CRC left stale or fixed
        import zlib
        val = rng.choice([0, 1, 2**31 - 1, 65535, 100000, 2**32 - 1])
        b[16 + 4 * rng.randrange(2):][:4] = struct.pack(">I", val)
        if rng.random() < 0.7:
            b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    elif how == "png_depth" and b[:8] == b"\x89PNG\r\n\x1a\n":
        import zlib
        b[24] = rng.choice([1, 2, 4, 8, 16, 3, 0, 255]); b[25] = rng.choice([0, 2, 3, 4, 6, 7])
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    elif how == "append":
        b += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    elif how == "swap":
        i, j = rng.randrange(len(b)), rng.randrange(len(b)); b[i], b[j] = b[j], b[i]
    elif how == "empty":
        b = bytearray()
    else:
        i = rng.randrange(len(b)); b[i] ^= 0x55
    return how, bytes(b)


IMAGE_CHECK = r'''
from vggcore import data as vd
img = vd.load_rgb(PATH)
if img is not None:
    assert img.mode == "RGB", f"load_rgb gave mode {img.mode}"
    a = np.asarray(img)
    assert a.ndim == 3 and a.shape[2] == 3 and a.size > 0, f"decoded shape {a.shape}"
    if WANT is not None:
        assert abs(a.mean() - WANT) < 6, f"mean {a.mean():.1f}, the image's real brightness is {WANT:.1f}"
'''

PIPELINE_CHECK = r'''
import warnings as _w
from vggcore import data as vd
folder = vd.ImageFolder(ROOT)
mean = [120.0, 110.0, 100.0]
loader = vd.DataLoader(folder, batch_size=4, transform=vd.EvalTransform(36, mean, crop=32), num_workers=2)
n = 0
with _w.catch_warnings(record=True):
    _w.simplefilter("always")
    for xb, yb in loader:
        x = xb.numpy() if hasattr(xb, "numpy") else np.asarray(xb)
        assert np.isfinite(x).all(), "non-finite pixels reached a batch"
        assert x.shape[1:] == (32, 32, 3), f"batch shape {x.shape}"
        n += len(x)
assert n + folder.num_skipped == len(folder), f"{n} loaded + {folder.num_skipped} skipped != {len(folder)} files"
if EVALUATE:
    r = vc.evaluate(MODEL, ROOT, crop=32, scale=36, device="cpu", num_workers=1)
    assert r["n"] + folder.num_skipped == len(folder), f"evaluate counted {r['n']} of {len(folder)}"
    assert 0 <= r["top1_err"] <= 1 and 0 <= r["top5_err"] <= r["top1_err"], r
'''


def image_cases(work: Path, rng: random.Random, n_files: int, n_pipeline: int):
    base_dir = work / "img-base"
    bases = make_base_images(base_dir)
    cases = []
    for name, want in bases.items():   # the unmutated images: the right brightness
        cases.append(case("images", f"base:{name}", IMAGE_CHECK, "ok", PATH=str(base_dir / name), WANT=want))
    mut_dir = work / "img-mutated"
    mut_dir.mkdir(exist_ok=True)
    names = sorted(bases)
    for i in range(n_files):
        src = rng.choice(names)
        how, blob = mutate((base_dir / src).read_bytes(), rng)
        path = mut_dir / f"{i:05d}-{how}-{src}"
        path.write_bytes(blob)
        cases.append(case("images", f"load_rgb:{path.name}", IMAGE_CHECK, "either", PATH=str(path), WANT=None))
    for i in range(n_pipeline):   # ImageFolder + DataLoader (+ evaluate): good files with mutated ones among them
        root = work / f"img-folder-{i:03d}"
        for c in ("a", "b"):
            (root / c).mkdir(parents=True, exist_ok=True)
            for j in range(3):
                src = rng.choice(names)
                blob = (base_dir / src).read_bytes()
                if rng.random() < 0.5:
                    blob = mutate(blob, rng)[1]
                (root / c / f"{j}{Path(src).suffix}").write_bytes(blob)
        cases.append(case("images", f"pipeline:{root.name}", PIPELINE_CHECK, "either", timeout=120, ROOT=str(root),
                          EVALUATE=i % 4 == 0))
    return cases


# ---------------------------------------------------------------------------------------------------------------
# checkpoints: crafted and mutated files through every loader
# ---------------------------------------------------------------------------------------------------------------

def _st_parts(blob: bytes):
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _st_join(header: dict, data: bytes, pad=True) -> bytes:
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def crafted_checkpoints(blob: bytes):
    """(name, bytes) of files whose headers lie in one specific way."""
    header, data = _st_parts(blob)
    names = [k for k in header if k != "__metadata__"]
    # a weight with distinct extents, so a reversed shape really is another shape
    first = next(k for k in names if len(set(header[k]["shape"])) == len(header[k]["shape"]) > 1)
    out = []

    def edit(name, fn):
        h = json.loads(json.dumps(header))
        fn(h)
        out.append((name, _st_join(h, data)))

    edit("dtype-F64", lambda h: h[first].__setitem__("dtype", "F64"))
    edit("dtype-I32", lambda h: h[first].__setitem__("dtype", "I32"))
    edit("dtype-F16", lambda h: h[first].__setitem__("dtype", "F16"))
    edit("dtype-unknown", lambda h: h[first].__setitem__("dtype", "Q99"))
    edit("dtype-number", lambda h: h[first].__setitem__("dtype", 7))
    edit("shape-negative", lambda h: h[first].__setitem__("shape", [-1] + h[first]["shape"][1:]))
    edit("shape-swapped", lambda h: h[first].__setitem__("shape", h[first]["shape"][::-1]))
    edit("shape-huge", lambda h: h[first].__setitem__("shape", [2**62, 2**62]))
    edit("shape-float", lambda h: h[first].__setitem__("shape", [1.5]))
    edit("shape-string", lambda h: h[first].__setitem__("shape", "3"))
    edit("shape-bool", lambda h: h[first].__setitem__("shape", [True] * len(h[first]["shape"])))
    edit("shape-2**64", lambda h: h[first].__setitem__("shape", [2**64 + 4]))
    edit("offsets-overlap", lambda h: h[names[1]].__setitem__("data_offsets", h[first]["data_offsets"])
         if h[names[1]]["dtype"] == h[first]["dtype"] else None)
    edit("offsets-beyond", lambda h: h[first].__setitem__("data_offsets", [0, 10**12]))
    edit("offsets-negative", lambda h: h[first].__setitem__("data_offsets", [-8, 0]))
    edit("offsets-reversed", lambda h: h[first].__setitem__("data_offsets", h[first]["data_offsets"][::-1]))
    edit("offsets-missing", lambda h: h[first].pop("data_offsets"))
    edit("offsets-huge", lambda h: h[first].__setitem__("data_offsets", [2**64, 2**64 + 4]))
    edit("missing-tensor", lambda h: h.pop(first))
    edit("extra-tensor", lambda h: h.__setitem__("zz/extra", {"dtype": "U8", "shape": [0], "data_offsets": [len(data), len(data)]}))
    edit("metadata-nonstring", lambda h: h["__metadata__"].__setitem__("vggcore", {"a": 1}))
    edit("metadata-missing", lambda h: h.pop("__metadata__"))
    edit("metadata-list", lambda h: h.__setitem__("__metadata__", [1, 2]))
    edit("metadata-bad-json", lambda h: h["__metadata__"].__setitem__("vggcore", "{not json"))
    edit("metadata-nested", lambda h: h["__metadata__"].__setitem__("vggcore", "[" * 100000 + "]" * 100000))
    edit("metadata-nested-dict", lambda h: h["__metadata__"].__setitem__("vggcore", '{"a":' * 50000 + "1" + "}" * 50000))
    edit("metadata-wrong-kind", lambda h: h["__metadata__"].__setitem__("vggcore", "[1, 2, 3]"))
    edit("metadata-tensor-ref-missing", lambda h: h["__metadata__"].__setitem__(
        "vggcore", h["__metadata__"]["vggcore"].replace(first, "no/such/tensor", 1)))
    edit("metadata-checksum-garbage", lambda h: h["__metadata__"].__setitem__("vggcore_crc32", "zzz"))
    edit("metadata-checksum-dropped", lambda h: h["__metadata__"].pop("vggcore_crc32", None))
    edit("entry-not-dict", lambda h: h.__setitem__(first, [1, 2]))
    h = json.dumps(header).encode()
    out.append(("header-len-huge", struct.pack("<Q", 2**62) + h + data))
    out.append(("header-len-2**64-1", struct.pack("<Q", 2**64 - 1) + h + data))
    out.append(("header-len-short", struct.pack("<Q", len(h) - 5) + h + data))
    out.append(("header-len-long", struct.pack("<Q", len(h) + 5) + h + data))
    out.append(("header-not-utf8", struct.pack("<Q", 8) + b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8" + data))
    out.append(("header-not-object", _st_join([1, 2, 3], data)))     # type: ignore[arg-type]
    out.append(("header-dup-keys", struct.pack("<Q", len(h) * 2 + 1) + h[:-1] + b"," + h[1:] + b" " + data))
    out.append(("empty", b""))
    out.append(("seven-bytes", b"\x01" * 7))
    out.append(("only-header", blob[:8 + struct.unpack("<Q", blob[:8])[0]]))
    out.append(("data-doubled", blob + data))
    out.append(("pickle-payload", b"\x80\x04\x95" + b"cos\nsystem\n(S'touch /tmp/probe-pwned'\ntR." ))
    out.append(("zip-payload", b"PK\x03\x04" + b"\0" * 100))
    return out


LOADERS = {
    "load_file": "checkpoint.load_file(PATH)",
    "load_state": "got = checkpoint.load_state(PATH); assert state_equal(got, ORIGINAL), 'loaded state differs from the saved one'",
    "models.load": "m = vc.models.load(PATH); assert all(np.array_equal(np.asarray(p), ORIGINAL['model'][k]) for k, p in m.state_dict().items()), 'weights differ'",
    "load_weights": "vc.interop.load_weights(PATH)",
    "from_torchvision": "vc.models.from_torchvision(PATH)",
    "cli-info": "cli('info', PATH)",
    "cli-eval": "cli('eval', PATH, '--data', DATA + '/val', '--device', 'cpu', '--no-progress')",
    "train-init_from": "vc.train(data=DATA, epochs=1, init_from=PATH, **TINY)",
}


INTEROP_CHECK = r'''
m = vc.interop.load_weights(PATH)
if not DATA_FLIPPABLE:   # a format with checksums (zip CRC-32 in .pth, per-tensor CRCs): what loads is what was saved
    ref = vc.interop.load_weights(ORIGINAL_PATH)
    a, b = m.state_dict(), ref.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a), \
        "a damaged file loaded as different weights"
'''


def interop_cases(work: Path, rng: random.Random, n_mutations: int):
    """Mutated torchvision (.pth, .safetensors) and Caffe files through load_weights and the CLI's eval. Caffe's
    protobuf has no checksum, so a flipped bit in its float data can only load as other weights; there the probe
    checks for crashes, hangs and messages only."""
    cases = []
    folder = work / "interop-mutated"
    folder.mkdir(exist_ok=True)
    for src in ("net.pth", "net-tv.safetensors", "net.caffemodel"):
        path = work / "ckpt" / src
        if not path.exists():
            continue
        blob = path.read_bytes()
        for i in range(n_mutations):
            b = bytearray(blob)
            how = rng.choice(["flip", "flip", "truncate", "flip-head", "zero-block"])
            if how == "flip":
                j = rng.randrange(len(b)); b[j] ^= 1 << rng.randrange(8)
            elif how == "flip-head":
                j = rng.randrange(min(200, len(b))); b[j] ^= 1 << rng.randrange(8)
            elif how == "zero-block":
                j = rng.randrange(len(b)); b[j:j + 64] = bytes(len(b[j:j + 64]))
            else:
                b = b[:rng.randrange(0, len(b))]
            if bytes(b) == blob:
                continue
            out = folder / f"{how}-{i:04d}-{src}"
            out.write_bytes(bytes(b))
            cases.append(case("checkpoints", f"load_weights:{out.name}", INTEROP_CHECK, "either", PATH=str(out),
                              ORIGINAL_PATH=str(path), DATA_FLIPPABLE=src.endswith(".caffemodel")))
            if i % 10 == 0:
                cases.append(case("checkpoints", f"cli-eval:{out.name}",
                                  "cli('eval', PATH, '--data', DATA + '/val', '--device', 'cpu', '--no-progress')",
                                  "either", timeout=120, PATH=str(out)))
    return cases


def checkpoint_cases(work: Path, ckpt: Path, rng: random.Random, n_mutations: int):
    blob = ckpt.read_bytes()
    folder = work / "ckpt-mutated"
    folder.mkdir(exist_ok=True)
    files = [(f"crafted-{n}", b) for n, b in crafted_checkpoints(blob)]
    header_len = struct.unpack("<Q", blob[:8])[0]
    for i in range(n_mutations):
        b = bytearray(blob)
        how = rng.choice(["flip-data", "flip-data", "flip-header", "truncate", "flip-anywhere", "zero-block"])
        if how == "flip-data":
            j = rng.randrange(8 + header_len, len(b)); b[j] ^= 1 << rng.randrange(8)
        elif how == "flip-header":
            j = rng.randrange(0, 8 + header_len); b[j] ^= 1 << rng.randrange(8)
        elif how == "flip-anywhere":
            for _ in range(rng.randrange(1, 6)):
                j = rng.randrange(len(b)); b[j] ^= 1 << rng.randrange(8)
        elif how == "zero-block":
            j = rng.randrange(8 + header_len, len(b)); b[j:j + 64] = bytes(len(b[j:j + 64]))
            if bytes(b) == blob:
                continue
        else:
            b = b[:rng.randrange(0, len(b))]
        files.append((f"{how}-{i:04d}", bytes(b)))
    cases = []
    for name, data in files:
        path = folder / f"{name}.safetensors"
        path.write_bytes(data)
        loaders = list(LOADERS)
        if not name.startswith("crafted"):
            loaders = rng.sample(loaders[:5], 2) + (["cli-info"] if rng.random() < 0.2 else [])
        for loader in loaders:
            # a crafted lie must be refused; a mutation may hit bytes nobody reads (padding), but then what loads
            # must equal what was saved (the load_state/models.load checks say so)
            expect = "either"
            if name.startswith("crafted") and not name.endswith(("extra-tensor", "checksum-dropped", "data-doubled",
                                                                 "offsets-overlap", "header-dup-keys")):
                expect = "refuse"
            if loader == "load_file" and "metadata-" in name and "checksum" not in name:
                expect = "either"   # load_file returns the metadata map; reading the training state is load_state's job
            if loader.startswith("cli"):
                expect = "either"
            code = LOADERS[loader] + "\nassert not os.path.exists('/tmp/probe-pwned'), 'code from a file ran'\n"
            if loader == "cli-eval" or loader == "cli-info":
                code = f"code, text = {LOADERS[loader]}\nassert code != 0 or {expect!r} != 'refuse', 'the CLI accepted ' + PATH\n"
            cases.append(case("checkpoints", f"{loader}:{name}", code, expect if not loader.startswith("cli") else "either",
                              timeout=120 if loader in ("cli-eval", "train-init_from") else 30, PATH=str(path)))
    return cases


# ---------------------------------------------------------------------------------------------------------------
# scenarios run by the driver itself: kill -9 + resume, SIGINT, disk full
# ---------------------------------------------------------------------------------------------------------------

def _default_sigint():
    # A background job of a non-interactive shell starts with SIGINT ignored, and children inherit that: Python
    # then installs no KeyboardInterrupt handler and vggcore, rightly, leaves the choice alone. The scenarios
    # deliver SIGINT on purpose, so their children get the default disposition whatever the probe's own is.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli_train(args, cwd, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "vggcore", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint,
                            **kw)


def _tensors_bytes(path):
    sys.path.insert(0, "")
    from vggcore import checkpoint
    state = checkpoint.load_state(path)
    return state


def _weights_equal(a, b):
    import numpy as np
    ma, mb = a["model"], b["model"]
    return ma.keys() == mb.keys() and all(np.asarray(ma[k]).tobytes() == np.asarray(mb[k]).tobytes() for k in ma)


TRAIN_ARGS = ["--width", "0.0625", "--fc-width", "32", "--crop", "32", "--scale", "32,40", "--batch-size", "16",
              "--init", "he", "--dropout", "0", "--workers", "2", "--stats-sample", "50", "--device", "cpu",
              "--no-progress", "--quiet"]


def kill9_scenarios(work: Path, data: Path, env, rng: random.Random, n: int, epochs: int):
    results = []
    ref_dir = work / "kill9-ref"
    t0 = time.monotonic()
    p = _cli_train(["--data", str(data), "--epochs", str(epochs), "--checkpoint-dir", str(ref_dir), *TRAIN_ARGS],
                   work, env)
    out, err = p.communicate(timeout=900)
    full = time.monotonic() - t0
    if p.returncode != 0:
        return [("kill9:reference", "exception", err[-400:])]
    ref = _tensors_bytes(ref_dir / "last.safetensors")
    for i in range(n):
        d = work / f"kill9-{i:02d}"
        at = rng.uniform(0.25 * full, full * 1.05)   # from the interpreter's start to just after the run's end
        p = _cli_train(["--data", str(data), "--epochs", str(epochs), "--checkpoint-dir", str(d), *TRAIN_ARGS],
                       work, env)
        try:
            p.wait(timeout=at)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
        p.communicate()
        resumed = ["--resume"] if (d / "last.safetensors").exists() else []
        q = _cli_train(["--data", str(data), "--epochs", str(epochs), "--checkpoint-dir", str(d), *resumed,
                        *(["--overwrite"] if not resumed and d.exists() and any(d.iterdir()) else []), *TRAIN_ARGS],
                       work, env)
        out, err = q.communicate(timeout=900)
        name = f"kill9:{i}@{at:.1f}s"
        if q.returncode != 0:
            results.append((name, "lost", f"resume failed (exit {q.returncode}): {err.strip()[-300:]}"))
            continue
        if "Traceback" in err:
            results.append((name, "traceback", err[-300:]))
            continue
        left = [x.name for x in d.iterdir() if x.name.endswith(".tmp") or ".tmp." in x.name]
        got = _tensors_bytes(d / "last.safetensors")
        if not _weights_equal(got, ref):
            results.append((name, "lost", "resumed weights differ from the uninterrupted run"))
        elif left:
            results.append((name, "lost", f"temporaries left: {left}"))
        else:
            results.append((name, "good", f"resumed {'from a checkpoint' if resumed else 'from scratch'}"))
    return results


SIGINT_OPS = {
    # (device, code that runs for seconds uninterrupted: the signal comes 0.5 s after 'start', so an op that ends
    # sooner proves nothing. Sized on a quiet 2-core AVX2 machine, where an 8-image conv3x3 took 0.37 s)
    "cpu-conv3x3": ("cpu", "F.conv2d(vc.ones(32, 64, 64, 512), vc.ones(512, 3, 3, 512), None, padding=1)"),
    "cpu-first-layer-dw": ("cpu", "x = vc.ones(32, 256, 256, 3, requires_grad=True); w = vc.ones(64, 11, 11, 3, requires_grad=True)\n"
                                  "y = F.conv2d(x, w, None, padding=5)\nprint('start', flush=True)\ny.backward(vc.ones(*y.shape))"),
    "cpu-linear-small-batch": ("cpu", "x = vc.ones(15, 16384); w = vc.ones(16384, 16384)\nprint('start', flush=True)\n"
                                      "for _ in range(4): F.linear(x, w)"),
    "cpu-linear-gemm": ("cpu", "F.linear(vc.ones(4096, 8192), vc.ones(8192, 8192))"),
    "cpu-lrn": ("cpu", "F.local_response_norm(vc.ones(64, 112, 112, 256), size=5)"),
    "sim-conv": ("sim", "F.conv2d(vc.ones(8, 64, 64, 128, device='sim'), vc.ones(128, 3, 3, 128, device='sim'), None, padding=1)"),
    "sim-first-layer-dw": ("sim", "x = vc.ones(8, 128, 128, 3, device='sim', requires_grad=True); w = vc.ones(64, 3, 3, 3, device='sim', requires_grad=True)\n"
                                  "y = F.conv2d(x, w, None, padding=1)\nprint('start', flush=True)\ny.backward(vc.ones(*y.shape, device='sim'))"),
    "sim-linear": ("sim", "F.linear(vc.ones(64, 8192, device='sim'), vc.ones(4096, 8192, device='sim'))"),
    "sim-pool": ("sim", "F.max_pool2d(vc.ones(64, 224, 224, 64, device='sim'), 2, 2)"),
}


def sigint_scenarios(work: Path, data: Path, env, rng: random.Random, n_cli: int, bound: float):
    results = []
    for name, (dev, code) in SIGINT_OPS.items():
        src = ("import time, numpy as np, vggcore as vc, vggcore.nn.functional as F\n"
               + ("" if "print('start'" in code else "print('start', flush=True)\n")
               + "t = time.time()\ntry:\n" + textwrap.indent(code, "    ")
               + "\n    print('finished', time.time() - t, flush=True)\n"
               "except KeyboardInterrupt as e:\n    print('interrupted', e, flush=True)\n"
               "print('alive', float(F.relu(vc.ones(2)).numpy().sum()), flush=True)\n")
        p = subprocess.Popen([sys.executable, "-c", src], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=CHILD_CWD, env=env, preexec_fn=_default_sigint)
        line = p.stdout.readline()
        if line.strip() != "start":
            p.kill(); out, err = p.communicate()
            results.append((f"sigint:{name}", "crash", (line + err)[-300:]))
            continue
        time.sleep(0.5)
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill(); out, err = p.communicate()
            results.append((f"sigint:{name}", "hang", "no exit within 120 s of SIGINT"))
            continue
        took = time.monotonic() - sent
        if p.returncode != 0:
            results.append((f"sigint:{name}", "crash", f"exit {p.returncode}: {err[-300:]}"))
        elif "finished" in out:
            results.append((f"sigint:{name}", "hang", f"the op ran to the end ({took:.1f} s after SIGINT): {out.strip()}"))
        elif "interrupted" not in out or "alive 2.0" not in out:
            results.append((f"sigint:{name}", "exception", (out + err)[-300:]))
        elif took > bound:
            results.append((f"sigint:{name}", "hang", f"stopped {took:.1f} s after SIGINT (bound {bound} s)"))
        else:
            results.append((f"sigint:{name}", "good", f"stopped {took:.2f} s after SIGINT"))
    # The moments fall inside a run: drawn over the time an uninterrupted one takes here (0.6 s on a quiet 2-core
    # machine, several seconds on a loaded one), so that a moment after the run's end does not count as a case.
    t0 = time.monotonic()
    p = _cli_train(["--data", str(data), "--epochs", "3", "--checkpoint-dir", str(work / "sigint-cli-ref"),
                    *TRAIN_ARGS], work, env)
    p.communicate(timeout=900)
    full = time.monotonic() - t0
    for i in range(n_cli):
        d = work / f"sigint-cli-{i:02d}"
        p = _cli_train(["--data", str(data), "--epochs", "3", "--checkpoint-dir", str(d), *TRAIN_ARGS], work, env)
        at = rng.uniform(0.3 * full, 0.9 * full)
        try:
            p.wait(timeout=at)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            out, err = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill(); p.communicate()
            results.append((f"sigint:cli-train-{i}@{at:.1f}s", "hang", "no exit within 60 s of SIGINT"))
            continue
        took = time.monotonic() - sent
        name = f"sigint:cli-train-{i}@{at:.1f}s"
        if "Traceback" in err:
            results.append((name, "traceback", err[-400:]))
        elif p.returncode not in (0, 130):
            results.append((name, "exception", f"exit {p.returncode}: {err[-300:]}"))
        elif took > bound:
            results.append((name, "hang", f"exit {took:.1f} s after SIGINT"))
        else:
            bad = _check_folder(d)
            results.append((name, "lost", bad) if bad else (name, "good", f"exit {p.returncode} after {took:.2f} s"))
    return results


def _check_folder(d: Path):
    """'' when every checkpoint in d loads and no temporary is left; else what is wrong."""
    from vggcore import checkpoint
    if not d.exists():
        return ""
    for f in d.iterdir():
        if f.name.startswith(".") and ".tmp" in f.name:
            return f"temporary left: {f.name}"
        if f.suffix == ".safetensors":
            try:
                checkpoint.load_state(f)
            except Exception as e:  # noqa: BLE001
                return f"{f.name} does not load: {e}"
    return ""


def diskfull_scenarios(work: Path, data: Path, env, sizes_kb):
    results = []
    mnt = work / "full"
    mnt.mkdir(exist_ok=True)
    for kb in sizes_kb:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(mnt)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            return [("diskfull:mount", "skipped", r.stderr.strip())]
        try:
            d = mnt / "ck"
            for resume in (False, True):
                p = _cli_train(["--data", str(data), "--epochs", "2" if not resume else "3", "--checkpoint-dir", str(d),
                                *(["--resume"] if resume and (d / "last.safetensors").exists() else []),
                                *(["--overwrite"] if resume and not (d / "last.safetensors").exists() and d.exists() else []),
                                *TRAIN_ARGS], work, env)
                out, err = p.communicate(timeout=600)
                name = f"diskfull:{kb}KiB{':resume' if resume else ''}"
                lines = [x for x in err.strip().splitlines() if x.strip()]
                if "Traceback" in err:
                    results.append((name, "traceback", err[-400:]))
                elif p.returncode not in (0, 1):
                    results.append((name, "crash", f"exit {p.returncode}: {err[-300:]}"))
                elif p.returncode == 1 and not (lines and lines[-1].startswith("error:") and len(lines[-1]) > 20):
                    results.append((name, "leak", f"exit 1 without a one-line error: {err[-300:]}"))
                else:
                    bad = _check_folder(d)
                    results.append((name, "lost", bad) if bad else
                                   (name, "good", f"exit {p.returncode}: {lines[-1][:160] if lines else ''}"))
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
    return results


# ---------------------------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------------------------

SETUP = r'''
import json, sys, numpy as np, vggcore as vc
from vggcore import datasets, checkpoint
work = sys.argv[1]
data = datasets.generate(work + "/shapes", train_per_class=4, val_per_class=2, size=40, seed=3)
TINY = dict(config="A", width=1 / 16, fc_width=32, crop=32, scale=(32, 40), batch_size=16, init="he", dropout=0.0,
            num_workers=2, verbose=False, progress=False, stats_sample=50)
vc.train(data=data, epochs=1, checkpoint_dir=work + "/ckpt", device="cpu", **TINY)
import warnings
from vggcore.interop import caffe, torchvision
model = vc.models.load(work + "/ckpt/best.safetensors")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    caffe.to_caffe(model, work + "/ckpt/net.caffemodel")
torchvision.save_torchvision(model, work + "/ckpt/net-tv.safetensors")
try:
    torchvision.save_torchvision(model, work + "/ckpt/net.pth")
except ImportError:
    pass
print(json.dumps({"data": str(data)}))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument("--kinds", default="api,cli,env,images,checkpoints,kill9,sigint,diskfull")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the number of random cases")
    ap.add_argument("--timeout", type=float, default=30.0, help="default seconds per case")
    ap.add_argument("--rss-limit-mb", type=int, default=3000, help="peak memory of one case that counts as growth")
    ap.add_argument("--sigint-bound", type=float, default=5.0, help="seconds within which SIGINT must stop an op")
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temporary one, removed after)")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="vggcore-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    global CHILD_CWD
    CHILD_CWD = str(work / "cwd")
    os.makedirs(CHILD_CWD, exist_ok=True)
    env = dict(os.environ, VGGCORE_CACHE=str(work / "cache"))
    t_start = time.time()
    import vggcore as vc
    devices = [d for d in vc.devices() if d in ("cpu", "sim")]
    setup = subprocess.run([sys.executable, "-c", SETUP, str(work)], capture_output=True, text=True, env=env,
                           cwd=CHILD_CWD)
    if setup.returncode != 0:
        sys.exit(f"probe setup failed:\n{setup.stderr}")
    data = Path(json.loads(setup.stdout.strip().splitlines()[-1])["data"])
    ckpt = work / "ckpt" / "last.safetensors"
    globals_env = {"DATA": str(data), "DEVICES": devices, "MODEL": str(work / "ckpt" / "best.safetensors"),
                   "TINY": dict(config="A", width=1 / 16, fc_width=32, crop=32, scale=(32, 40), batch_size=16,
                                init="he", dropout=0.0, num_workers=2, verbose=False, progress=False,
                                stats_sample=50, device="cpu")}
    cases = []
    if "api" in kinds:
        cases += api_cases(devices, rng)
    if "cli" in kinds:
        cases += cli_cases()
    if "images" in kinds:
        cases += image_cases(work, rng, int(1500 * args.scale), int(40 * args.scale))
    if "checkpoints" in kinds:
        cases += checkpoint_cases(work, ckpt, rng, int(300 * args.scale))
        cases += interop_cases(work, rng, int(100 * args.scale))
    for c in cases:
        c.setdefault("env", {})
        for k, v in globals_env.items():
            c["env"].setdefault(k, v)
        if c["kind"] == "checkpoints":
            c["code"] = ("ORIGINAL = checkpoint.load_state(" + repr(str(ckpt)) + ")\n" if "ORIGINAL" in c["code"] else "") + c["code"]
    # the TINY dict of the api cases must not carry device (the cases pass it)
    for c in cases:
        if c["kind"] == "api":
            c["env"]["TINY"] = {k: v for k, v in c["env"]["TINY"].items() if k != "device"}
    print(f"probe: {len(cases)} in-process cases on {', '.join(devices)}; scratch {work}", flush=True)
    results = []   # (kind, name, outcome, detail, code)
    batch = 400
    for i in range(0, len(cases), batch):
        chunk = cases[i:i + batch]
        for c, (outcome, detail) in zip(chunk, run_batch(chunk, args.timeout, args.rss_limit_mb, env)):
            results.append((c["kind"], c["name"], outcome, detail, c["code"], c.get("env", {})))
        done = Counter(r[2] for r in results)
        print(f"  {len(results)}/{len(cases)} cases: {dict(done)} ({time.time() - t_start:.0f} s)", flush=True)
    if "env" in kinds:
        for name, outcome, detail in env_scenarios(env, devices):
            results.append(("env", name, outcome, detail, "", {}))
        print(f"  env done ({time.time() - t_start:.0f} s)", flush=True)
    if "kill9" in kinds:
        for name, outcome, detail in kill9_scenarios(work, data, env, rng, max(1, int(12 * args.scale)), 4):
            results.append(("kill9", name, outcome, detail, "", {}))
        print(f"  kill9 done ({time.time() - t_start:.0f} s)", flush=True)
    if "sigint" in kinds:
        for name, outcome, detail in sigint_scenarios(work, data, env, rng, max(1, int(6 * args.scale)),
                                                      args.sigint_bound):
            results.append(("sigint", name, outcome, detail, "", {}))
        print(f"  sigint done ({time.time() - t_start:.0f} s)", flush=True)
    if "diskfull" in kinds:
        # from too small for one checkpoint to room for a few: the write that fails moves from the first to a later one
        kib = max(1, (work / "ckpt" / "last.safetensors").stat().st_size // 1024)
        sizes = [8] + [int(kib * f) for f in (0.6, 1.3, 2.2, 3.1, 4.5)]
        for name, outcome, detail in diskfull_scenarios(work, data, env, sizes):
            results.append(("diskfull", name, outcome, detail, "", {}))
        print(f"  diskfull done ({time.time() - t_start:.0f} s)", flush=True)

    per_kind = defaultdict(Counter)
    for kind, _, outcome, *_ in results:
        per_kind[kind][outcome] += 1
    findings = [r for r in results if r[2] in FINDINGS]
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": commit,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, {platform.system()}",
        "devices": devices, "seconds": round(time.time() - t_start), "seed": args.seed, "scale": args.scale,
        "counts": {k: dict(v) for k, v in sorted(per_kind.items())},
        "scenarios": [{"kind": k, "case": n, "outcome": o, "detail": d} for k, n, o, d, c, e in results
                      if k in ("kill9", "sigint", "diskfull", "env")],
        "findings": [{"kind": k, "case": n, "outcome": o, "detail": d, "code": c,
                      "env": {a: b for a, b in e.items() if a not in ("DEVICES", "TINY")}}
                     for k, n, o, d, c, e in findings],
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"probe: {len(results)} cases in {report['seconds']} s, {len(findings)} findings -> {args.out}")
    for kind, counts in sorted(per_kind.items()):
        print(f"  {kind:12s} {sum(counts.values()):6d}  " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for f in findings[:60]:
        print(f"  FINDING {f[2]:9s} {f[1][:90]}: {f[3][:200]}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if findings else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(main())
