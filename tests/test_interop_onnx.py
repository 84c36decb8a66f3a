"""ONNX export checked with onnxruntime against vggcore's own forward (skips without onnx/onnxruntime)."""
import json
import os

import numpy as np
import pytest

import vggcore as vc

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _run(path, x_nhwc):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))})[0]


@pytest.mark.parametrize("config", ["D", "A-LRN", "C"])
def test_onnx_matches_forward(tmp_path, config):
    vc.manual_seed(2)
    net = vc.models.vgg(config, num_classes=9, width=1 / 16, fc_width=16, input_size=64, init="he").eval()
    net.class_names, net.mean_rgb = [f"c{i}" for i in range(9)], [120.0, 110.0, 100.0]
    x = np.random.default_rng(0).standard_normal((3, 64, 64, 3)).astype(np.float32)
    path = vc.export_onnx(net, tmp_path / "net.onnx", input_size=64)
    with vc.no_grad():
        want = net(vc.tensor(x)).numpy()
    got = _run(path, x)
    assert got.shape == (3, 9)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    m = onnx.load(str(path))
    assert m.opset_import[0].version == vc.interop.OPSET == 17
    props = {p.key: p.value for p in m.metadata_props}
    assert json.loads(props["vggcore.preprocessing"])["mean_rgb"] == [120.0, 110.0, 100.0]
    assert json.loads(props["vggcore.class_names"])[0] == "c0"


def test_dense_onnx_matches_score_map(tmp_path):
    vc.manual_seed(4)
    net = vc.models.vgg("A", num_classes=5, width=1 / 16, fc_width=16, input_size=32, init="he").eval()
    fcn = net.to_fully_convolutional()
    path = vc.export_onnx(fcn, tmp_path / "dense.onnx", input_size=32)
    for h, w in ((32, 32), (64, 96)):
        x = np.random.default_rng(h).standard_normal((2, h, w, 3)).astype(np.float32)
        with vc.no_grad():
            want = fcn(vc.tensor(x)).numpy()
        got = _run(path, x)
        assert got.shape == want.shape == (2, h // 32, w // 32, 5)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_export_errors(tmp_path):
    net = vc.models.vgg("A", num_classes=5, width=1 / 16, fc_width=16, input_size=32)
    with pytest.raises(ValueError, match="input_size=32"):
        vc.export_onnx(net, tmp_path / "x.onnx")            # the default 224 is not this net's size
    with pytest.raises(TypeError):
        vc.export_onnx("net", tmp_path / "x.onnx")


def test_failed_export_keeps_the_previous_file(tmp_path):
    import subprocess
    import sys
    # RLIMIT_FSIZE stands in for a full disk or a quota: the write fails part way through (SIGXFSZ ignored,
    # so the write raises EFBIG instead of killing the process)
    old = tmp_path / "out" / "old.onnx"
    old.parent.mkdir()
    old.write_bytes(b"previous export")
    code = (
        "import os, resource, signal, vggcore as vc\n"
        "m = vc.models.vgg('A', num_classes=5, width=1 / 8, fc_width=64, input_size=64)\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (40960, 40960))\n"
        f"for target in ({str(old)!r}, {str(tmp_path / 'new' / 'deeper' / 'x.onnx')!r}):\n"
        "    try:\n"
        "        vc.export_onnx(m, target, input_size=64)\n"
        "    except OSError as e:\n"
        "        print(type(e).__name__, e.errno, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("OSError 27 [Errno 27] export_onnx: cannot write ") for line in lines)
    assert old.read_bytes() == b"previous export"
    assert os.listdir(old.parent) == ["old.onnx"], "the temporary file must be removed"
    assert not (tmp_path / "new").exists(), "folders made for a failed export must be removed"
    net = vc.models.vgg("A", num_classes=5, width=1 / 16, fc_width=16, input_size=32)
    assert vc.export_onnx(net, old, input_size=32) == old and onnx.load(str(old)).graph.name == "vgg_A"
    assert os.listdir(old.parent) == ["old.onnx"]


def test_export_path_errors_name_export_onnx(tmp_path):
    net = vc.models.vgg("A", num_classes=5, width=1 / 16, fc_width=16, input_size=32)
    with pytest.raises(ValueError, match=rf"export_onnx: {tmp_path} is a directory"):
        vc.export_onnx(net, tmp_path, input_size=32)
    (tmp_path / "afile").write_bytes(b"x")
    with pytest.raises(ValueError, match=rf"export_onnx: cannot write {tmp_path}/afile/sub/x.onnx: {tmp_path}/afile "
                                         r"is a file, not a folder"):
        vc.export_onnx(net, tmp_path / "afile" / "sub" / "x.onnx", input_size=32)
    assert sorted(os.listdir(tmp_path)) == ["afile"]
