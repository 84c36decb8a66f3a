"""The paper's Caffe release format: a synthetic caffemodel written here (new and 2014 V1 layouts) round-trips
exactly, and gives the logits Caffe's BGR, mean-pixel convention defines."""
import numpy as np
import pytest

import vggcore as vc
from vggcore.interop import CAFFE_MEAN_BGR, from_caffe, from_torchvision, read_caffemodel, to_caffe
from vggcore.interop.caffe import _enc_varint, _varint, write_caffemodel


@pytest.fixture(scope="module")
def net():
    vc.manual_seed(5)
    m = vc.models.vgg("D", num_classes=6, width=1 / 16, fc_width=16, input_size=64, init="he")
    for name, p in m.named_parameters():           # non-zero biases, so a swapped bias would show
        if name.endswith("bias"):
            m.load_state_dict({name: np.linspace(-0.1, 0.1, p.shape[0], dtype=np.float32)}, strict=False)
    m.mean_rgb, m.input_scale = [123.68, 116.779, 103.939], 1.0     # Caffe's preprocessing: no warning
    return m.eval()


@pytest.mark.parametrize("legacy", [False, True])
def test_caffemodel_round_trips_exactly(tmp_path, net, legacy):
    path = to_caffe(net, tmp_path / "vgg.caffemodel", legacy=legacy)
    back = from_caffe(path)
    assert back.config == "D" and back.num_classes == 6 and back.input_size == 64 and back.fc_width == 16
    for (k, a), (k2, b) in zip(net.state_dict().items(), back.state_dict().items()):
        assert k == k2 and np.array_equal(a, b), k
    assert back.mean_rgb == [123.68, 116.779, 103.939] and back.input_scale == 1.0 and back.std_rgb is None
    again = tmp_path / "again.caffemodel"
    to_caffe(back, again, legacy=legacy)
    assert again.read_bytes() == path.read_bytes()


def test_caffe_layouts_and_bgr(tmp_path, net):
    """The file holds Caffe's layouts: conv (K, C, R, S) with BGR input channels, fc (out, in) over (C, H, W);
    a net built from those raw blobs fed BGR - mean gives the imported net's logits on RGB."""
    path = to_caffe(net, tmp_path / "vgg.caffemodel")
    layers = {name: blobs for name, _, blobs in read_caffemodel(path)}
    w = net.state_dict()["conv1_1.weight"]                  # (K, R, S, C) RGB
    assert np.array_equal(layers["conv1_1"][0], w.transpose(0, 3, 1, 2)[:, ::-1])
    assert layers["fc6"][0].shape == (16, 32 * 2 * 2)
    # the raw blobs as a torchvision-layout net: conv1_1 still BGR
    raw, index = {}, 0
    for stage, n in enumerate((2, 2, 3, 3, 3), start=1):
        for i in range(1, n + 1):
            raw[f"features.{index}.weight"], raw[f"features.{index}.bias"] = layers[f"conv{stage}_{i}"]
            index += 2
        index += 1
    for tv, name in (("classifier.0", "fc6"), ("classifier.3", "fc7"), ("classifier.6", "fc8")):
        raw[f"{tv}.weight"], raw[f"{tv}.bias"] = layers[name]
    bgr_net = from_torchvision(raw).eval()
    model = from_caffe(path).eval()
    rgb = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).astype(np.float32)
    bgr_input = rgb[..., ::-1] - np.array(CAFFE_MEAN_BGR, np.float32)
    with vc.no_grad():
        want = bgr_net(vc.tensor(np.ascontiguousarray(bgr_input))).numpy()
        got = model(vc.tensor(model.preprocess(rgb))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert np.abs(want).max() > 1e-3


def test_prototxt_and_errors(tmp_path, net):
    path = to_caffe(net, tmp_path / "vgg.caffemodel")
    proto = tmp_path / "deploy.prototxt"
    proto.write_text('name: "VGG"\ninput: "data"\ninput_dim: 10\ninput_dim: 3\ninput_dim: 64\ninput_dim: 64\n')
    assert from_caffe(path, proto).input_size == 64
    proto.write_text('input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 224\ninput_dim: 224\n')
    with pytest.raises(ValueError, match="224x224"):
        from_caffe(path, proto)
    assert from_caffe(path, num_classes=3).num_classes == 3
    scaled = vc.models.vgg("A", num_classes=3, width=1 / 16, fc_width=8, input_size=32)
    with pytest.warns(UserWarning, match="input_scale"):
        to_caffe(scaled, tmp_path / "scaled.caffemodel")
    other = tmp_path / "other.caffemodel"
    write_caffemodel(other, [("conv1", "Convolution", [np.zeros((4, 3, 3, 3)), np.zeros(4)])])
    with pytest.raises(ValueError, match="not a VGG"):
        from_caffe(other)
    text = tmp_path / "deploy.caffemodel"
    text.write_text('name: "VGG"\nlayers { name: "conv1_1" }\n')
    with pytest.raises(ValueError):
        from_caffe(text)
    truncated = tmp_path / "cut.caffemodel"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="caffemodel"):
        from_caffe(truncated)
    with pytest.raises(FileNotFoundError):
        from_caffe(tmp_path / "missing.caffemodel")


def test_varints():
    for v in (0, 1, 127, 128, 300, 2 ** 31, 2 ** 63 - 1):
        enc = _enc_varint(v)
        assert _varint(enc, 0) == (v, len(enc))
    assert _enc_varint(300) == b"\xac\x02"                 # the protobuf documentation's example


def test_input_size_and_num_classes_are_checked(tmp_path):
    # fc6's 3x3 map fits 96..127 pixel images; the layout cannot say which, so the caller can
    net = vc.models.vgg("A", num_classes=4, width=1 / 16, fc_width=8, input_size=100, init="he")
    net.input_scale = 1.0                                  # Caffe's preprocessing: no warning from to_caffe
    path = to_caffe(net, tmp_path / "vgg.caffemodel")
    assert from_caffe(path).input_size == 96
    assert from_caffe(path, input_size=100).input_size == 100
    assert vc.models.from_caffe(path, input_size=100).input_size == 100
    with pytest.raises(ValueError, match="input_size=128 gives a 4x4 map"):
        from_caffe(path, input_size=128)
    with pytest.raises(TypeError, match="from_caffe: num_classes must be an int"):
        from_caffe(path, num_classes=2.7)
