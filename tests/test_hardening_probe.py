"""Hardening found by re-running the hostile-user probe (tools/probe/probe.py): Ctrl-C inside the first-layer
conv gradients and the linear layer on cpu and sim, arguments that Python's own conversions would silently change
(crop=0, seed=1e30, flip="no", training="no", lr=True), ints >= 2**63, and sizes that must be refused before
anything is allocated (a net or a test scale bigger than memory). Ctrl-C cases run in child processes with
timeouts."""

import math
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

import vggcore as vc
import vggcore.nn.functional as F
from child_process import interrupt_after_start
from vggcore import datasets

CHILD_CWD = tempfile.mkdtemp(prefix="vggcore-probe-test-")   # outside the source tree: the installed package
STOP_BOUND_S = 5.0


TRY = """
t = time.time()
try:
    {op}
    print("finished", time.time() - t, flush=True)
except KeyboardInterrupt as e:
    print("interrupted", time.time() - t, e, flush=True)
"""


def _interrupt(setup, op, wait_s=0.3):
    """Runs `setup` in a child (it prints "start [seconds of one uninterrupted run]"), then the long `op`; sends
    SIGINT `wait_s` (or a tenth of that run) after "start". Returns (output, seconds from SIGINT to exit, run)."""
    src = textwrap.dedent("""
        import time, numpy as np, vggcore as vc, vggcore.nn.functional as F
    """) + textwrap.dedent(setup) + TRY.format(op=op) + textwrap.dedent("""
        print("alive", float(F.relu(vc.ones(3)).numpy().sum()), flush=True)
    """)
    out, stopped, full = interrupt_after_start(src, CHILD_CWD, wait_s)
    assert "interrupted" in out and "Ctrl-C" in out and "finished" not in out, out
    assert "alive 3.0" in out, out            # the engine still works after the interrupted op
    return out, stopped, full




@pytest.mark.parametrize("device, n, side, k", [("cpu", 64, 128, 11), ("sim", 4, 64, 3)])
def test_sigint_stops_first_layer_conv_gradients_promptly(device, n, side, k):
    """3 input channels: the small-channel kernels compute dw and dx on AVX-512 machines, the GEMM path here. The
    child times one uninterrupted backward (under a second on a quiet 2-core machine: a fixed delay before SIGINT
    would let it finish first there), then SIGINT at a tenth of that must stop the second in under half of it."""
    out, stopped, full = _interrupt(f"""
        x = vc.ones({n}, {side}, {side}, 3, device="{device}", requires_grad=True)
        w = vc.ones(64, {k}, {k}, 3, device="{device}", requires_grad=True)
        y = F.conv2d(x, w, None, padding={k // 2})
        g = vc.ones(*y.shape, device="{device}")
        t = time.time(); y.backward(g, retain_graph=True); full = time.time() - t
        print("start", full, flush=True)
    """, "y.backward(g)")
    ran = float(next(line for line in out.splitlines() if line.startswith("interrupted")).split()[1])
    assert ran < 0.5 * full, f"the {full:.2f} s backward ran {ran:.2f} s despite SIGINT at {0.1 * full:.2f} s:\n{out}"
    assert stopped < STOP_BOUND_S, f"SIGINT took {stopped:.2f} s to stop the backward pass:\n{out}"


def test_sigint_stops_a_small_batch_linear_promptly():
    """Fewer than 16 rows: the weight-streaming kernels, not the GEMM. The child times one uninterrupted run
    (about 2 s here for 1 GiB of weights), then SIGINT at a tenth of that must stop the second run in under half
    of it."""
    out, stopped, full = _interrupt("""
        x = vc.ones(15, 16384); w = vc.ones(16384, 16384)
        t = time.time(); F.linear(x, w); full = time.time() - t
        print("start", full, flush=True)
    """, "F.linear(x, w)")
    # the op's own time in the child (the exit that frees 1 GiB comes after it)
    ran = float(next(line for line in out.splitlines() if line.startswith("interrupted")).split()[1])
    print(f"small-batch linear: {full:.2f} s uninterrupted, stopped after {ran:.2f} s")
    assert ran < 0.5 * full, f"the {full:.2f} s linear ran {ran:.2f} s despite SIGINT at {0.1 * full:.2f} s:\n{out}"


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_sigint_stops_a_cpu_lrn_promptly(direction):
    """The probe found Ctrl-C waiting for a 2 s LRN to finish. The child times one uninterrupted run, then SIGINT
    at a tenth of that must stop the second run in under half of it."""
    out, stopped, full = _interrupt("""
        x = vc.ones(64, 56, 56, 256, requires_grad=True)
        y = F.local_response_norm(x, size=5, alpha=5e-4, beta=0.75, k=2.0)
        g = vc.ones(*y.shape)
        run = (lambda: F.local_response_norm(x, size=5, alpha=5e-4, beta=0.75, k=2.0)) if "%s" == "forward" else \
              (lambda: y.backward(g, retain_graph=True))
        t = time.time(); run(); full = time.time() - t
        print("start", full, flush=True)
    """ % direction, "run()")
    ran = float(next(line for line in out.splitlines() if line.startswith("interrupted")).split()[1])
    print(f"cpu LRN {direction}: {full:.2f} s uninterrupted, stopped after {ran:.2f} s")
    assert ran < 0.5 * full, f"the {full:.2f} s LRN ran {ran:.2f} s despite SIGINT at {0.1 * full:.2f} s:\n{out}"


