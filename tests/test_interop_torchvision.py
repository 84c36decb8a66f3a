"""torchvision-layout weights in and out: torch's logits without torch, exact round trips, a safe unpickler.

torch (installed on the development machine) is the oracle for the logits; the tests that need it skip
without it. The small nets use torchvision's real layout (features Sequential of conv/ReLU/max-pool,
AdaptiveAvgPool2d((7, 7)), classifier Linear/ReLU/Dropout x 2 + Linear) at 1/8 of the channels.
"""
import collections
import json
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import vggcore as vc
from vggcore.interop import from_torchvision, read_pth, save_torchvision, to_torchvision
from vggcore.interop.torchvision import _infer

# torchvision's cfgs (models/vgg.py): channels per conv, "M" = max-pool.
TV_CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def tv_shapes(config, width=1.0, fc=4096, classes=1000):
    """{key: shape} of torchvision's vgg for a config, numbered as its make_layers does."""
    shapes, c, index = {}, 3, 0
    for v in TV_CFGS[config]:
        if v == "M":
            index += 1
            continue
        k = int(v * width)
        shapes[f"features.{index}.weight"] = (k, c, 3, 3)
        shapes[f"features.{index}.bias"] = (k,)
        c, index = k, index + 2
    for i, (fin, fout) in zip((0, 3, 6), ((c * 49, fc), (fc, fc), (fc, classes))):
        shapes[f"classifier.{i}.weight"] = (fout, fin)
        shapes[f"classifier.{i}.bias"] = (fout,)
    return shapes


