"""The six configurations: exact parameter counts, layer names, LRN, init schemes, init_from, fully convolutional."""

import pathlib
import runpy

import numpy as np
import pytest
from PIL import Image

import vggcore as vc
import vggcore.models as models
import vggcore.nn.functional as F
from vggcore import checkpoint

PAPER_COUNTS = {"A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "C": 133_638_952, "D": 138_357_544,
                "E": 143_667_240}
TINY = dict(num_classes=10, width=1 / 16, fc_width=32, input_size=32)
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _images(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("config", sorted(PAPER_COUNTS))
def test_parameter_counts_are_exact(config):
    assert models.count_params(config) == PAPER_COUNTS[config]


def test_aliases_and_config_names():
    assert {a: models.config_name(a) for a in models.ALIASES} == {
        "vgg11": "A", "vgg11_lrn": "A-LRN", "vgg13": "B", "vgg16_1x1": "C", "vgg16": "D", "vgg19": "E"}
    assert models.config_name("a-lrn") == models.config_name("A_LRN") == "A-LRN"
    assert models.vgg16(**TINY).config == "D" and models.vgg16_1x1(**TINY).config == "C"
    assert models.vgg11_lrn(**TINY).config == "A-LRN" and models.vgg19(**TINY).config == "E"
    with pytest.raises(ValueError, match="unknown config 'F'"):
        models.vgg("F")
    with pytest.raises(ValueError, match="input_size must be at least 32"):
        models.vgg("A", input_size=16)
    with pytest.raises(ValueError, match="init must be one of"):
        models.vgg("A", init="zeros", **TINY)


@pytest.mark.parametrize("config", sorted(PAPER_COUNTS))
def test_tiny_nets_match_the_table(config):
    model = models.vgg(config, **TINY)
    sd = model.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == models.param_shapes(config, **TINY)
    names = [k[:-len(".weight")] for k in sd if k.endswith(".weight")]
    depth = {"A": 8, "A-LRN": 8, "B": 10, "C": 13, "D": 13, "E": 16}[config]
    assert len(names) == depth + 3 and names[-3:] == ["fc6", "fc7", "fc8"]
    assert names[0] == "conv1_1" and names[depth - 1].startswith("conv5_")
    if config == "C":
        assert sd["conv3_3.weight"].shape[1:3] == (1, 1) and sd["conv5_3.weight"].shape[1:3] == (1, 1)
    out = model(vc.tensor(_images(2, 32)))
    assert out.shape == (2, 10) and np.all(np.isfinite(out.numpy()))


def test_full_width_layer_shapes():
    shapes = models.param_shapes("D")
    assert shapes["conv1_1.weight"] == (64, 3, 3, 3) and shapes["conv5_3.weight"] == (512, 3, 3, 512)
    assert shapes["fc6.weight"] == (4096, 7 * 7 * 512) and shapes["fc8.weight"] == (1000, 4096)
    assert models.param_shapes("A", input_size=256)["fc6.weight"] == (4096, 8 * 8 * 512)


def test_lrn_follows_conv1_1_with_alexnet_parameters():
    assert models.LRN_PARAMS == {"size": 5, "alpha": 5e-4, "beta": 0.75, "k": 2.0}
    vc.manual_seed(1)
    net = models.vgg("A-LRN", dropout=0.0, **TINY).eval()
    x = vc.tensor(_images(2, 32) * 20)   # large activations, so the normalisation matters
    sd = {k: vc.tensor(v) for k, v in net.state_dict().items()}

    def manual(with_lrn):
        h = F.relu(F.conv2d(x, sd["conv1_1.weight"], sd["conv1_1.bias"], padding=1))
        if with_lrn:
            h = F.local_response_norm(h, size=5, alpha=5e-4, beta=0.75, k=2.0)
        h = F.max_pool2d(h)
        for stage, layers in ((2, 1), (3, 2), (4, 2), (5, 2)):
            for i in range(1, layers + 1):
                h = F.relu(F.conv2d(h, sd[f"conv{stage}_{i}.weight"], sd[f"conv{stage}_{i}.bias"], padding=1))
            h = F.max_pool2d(h)
        h = h.reshape(2, -1)
        h = F.relu(F.linear(h, sd["fc6.weight"], sd["fc6.bias"]))
        h = F.relu(F.linear(h, sd["fc7.weight"], sd["fc7.bias"]))
        return F.linear(h, sd["fc8.weight"], sd["fc8.bias"]).numpy()

    got = net(x).numpy()
    np.testing.assert_allclose(got, manual(True), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, manual(False), rtol=1e-3)


@pytest.mark.parametrize("scheme", models.INIT_SCHEMES)
def test_init_schemes(scheme):
    vc.manual_seed(3)
    net = models.vgg("B", init=scheme, num_classes=10, width=0.25, fc_width=256, input_size=32)
    sd = net.state_dict()
    w = sd["conv2_2.weight"]                                  # (32, 3, 3, 32)
    fan_in, fan_out = 9 * w.shape[3], 9 * w.shape[0]
    expected_std = {"glorot": np.sqrt(2.0 / (fan_in + fan_out)), "normal": 0.01, "he": np.sqrt(2.0 / fan_in)}[scheme]
    assert abs(w.std() / expected_std - 1) < 0.05
    if scheme == "glorot":
        assert np.abs(w).max() <= np.sqrt(6.0 / (fan_in + fan_out))
        fc = sd["fc7.weight"]
        assert abs(fc.std() / np.sqrt(2.0 / 512) - 1) < 0.05
    assert all(not v.any() for k, v in sd.items() if k.endswith(".bias"))
    vc.manual_seed(3)
    again = models.vgg("B", init=scheme, num_classes=10, width=0.25, fc_width=256, input_size=32).state_dict()
    assert all(np.array_equal(sd[k], again[k]) for k in sd), "manual_seed makes initialisation reproducible"


def test_init_from_copies_the_papers_layers():
    vc.manual_seed(0)
    net_a = models.vgg("A", **TINY)
    net_d = models.vgg("D", **TINY)
    before = net_d.state_dict()
    models.init_from(net_d, net_a)
    a, d = net_a.state_dict(), net_d.state_dict()
    for layer in ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8"):
        for kind in ("weight", "bias"):
            assert np.array_equal(d[f"{layer}.{kind}"], a[f"{layer}.{kind}"]), layer
    for layer in ("conv1_2", "conv2_2", "conv3_3", "conv4_1", "conv5_3"):
        assert np.array_equal(d[f"{layer}.weight"], before[f"{layer}.weight"]), f"{layer} keeps its init"
    with pytest.raises(ValueError, match="fc8.weight"):
        models.init_from(models.vgg("D", **{**TINY, "num_classes": 7}), net_a)


def test_forward_rejects_wrong_sizes():
    net = models.vgg("A", **TINY)
    with pytest.raises(ValueError, match="takes 32x32 images, got 40x40"):
        net(vc.tensor(_images(1, 40)))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        net(vc.tensor(np.zeros((1, 3, 32, 32), np.float32)))


@pytest.mark.parametrize("config,input_size", [("A", 224), ("C", 64)])
def test_fully_convolutional_net_gives_the_same_scores(config, input_size):
    vc.manual_seed(2)
    net = models.vgg(config, num_classes=10, width=1 / 16, fc_width=32, input_size=input_size).eval()
    net.class_names, net.mean_rgb = list("abcdefghij"), [1.0, 2.0, 3.0]
    fcn = net.to_fully_convolutional()
    side = input_size // 32
    assert fcn.fully_convolutional and not net.fully_convolutional
    assert fcn.state_dict()["fc6.weight"].shape == (32, side, side, 32)
    assert fcn.state_dict()["fc8.weight"].shape == (10, 1, 1, 32)
    assert fcn.class_names == net.class_names and fcn.mean_rgb == net.mean_rgb
    x = vc.tensor(_images(2, input_size, seed=5))
    ref = net(x).numpy()
    dense = fcn(x).numpy()
    assert dense.shape == (2, 1, 1, 10)
    np.testing.assert_allclose(dense[:, 0, 0], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    bigger = fcn(vc.tensor(_images(1, input_size + 64, seed=6))).numpy()
    assert bigger.shape == (1, 3, 3, 10) and np.all(np.isfinite(bigger))
    assert np.array_equal(net(x).numpy(), ref), "the original net is unchanged"


def test_checkpointed_model_reloads_with_its_preprocessing(tmp_path):
    vc.manual_seed(4)
    net = models.vgg("A-LRN", **TINY).eval()
    net.class_names, net.mean_rgb, net.train_scale = [f"c{i}" for i in range(10)], [120.0, 110.0, 100.0], (32, 40)
    checkpoint.save_state(tmp_path / "m.safetensors", {"model": net.state_dict(), "model_info": models.describe(net)})
    back = models.load(tmp_path / "m.safetensors").eval()
    assert back.config == "A-LRN" and back.class_names == net.class_names and back.mean_rgb == net.mean_rgb
    assert back.train_scale == (32, 40) and back.input_scale == net.input_scale
    x = vc.tensor(_images(2, 32))
    assert np.array_equal(back(x).numpy(), net(x).numpy())


@pytest.mark.slow
@pytest.mark.parametrize("config", ["D", "E"])
def test_full_size_forward_at_224(config):
    vc.manual_seed(0)
    net = models.vgg(config).eval()
    assert net.num_parameters() == PAPER_COUNTS[config]
    with vc.no_grad():
        out = net(vc.tensor(_images(1, 224) * 50)).numpy()
    assert out.shape == (1, 1000) and np.all(np.isfinite(out))
    assert out.std() > 0


def test_sobel_example(tmp_path):
    src = tmp_path / "in.png"
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, 15:] = 200                                      # one vertical edge
    Image.fromarray(img).save(src)
    out = tmp_path / "edges.png"
    mod = runpy.run_path(str(EXAMPLES / "sobel.py"))
    edges = mod["sobel_edges"](np.asarray(Image.open(src).convert("L"), np.float32))
    assert edges.shape == (20, 30)
    assert edges[:, 14:16].min() > 0 and np.allclose(edges[1:-1, 3:12], 0) and np.allclose(edges[1:-1, 18:27], 0)
    mod["main"]([str(src), str(out)])
    saved = np.asarray(Image.open(out))
    assert saved.shape == (20, 30) and saved[:, 14:16].max() == 255