def test_sigint_stops_a_sim_linear_promptly():
    out, stopped, _ = _interrupt("""
        x = vc.ones(8, 8192, device="sim"); w = vc.ones(2048, 8192, device="sim")
        print("start", flush=True)
    """, "F.linear(x, w)")
    assert stopped < STOP_BOUND_S, f"SIGINT took {stopped:.2f} s to stop the sim linear:\n{out}"


# ---- values Python's conversions would silently change ----------------------------------------------------------

@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return datasets.generate(tmp_path_factory.mktemp("data") / "shapes", train_per_class=2, val_per_class=1,
                             size=40, seed=3)


@pytest.fixture(scope="module")
def tiny_model():
    return vc.models.vgg("A", num_classes=10, width=1 / 16, fc_width=8, input_size=32)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(crop=0), ValueError, "evaluate: crop must be >= 1, got 0"),
    (dict(crop=float("nan")), TypeError, "evaluate: crop must be an int, got float nan"),
    (dict(scale=2**63), ValueError, "evaluate: scale must be <= "),
    (dict(scale=b"x"), TypeError, "evaluate: scale must be an int Q or a list"),
    (dict(scale=10**6), MemoryError, r"evaluate: scale 1000000 means rescaled images of about \d+ GiB"),
    (dict(batch_size=True), TypeError, "evaluate: batch_size must be an int, got bool"),
    (dict(batch_size=float("nan")), TypeError, "evaluate: batch_size must be an int"),
    (dict(dense=-1), TypeError, "evaluate: dense must be True or False, got int -1"),
    (dict(multi_crop="yes"), TypeError, "evaluate: multi_crop must be True or False"),
])
def test_evaluate_refuses_arguments_it_would_change(shapes, tiny_model, kwargs, error, message):
    with pytest.raises(error, match=message):
        vc.evaluate(tiny_model, shapes / "val", device="cpu", **kwargs)


TINY = dict(config="A", width=1 / 16, fc_width=8, crop=32, scale=(32, 40), batch_size=8, init="he", epochs=1,
            verbose=False, progress=False, stats_sample=10, device="cpu")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(lr=True), TypeError, "train: lr must be a number, got bool True"),
    (dict(lr=[]), TypeError, "train: lr must be a number, got list"),
    (dict(momentum=False), TypeError, "train: momentum must be a number, got bool"),
    (dict(seed=1e30), TypeError, "train: seed must be an int, got float"),
    (dict(seed=-1), ValueError, "train: seed must be >= 0"),
    (dict(max_lr_drops=float("nan")), TypeError, "train: max_lr_drops must be an int, got float nan"),
    (dict(colour_std=True), TypeError, "train: colour_std must be a number, got bool"),
    (dict(flip="no"), TypeError, "train: flip must be True or False, got str 'no'"),
    (dict(nesterov=1), TypeError, "train: nesterov must be True or False"),
    (dict(eval_scale=36.5), TypeError, "train: eval_scale must be an int"),
])
def test_train_refuses_arguments_it_would_change(shapes, kwargs, error, message):
    with pytest.raises(error, match=message):
        vc.train(data=shapes, **{**TINY, **kwargs})


def test_dropout_training_must_be_a_bool():
    x = vc.ones(4, 4)
    with pytest.raises(TypeError, match="dropout: training must be True or False, got str 'no'"):
        F.dropout(x, 0.5, training="no")
    with pytest.raises(TypeError, match="dropout: training must be True or False, got NoneType None"):
        F.dropout(x, 0.5, training=None)
    assert np.array_equal(F.dropout(x, 0.5, training=np.False_).numpy(), x.numpy())