def random_state(config="D", width=0.125, fc=32, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    out = collections.OrderedDict()
    for k, s in tv_shapes(config, width, fc, classes).items():
        fan_in = int(np.prod(s[1:])) if len(s) > 1 else 1
        out[k] = (rng.standard_normal(s) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return out


def torch_vgg(state):
    """torchvision's VGG module structure (without torchvision) loaded with ``state``."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    idx = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")})
    layers, pos = [], 0
    for i in idx:
        while pos < i:
            layers.append(nn.MaxPool2d(2, 2))
            pos += 1
        w = state[f"features.{i}.weight"]
        layers += [nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1), nn.ReLU(True)]
        pos += 2
    layers.append(nn.MaxPool2d(2, 2))

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            f6, f8 = state["classifier.0.weight"], state["classifier.6.weight"]
            self.classifier = nn.Sequential(nn.Linear(f6.shape[1], f6.shape[0]), nn.ReLU(True), nn.Dropout(),
                                            nn.Linear(f6.shape[0], f6.shape[0]), nn.ReLU(True), nn.Dropout(),
                                            nn.Linear(f8.shape[1], f8.shape[0]))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    m = VGG()
    m.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return m.eval()


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    """A torchvision-layout VGG-16 (1/8 width) saved by torch.save, its state, and torch's logits on x."""
    torch = pytest.importorskip("torch")
    state = random_state("D")
    m = torch_vgg(state)
    path = tmp_path_factory.mktemp("tv") / "vgg16_small.pth"
    torch.save(m.state_dict(), path)
    x = np.random.default_rng(1).standard_normal((2, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        logits = m(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    return path, state, x, logits


def test_pth_loads_without_torch_and_gives_torchs_logits(tv_file, tmp_path):
    path, _, x, logits = tv_file
    np.save(tmp_path / "x.npy", x)
    # A fresh interpreter where importing torch fails: the .pth is read by vggcore's own unpickler.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, vggcore as vc\n"
        f"m = vc.models.from_torchvision({str(path)!r}).eval()\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "with vc.no_grad(): y = m(vc.tensor(x)).numpy()\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "print(m.config, m.width, m.fc_width, m.num_classes, m.input_size)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["D", "0.125", "32", "10", "224"]
    y = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(y, logits, rtol=1e-4, atol=1e-5 * np.abs(logits).max())
    assert np.abs(logits).max() > 1e-2        # a net whose logits depend on the weights, not all zero


def test_state_dict_of_tensors_or_arrays(tv_file):
    torch = pytest.importorskip("torch")
    path, state, x, logits = tv_file
    for source in (state, {k: torch.from_numpy(v) for k, v in state.items()},
                   {f"module.{k}": v for k, v in state.items()}):
        m = from_torchvision(source).eval()
        with vc.no_grad():
            y = m(vc.tensor(x[:1])).numpy()
        np.testing.assert_allclose(y, logits[:1], rtol=1e-4, atol=1e-5 * np.abs(logits).max())


def test_round_trips_bit_exactly(tv_file):
    _, state, _, _ = tv_file
    back = from_torchvision(state).to_torchvision()
    assert list(back) == list(state)
    for k in state:
        assert back[k].dtype == np.float32 and np.array_equal(back[k], state[k]), k
    # and the other way: a vggcore net -> torchvision -> vggcore
    vc.manual_seed(3)
    for config in ("A", "B", "C", "E"):
        net = vc.models.vgg(config, num_classes=7, width=1 / 16, fc_width=16, input_size=64, init="he")
        again = from_torchvision(to_torchvision(net))
        assert again.config == config and again.input_size == 64
        for (k, a), (k2, b) in zip(net.state_dict().items(), again.state_dict().items()):
            assert k == k2 and np.array_equal(a, b), k
    with pytest.raises(ValueError, match="LRN"):
        to_torchvision(vc.models.vgg("A-LRN", width=1 / 16, fc_width=16, input_size=32))


def test_preprocessing_is_torchvisions(tv_file):
    _, state, _, _ = tv_file
    m = from_torchvision(state)
    rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3)).astype(np.uint8)
    ref = (rgb / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(m.preprocess(rgb), ref, rtol=1e-5, atol=1e-5)
    assert m.test_scale == 256 and m.class_names is None
    info = vc.models.describe(m)
    again = vc.models.from_description(info, m.state_dict())
    assert again.std_rgb == m.std_rgb and again.test_scale == 256


def test_full_size_key_and_shape_inference():
    """The real vgg11/13/16/19 layouts (1000 classes, 224 px), from shapes alone (no weights allocated)."""
    vgg16_convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]    # torchvision vgg16's conv indices
    shapes = tv_shapes("D")
    assert sorted(int(k.split(".")[1]) for k in shapes if k.startswith("features") and k.endswith("weight")) \
        == vgg16_convs
    for config in TV_CFGS:
        shapes = tv_shapes(config)
        sd = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
        assert _infer(sd) == (config, 1.0, 4096, 224, 1000)
        n = sum(int(np.prod(s)) for s in shapes.values())
        assert n == vc.models.count_params(config)        # 138,357,544 for D
    assert vc.models.count_params("D") == 138_357_544


def test_not_a_plain_vgg_is_a_clear_error():
    sd = random_state("A", width=0.0625, fc=8, classes=3)
    bn = dict(sd, **{"features.1.running_mean": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match="batch-norm"):
        from_torchvision(bn)
    with pytest.raises(ValueError, match="not a torchvision VGG"):
        from_torchvision({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "fc.weight": np.zeros((10, 512))})
    odd = dict(sd)
    odd["features.30.weight"] = np.zeros((4, 32, 3, 3), np.float32)
    odd["features.30.bias"] = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="features"):
        from_torchvision(odd)
    bad = dict(sd, **{"classifier.0.weight": np.zeros((8, 33), np.float32)})
    with pytest.raises(ValueError, match="classifier.0"):
        from_torchvision(bad)
    with pytest.raises(TypeError, match="from_torchvision"):
        from_torchvision(42)


def test_num_classes_replaces_fc8():
    sd = random_state("A", width=0.0625, fc=8, classes=3)
    m = from_torchvision(sd, num_classes=5)
    assert m.num_classes == 5 and m.fc8.weight.shape == (5, 8)
    assert np.array_equal(m.state_dict()["fc7.weight"], sd["classifier.3.weight"])
    assert m.std_rgb is not None                   # the preprocessing stays torchvision's


def _zip_pickle(path, payload):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")


class _OpenFile:
    """A pickle payload: unpickling it calls open(path, "w"), which creates the file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_runs_nothing(tmp_path):
    victim = tmp_path / "pwned.txt"
    payload = pickle.dumps({"features.0.weight": _OpenFile(victim)}, protocol=2)
    # Proof that the payload works: plain pickle runs it and creates the file.
    f = pickle.loads(payload)["features.0.weight"]
    f.close()
    assert victim.exists()
    victim.unlink()
    evil = tmp_path / "evil.pth"
    _zip_pickle(evil, payload)
    with pytest.raises(pickle.UnpicklingError, match="io.open"):
        read_pth(evil)
    with pytest.raises(pickle.UnpicklingError):
        from_torchvision(evil)
    assert not victim.exists()
    # os.system through a GLOBAL + REDUCE in the raw opcodes, and a pickled Module class: refused too.
    for module, name in (("os", "system"), ("posix", "system"), ("torchvision.models.vgg", "VGG")):
        raw = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x04\x00\x00\x00echo\x85R."
        _zip_pickle(evil, raw)
        with pytest.raises(pickle.UnpicklingError, match=name):
            read_pth(evil)
    raw_pickle = tmp_path / "legacy.pth"
    raw_pickle.write_bytes(payload)
    with pytest.raises(ValueError, match="zip"):
        read_pth(raw_pickle)
    assert not victim.exists()


def test_dtypes_and_strided_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    obj = collections.OrderedDict(t=base.t(), h=base.half(), b=base.bfloat16()[1:], d=base.double()[:, ::2],
                                  i=torch.arange(3), flag=torch.tensor([True, False]))
    path = tmp_path / "mix.pth"
    torch.save(obj, path)
    got = read_pth(path)
    for k, v in obj.items():
        want = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
        assert got[k].dtype == want.dtype and np.array_equal(got[k], want), k


def test_save_torchvision(tmp_path, tv_file):
    _, state, _, _ = tv_file
    m = from_torchvision(state)
    st = save_torchvision(m, tmp_path / "w.safetensors")
    back = pytest.importorskip("safetensors.numpy").load_file(str(st))
    assert all(np.array_equal(back[k], state[k]) for k in state)
    torch = pytest.importorskip("torch")
    pth = save_torchvision(m, tmp_path / "w.pth")
    loaded = torch.load(pth, weights_only=True)
    assert all(np.array_equal(loaded[k].numpy(), state[k]) for k in state)
    assert json.dumps(sorted(loaded)) == json.dumps(sorted(state))


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].shape == sb[k].shape and np.array_equal(sa[k], sb[k]), k


@pytest.mark.parametrize("config", ["A", "B", "C", "D", "E"])
def test_fractional_widths_round_trip(config):
    # vgg() rounds each layer's channels on its own (width 0.3: 19, 38, 77, 154), so conv1_1's 19 / 64 is not
    # the width: the inverse must find one that reproduces every layer, and the original when it is simple.
    vc.manual_seed(5)
    for width, recovered in ((0.3, 0.3), (0.2, 0.2), (0.7, 0.7), (1 / 3, 1 / 3), (0.125, 0.125), (0.33, None),
                             (0.01, None)):
        net = vc.models.vgg(config, num_classes=3, width=width, fc_width=8, input_size=32, init="he")
        again = from_torchvision(net.to_torchvision())
        assert again.config == config
        if recovered is not None:
            assert again.width == recovered, (width, again.width)
        _same_state(net, again)            # same channels everywhere, weights bit-identical


def test_no_width_reproduces_the_channels_is_a_clear_error():
    sd = to_torchvision(vc.models.vgg("A", num_classes=3, width=0.5, fc_width=8, input_size=32, init=None))
    sd["features.0.weight"] = np.zeros((19, 3, 3, 3), np.float32)     # conv1_1 as at width 0.3
    sd["features.0.bias"] = np.zeros(19, np.float32)
    sd["features.3.weight"] = np.zeros((64, 19, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"no width reproduces the conv channels per stage \[\[19\], \[64\], "
                                         r"\[128, 128\].*conv4_1's 256 channels need width >= 0.499023 "
                                         r"while conv1_1's 19 channels need width <= 0.304688"):
        from_torchvision(sd)


def test_missing_tensors_are_value_errors_naming_the_key():
    sd = random_state("A", width=0.0625, fc=8, classes=3)
    for key in ("classifier.0.weight", "classifier.0.bias", "classifier.3.bias", "classifier.6.weight",
                "classifier.6.bias"):
        with pytest.raises(ValueError, match=rf"from_torchvision: the state dict has no {key}"):
            from_torchvision({k: v for k, v in sd.items() if k != key})
    # the stage pattern of A, numbered from features.2: conv1_1 (features.0) is missing
    shifted = {(f"features.{int(k.split('.')[1]) + 2}.{k.split('.')[2]}" if k.startswith("features.") else k): v
               for k, v in sd.items()}
    with pytest.raises(ValueError, match=r"conv layers are features.\[0, 3, 6, 8, .*\(no features.0.weight\)"):
        from_torchvision(shifted)


def test_input_size_not_a_multiple_of_32_round_trips():
    # fc6 only records the last map's side (100 // 32 = 3): the default is 96, input_size=100 restores the net
    vc.manual_seed(6)
    net = vc.models.vgg("A", num_classes=3, width=1 / 16, fc_width=8, input_size=100, init="he").eval()
    sd = net.to_torchvision()
    assert from_torchvision(sd).input_size == 96
    again = from_torchvision(sd, input_size=100).eval()
    assert again.input_size == 100
    _same_state(net, again)
    x = vc.tensor(np.random.default_rng(0).standard_normal((1, 100, 100, 3)).astype(np.float32))
    with vc.no_grad():
        assert np.array_equal(again(x).numpy(), net(x).numpy())
    assert vc.interop.load_weights(sd, input_size=100).input_size == 100
    assert vc.models.from_torchvision(sd, input_size=100).input_size == 100     # the public name forwards it
    for bad, error, message in ((128, ValueError, r"input_size=128 gives a 4x4 map at fc6, but classifier.0.weight "
                                                  r"reads a 3x3 map of 32 channels \(input_size 96 to 127\)"),
                                (95, ValueError, "input_size=95 gives a 2x2 map"),
                                (31, ValueError, "from_torchvision: input_size must be >= 32"),
                                (100.0, TypeError, "from_torchvision: input_size must be an int")):
        with pytest.raises(error, match=message):
            from_torchvision(sd, input_size=bad)
    with pytest.raises(ValueError, match="load_weights: input_size=64, but the model takes 100x100"):
        vc.interop.load_weights(net, input_size=64)


def test_num_classes_is_checked_like_vgg():
    sd = random_state("A", width=0.0625, fc=8, classes=3)
    for bad in (2.7, "5", True):
        with pytest.raises(TypeError, match="from_torchvision: num_classes must be an int"):
            from_torchvision(sd, num_classes=bad)
    for bad in (0, -2):
        with pytest.raises(ValueError, match="from_torchvision: num_classes must be >= 1"):
            from_torchvision(sd, num_classes=bad)
    with pytest.raises(TypeError, match="load_weights: num_classes must be an int"):
        vc.interop.load_weights(sd, num_classes=2.5)
    assert from_torchvision(sd, num_classes=np.int64(5)).num_classes == 5
    assert vc.interop.load_weights(from_torchvision(sd), num_classes=4).num_classes == 4


def test_bad_weight_files_say_what_is_wrong(tmp_path):
    import re
    good = tmp_path / "good.pth"
    _zip_pickle(good, pickle.dumps({"a": 1}, protocol=2) + b"\0" * 4096)
    data = good.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[:len(data) * 9 // 10])                  # a download cut short: no central directory
    with pytest.raises(ValueError, match="damaged or truncated zip archive") as error:
        from_torchvision(cut)
    assert "1.6" not in str(error.value)
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(ValueError, match=r"not a torch zip archive but a bare pickle, as torch < 1.6"):
        read_pth(legacy)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"GIF89a..")
    with pytest.raises(ValueError, match=r"not a torch zip archive \(nor a legacy torch pickle: it starts with b'GIF8'"):
        read_pth(junk)
    for op in (from_torchvision, read_pth, vc.interop.load_weights):
        with pytest.raises(IsADirectoryError, match=rf"{op.__name__}: .* is a directory"):
            op(tmp_path)
        with pytest.raises(FileNotFoundError, match=rf"{op.__name__}: .* does not exist"):
            op(tmp_path / "missing.pth")
    # a pickle the reader cannot parse names the function and the file
    garbled = tmp_path / "garbled.pth"
    for payload, error in ((b"\x80\xc8", ValueError), (b"\xff\xff", pickle.UnpicklingError), (b"\x80\x02}", ValueError)):
        _zip_pickle(garbled, payload)
        with pytest.raises(error, match=rf"read_pth: {re.escape(str(garbled))}: its archive/data.pkl is damaged"):
            read_pth(garbled)


def test_safetensors_suffix_is_case_insensitive(tmp_path):
    net = vc.models.vgg("A", num_classes=3, width=1 / 16, fc_width=8, input_size=32, init="he")
    path = save_torchvision(net, tmp_path / "w.SafeTensors")      # without torch: safetensors, not torch.save
    assert path.read_bytes()[8:9] == b"{"
    _same_state(net, from_torchvision(path))
    _same_state(net, vc.interop.load_weights(path))


def test_expanded_views_are_refused_before_allocating(tmp_path):
    import tracemalloc
    torch = pytest.importorskip("torch")
    path = tmp_path / "expanded.pth"
    # 8 bytes of storage posing as a 16 MB tensor: copying it out would let a tiny file ask for any allocation
    torch.save({"state_dict": {"classifier.0.bias": torch.zeros(3)[::2], "features.0.weight":
                               torch.zeros(2, 1).expand(2000, 2, 1000)}}, path)
    assert path.stat().st_size < 4096
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"tensor 'state_dict/features.0.weight' of shape \(2000, 2, 1000\) "
                                             r"\(stride \(0, 1, 0\)\) has 4000000 elements but its storage \S+ "
                                             r"holds 2 \(from offset 0\)"):
            read_pth(path)
        assert tracemalloc.get_traced_memory()[1] < 2 ** 20
    finally:
        tracemalloc.stop()
    # overlapping views that fit in their storage (and every ordinary view) still load
    torch.save({"t": torch.arange(6.0).as_strided((2, 3), (1, 1)), "v": torch.arange(6.0).reshape(2, 3).t()}, path)
    got = read_pth(path)
    assert np.array_equal(got["t"], [[0, 1, 2], [1, 2, 3]]) and np.array_equal(got["v"], [[0, 3], [1, 4], [2, 5]])


def test_pickle_cannot_set_the_readers_objects(tmp_path):
    # a storage from a persistent id, then BUILD with a dict: pickle would set its attributes (numel, reader)
    storage = b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ"
    path = tmp_path / "build.pth"
    _zip_pickle(path, b"\x80\x02" + storage + b"}X\x05\x00\x00\x00numelK\x00sb.")
    with pytest.raises(pickle.UnpicklingError, match="sets the state of a Storage"):
        read_pth(path)


def test_bf16_safetensors_from_torch_load_silently(tmp_path):
    import warnings
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    sd = {k: torch.from_numpy(v) for k, v in random_state("A", width=0.0625, fc=8, classes=3).items()}
    st.save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, str(tmp_path / "bf16.safetensors"))
    st.save_file(sd, str(tmp_path / "f32.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a third-party file has no vggcore checksums to miss
        bf16 = from_torchvision(tmp_path / "bf16.safetensors")
        vc.interop.load_weights(tmp_path / "f32.safetensors")
    want = from_torchvision({k: v.to(torch.bfloat16) for k, v in sd.items()})       # torch's own widening
    _same_state(want, bf16)