@pytest.mark.parametrize("call", [
    lambda x, w: F.conv2d(x, w, None, stride=2**63),
    lambda x, w: F.conv2d(x, w, None, padding=2**64 + 3),
    lambda x, w: F.max_pool2d(x, kernel_size=10**30),
    lambda x, w: F.avg_pool2d(x, 2, stride=2**63),
    lambda x, w: F.local_response_norm(x, size=2**63),
])
def test_ints_beyond_int64_are_refused_by_name(call):
    x, w = vc.ones(1, 4, 4, 2), vc.ones(3, 3, 3, 2)
    with pytest.raises(ValueError, match=r"^(conv2d|max_pool2d|avg_pool2d|local_response_norm): \w+ must be < 2\*\*63"):
        call(x, w)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(width=100.0), MemoryError, r"vgg: config A with width=100.0.* \(\d+ GiB of float32\), more than this machine"),
    (dict(width=1e6), MemoryError, "more than this machine"),
    (dict(fc_width=2**40), MemoryError, "more than this machine"),
    (dict(width=math.inf), ValueError, "vgg: width must be a positive number, got inf"),
    (dict(width=True), ValueError, "vgg: width must be a positive number, got True"),
    (dict(dropout="3"), ValueError, r"vgg: dropout must be a number in \[0, 1\), got '3'"),
])
def test_vgg_refuses_absurd_options_before_allocating(kwargs, error, message):
    t = time.monotonic()
    with pytest.raises(error, match=message):
        vc.models.vgg("A", **{**dict(width=1 / 16, fc_width=8, input_size=32), **kwargs})
    assert time.monotonic() - t < 5


def test_count_params_does_not_wrap_around():
    from vggcore.models.vgg import count_params
    n = count_params("A", width=1.0, fc_width=2**40, input_size=224)
    assert n > 2**80   # fc7 alone is 2**80 weights; int64 products would wrap


def test_other_entry_points_name_the_argument():
    with pytest.raises(ValueError, match="SGD.load_state_dict: the state lacks lr, momentum"):
        vc.optim.SGD(vc.nn.Linear(3, 4).parameters(), lr=0.1).load_state_dict({})
    with pytest.raises(TypeError, match="set_float32_matmul_precision: precision must be"):
        vc.set_float32_matmul_precision(None)
    with pytest.raises(TypeError, match="export_onnx: input_size must be an int, got float nan"):
        vc.export_onnx(vc.models.vgg("A", width=1 / 16, fc_width=8, input_size=32), "unused.onnx",
                       input_size=float("nan"))


# ---- damaged torch archives -------------------------------------------------------------------------------------

def _damaged_pth(tmp_path):
    """A zip laid out as torch.save writes it, whose data.pkl then has one bit flipped (its CRC-32 fails)."""
    import pickle
    import zipfile
    path = tmp_path / "net.pth"
    payload = pickle.dumps({"features.0.weight": [1.0, 2.0]}, protocol=2)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("net/data.pkl", payload)
        z.writestr("net/byteorder", "little")
    raw = bytearray(path.read_bytes())
    at = raw.index(payload) + len(payload) // 2
    raw[at] ^= 0x04
    path.write_bytes(bytes(raw))
    return path


def test_damaged_pth_is_a_value_error_naming_the_file(tmp_path):
    path = _damaged_pth(tmp_path)
    with pytest.raises(ValueError, match=r"read_pth: .*net.pth is a damaged zip archive \(Bad CRC-32"):
        vc.models.from_torchvision(path)
    with pytest.raises(ValueError, match="damaged zip archive"):
        vc.interop.load_weights(path)


def test_cli_reports_a_damaged_pth_in_one_line(tmp_path, shapes, capsys):
    from vggcore.cli import main
    path = _damaged_pth(tmp_path)
    assert main(["eval", str(path), "--data", str(shapes / "val"), "--device", "cpu", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: read_pth:") and "damaged zip archive" in err[0], err


def _redeflate(source, target):
    """``source``'s zip archive written again with every member deflated (as `zip -r` would), same names."""
    import zipfile
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    return target


def test_a_deflated_pth_still_reads(tmp_path):
    torch = pytest.importorskip("torch")
    weights = {"features.0.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2)}
    torch.save(weights, tmp_path / "stored.pth")
    got = vc.interop.read_pth(_redeflate(tmp_path / "stored.pth", tmp_path / "deflated.pth"))
    np.testing.assert_array_equal(got["features.0.weight"], np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2))


@pytest.mark.parametrize("member", ["storage", "pickle"])
def test_a_decompression_bomb_pth_is_refused_before_it_expands(tmp_path, member):
    """80 MiB of zeros deflate to about 80 KB: read_pth must refuse the member, not allocate the 80 MiB."""
    torch = pytest.importorskip("torch")
    import pickle
    import tracemalloc
    import zipfile
    torch.save({"features.0.weight": torch.zeros(2)}, tmp_path / "small.pth")
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(tmp_path / "small.pth") as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if member == "storage" and info.filename.endswith("/data/0"):
                data = bytes(80 << 20)
            if member == "pickle" and info.filename.endswith("data.pkl"):
                data = pickle.dumps({"pad": b"\0" * (80 << 20)}, protocol=2)
            dst.writestr(info.filename, data)
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"read_pth: .*bomb.pth: member .* expand to 8388\d+ .*decompression bomb"):
            vc.interop.read_pth(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"read_pth allocated {peak} bytes before refusing the member"


# ---- environment and CLI paths ----------------------------------------------------------------------------------

def _child(code, **env):
    import os
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120,
                          cwd=CHILD_CWD, env={**os.environ, **env})
    return proc.returncode, proc.stdout + proc.stderr


CONV = """
    import vggcore as vc, vggcore.nn.functional as F
    y = F.conv2d(vc.ones(1, 6, 6, 3), vc.ones(4, 3, 3, 3), None, padding=1)
    print("conv", float(y.numpy()[0, 2, 2, 0]))
"""


def test_absurd_omp_thread_count_is_clipped_not_a_segfault():
    rc, out = _child(CONV, OMP_NUM_THREADS="100000")
    assert rc == 0 and "conv 27.0" in out, out
    assert "OMP_NUM_THREADS=100000 is more than 16 threads per CPU" in out, out


@pytest.mark.parametrize("value, ok", [("avx1024", False), ("AVX2", False), ("avx2", True), ("scalar", True), ("", True)])
def test_misspelled_cpu_isa_is_refused(value, ok):
    rc, out = _child(CONV, VGG_CPU_ISA=value)
    if ok:
        assert rc == 0 and "conv 27.0" in out, out
    else:
        assert rc == 1 and f"environment variable VGG_CPU_ISA is {value!r}; allowed values: scalar, avx2" in out, out


@pytest.mark.parametrize("argv", [
    ["train", "--checkpoint-dir", "", "--epochs", "1"], ["train", "--data", " "], ["eval", ""],
    ["predict", "x.png", "--model", "m.safetensors", "--labels", ""],
])
def test_cli_refuses_empty_paths(argv, capsys):
    from vggcore.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "expected a path, got an empty string" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["train", "--epochs", str(2**63)], ["train", "--workers", str(2**63)], ["train", "--scale", f"256,{2**64}"],
    ["predict", "x.png", "--model", "m.safetensors", "--topk", str(2**63)],
    ["predict", "x.png", "--model", "m.safetensors", "--scales", str(2**63)],
])
def test_cli_refuses_ints_beyond_int64(argv, capsys):
    from vggcore.cli import main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "below 2**63" in capsys.readouterr().err


def test_predict_checks_its_arguments_as_evaluate_does(tiny_model, shapes):
    image = sorted((shapes / "val").rglob("*.png"))[0]
    with pytest.raises(ValueError, match="evaluate: scale must be <= 9223372036854775807"):
        vc.evaluation.predict_images(tiny_model, [image], scale=2**63, device="cpu")
    with pytest.raises(MemoryError, match="evaluate: scale 1000000 means rescaled images"):
        vc.evaluation.predict_images(tiny_model, [image], scale=10**6, device="cpu")


def test_checked_conversions_keep_what_python_users_pass():
    from fractions import Fraction
    from vggcore._checks import check_bool, check_int, check_real
    assert check_real("train", "width", Fraction(1, 4)) == 0.25 and check_real("t", "x", np.float32(2)) == 2.0
    assert check_int("train", "seed", np.int64(7), 0) == 7 and check_bool("t", "flip", np.True_) is True
    for bad in (True, np.bool_(False), "1", None):
        with pytest.raises(TypeError, match="train: width must be a number"):
            check_real("train", "width", bad)
