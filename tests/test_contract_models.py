"""Contract tests (DESIGN.md section 2): vc.models.vgg (configs, parameter counts, init_from, to_fully_convolutional). Helpers and the PyTorch oracle: contract_helpers.py."""

import numpy as np
import pytest

import vggcore as vc

from contract_helpers import *  # noqa: F401,F403


PAPER_COUNTS = {"A": 132_863_336, "A-LRN": 132_863_336, "B": 133_047_848, "C": 133_638_952,
                "D": 138_357_544, "E": 143_667_240}


ALIASES = {"vgg11": "A", "vgg11_lrn": "A-LRN", "vgg13": "B", "vgg16_1x1": "C", "vgg16": "D", "vgg19": "E"}


# Table 1: (out channels, kernel) per conv, "M" for max-pool
_B = [(64, 3), (64, 3), "M", (128, 3), (128, 3), "M"]


TABLE1 = {
    "A": [(64, 3), "M", (128, 3), "M", (256, 3), (256, 3), "M", (512, 3), (512, 3), "M", (512, 3), (512, 3), "M"],
    "B": _B + [(256, 3), (256, 3), "M", (512, 3), (512, 3), "M", (512, 3), (512, 3), "M"],
    "C": _B + [(256, 3), (256, 3), (256, 1), "M", (512, 3), (512, 3), (512, 1), "M",
               (512, 3), (512, 3), (512, 1), "M"],
    "D": _B + [(256, 3)] * 3 + ["M"] + [(512, 3)] * 3 + ["M"] + [(512, 3)] * 3 + ["M"],
    "E": _B + [(256, 3)] * 4 + ["M"] + [(512, 3)] * 4 + ["M"] + [(512, 3)] * 4 + ["M"],
}


TABLE1["A-LRN"] = TABLE1["A"]


def expected_count(config, num_classes=1000, width=1.0, fc_width=4096, input_size=224):
    c, n = 3, 0
    for item in TABLE1[config]:
        if item == "M":
            continue
        k, r = item
        k = int(round(k * width))
        n += r * r * c * k + k
        c = k
    s = input_size // 32
    n += s * s * c * fc_width + fc_width + fc_width * fc_width + fc_width + fc_width * num_classes + num_classes
    return n


def n_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def test_expected_count_formula_matches_paper():
    for cfg, n in PAPER_COUNTS.items():
        assert expected_count(cfg) == n


SMALL = dict(num_classes=10, width=1 / 16, fc_width=16, input_size=32)


@pytest.mark.parametrize("config", list(PAPER_COUNTS) + list(ALIASES))
def test_vgg_every_config_small(config):
    base = ALIASES.get(config, config)
    m = vc.models.vgg(config, **SMALL)
    assert n_params(m) == expected_count(base, **SMALL)
    names = [n for n, _ in m.named_parameters()]
    parts = {p for n in names for p in n.split(".")}
    for layer in ("conv1_1", "fc6", "fc7", "fc8"):
        assert layer in parts, f"{layer} not among {names}"
    m.eval()
    x = vc.tensor(rng(50).standard_normal((2, 32, 32, 3)).astype(np.float32))
    y = m(x)
    assert y.shape == (2, 10)
    assert np.all(np.isfinite(y.numpy()))
    # positional signature: vgg(config, num_classes, width, fc_width, input_size, dropout, init)
    m2 = vc.models.vgg(config, 7, 1 / 16, 8, 32, 0.0, "glorot")
    assert n_params(m2) == expected_count(base, 7, 1 / 16, 8, 32)


@pytest.mark.parametrize("config", list(PAPER_COUNTS))
def test_vgg_paper_counts_without_allocating(config):
    count = getattr(vc.models, "count_params", None)
    if count is None:
        pytest.skip("no allocation-free counter; covered by test_vgg_a_full_size")
    assert count(config) == PAPER_COUNTS[config]
    for alias, base in ALIASES.items():
        if base == config:
            assert count(alias) == PAPER_COUNTS[config]


def test_vgg_a_full_size():
    m = vc.models.vgg("A")
    assert n_params(m) == PAPER_COUNTS["A"]
    shapes = {n: tuple(p.shape) for n, p in m.named_parameters()}
    conv11 = [s for n, s in shapes.items() if "conv1_1" in n and len(s) == 4]
    assert conv11 == [(64, 3, 3, 3)]  # (K, R, S, C)
    fc6 = [s for n, s in shapes.items() if "fc6" in n and len(s) == 2]
    assert fc6 == [(4096, 7 * 7 * 512)]  # (out, in)
    del m


def test_vgg_options_and_init():
    m = vc.models.vgg("A", num_classes=10, width=1 / 16, fc_width=16, input_size=64, dropout=0.0, init="normal")
    assert n_params(m) == expected_count("A", 10, 1 / 16, 16, 64)
    conv_w = [p.numpy() for n, p in m.named_parameters() if len(p.shape) == 4]
    allw = np.concatenate([w.ravel() for w in conv_w])
    assert abs(allw.std() - 0.01) < 0.002  # normal(0, 0.01)
    m.eval()
    y = m(vc.tensor(np.zeros((1, 64, 64, 3), np.float32)))
    assert y.shape == (1, 10)
    with pytest.raises((ValueError, TypeError)):
        vc.models.vgg("F")
    with pytest.raises((ValueError, TypeError)):
        vc.models.vgg("A", init="bogus")


def test_init_from():
    a = vc.models.vgg("A", **SMALL)
    d = vc.models.vgg("D", **SMALL)
    before = by_layer(d)
    r = vc.models.init_from(d, a)
    d2 = r if r is not None else d
    la, ld = by_layer(a), by_layer(d2)
    copied = ["conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8"]
    for layer in copied:
        assert layer in la and layer in ld, layer
        for pa, pd in zip(la[layer], ld[layer]):
            np.testing.assert_array_equal(pa, pd, err_msg=layer)
    for layer in ("conv1_2", "conv3_3", "conv5_3"):
        for p0, p1 in zip(before[layer], ld[layer]):
            np.testing.assert_array_equal(p0, p1, err_msg=f"{layer} should be untouched")


@pytest.mark.parametrize("config", ["A", "A-LRN", "C"])
def test_to_fully_convolutional_same_scores(config):
    m = vc.models.vgg(config, **SMALL)
    m.eval()
    x = vc.tensor(rng(51).standard_normal((2, 32, 32, 3)).astype(np.float32))
    y = m(x).numpy()
    r = m.to_fully_convolutional()
    fc = r if r is not None else m
    fc.eval()
    yf = fc(x).numpy()
    assert yf.size == y.size, f"fully convolutional output shape {yf.shape} vs {y.shape}"
    assert_close(yf.reshape(y.shape), y, TOL["float32"], "fully convolutional scores")
    # a larger image gives a spatial map (or its average), still finite
    y2 = fc(vc.tensor(rng(52).standard_normal((1, 64, 48, 3)).astype(np.float32))).numpy()
    assert np.all(np.isfinite(y2)) and y2.shape[-1] == 10


def _torch_vgg_forward(config, model, x_nhwc, lrn=None):
    """Paper VGG in PyTorch (NCHW) with `model`'s weights; returns float64 scores."""
    params = [(n, p.numpy().astype(np.float64)) for n, p in model.named_parameters()]
    convs = [p for n, p in params if p.ndim == 4]
    biases = {n.rsplit(".", 1)[0]: p for n, p in params if p.ndim == 1}
    conv_names = [n.rsplit(".", 1)[0] for n, p in params if p.ndim == 4]
    fcs = [(n.rsplit(".", 1)[0], p) for n, p in params if p.ndim == 2]
    h = torch.tensor(x_nhwc.astype(np.float64)).permute(0, 3, 1, 2)
    i = 0
    for item in TABLE1[config]:
        if item == "M":
            h = TF.max_pool2d(h, 2, 2)
            continue
        w = convs[i]
        h = torch.relu(TF.conv2d(h, torch.tensor(krsc_to_kcrs(w)), torch.tensor(biases[conv_names[i]]),
                                 padding=w.shape[1] // 2))
        if i == 0 and lrn:
            h = TF.local_response_norm(h, **lrn)
        i += 1
    h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
    for j, (name, w) in enumerate(fcs):
        h = TF.linear(h, torch.tensor(w), torch.tensor(biases[name]))
        if j < 2:
            h = torch.relu(h)
    return h.numpy()


@needs_torch
def test_vgg_d_full_size_224_vs_torch():
    m = vc.models.vgg("D")
    assert n_params(m) == PAPER_COUNTS["D"]
    m.eval()
    x = rng(90).standard_normal((1, 224, 224, 3)).astype(np.float32)
    y = m(vc.tensor(x)).numpy()
    assert y.shape == (1, 1000) and np.all(np.isfinite(y))
    ref = _torch_vgg_forward("D", m, x)
    assert_close(y, ref, TOL["float32"], "VGG-D forward at 224")
    del m


@needs_torch
@pytest.mark.parametrize("config", ["A-LRN", "C", "E"])
def test_vgg_small_vs_torch(config):
    m = vc.models.vgg(config, num_classes=10, width=1 / 8, fc_width=32, input_size=64)
    m.eval()
    x = (rng(91).standard_normal((2, 64, 64, 3)) * 50).astype(np.float32)
    y = m(vc.tensor(x)).numpy()
    lrn = dict(size=5, alpha=5e-4, beta=0.75, k=2.0) if config == "A-LRN" else None
    ref = _torch_vgg_forward(config, m, x, lrn)
    assert_close(y, ref, TOL["float32"], f"VGG-{config} forward")


def test_vgg_e_full_size_224_finite():
    m = vc.models.vgg("vgg19")
    assert n_params(m) == PAPER_COUNTS["E"]
    m.eval()
    y = m(vc.tensor(rng(92).standard_normal((2, 224, 224, 3)).astype(np.float32))).numpy()
    assert y.shape == (2, 1000) and np.all(np.isfinite(y))
    del m


def test_to_fully_convolutional_at_224_same_scores():
    m = vc.models.vgg("A", num_classes=10, width=1 / 16, fc_width=16, input_size=224)
    m.eval()
    x = vc.tensor(rng(93).standard_normal((1, 224, 224, 3)).astype(np.float32))
    y = m(x).numpy()
    r = m.to_fully_convolutional()
    fc = r if r is not None else m
    fc.eval()
    shapes = {n: tuple(p.shape) for n, p in fc.named_parameters()}
    fc6 = [s for n, s in shapes.items() if "fc6" in n and len(s) == 4]
    fc7 = [s for n, s in shapes.items() if "fc7" in n and len(s) == 4]
    assert fc6 == [(16, 7, 7, 32)] and fc7 == [(16, 1, 1, 16)], shapes
    yf = fc(x).numpy()
    assert_close(yf.reshape(y.shape), y, TOL["float32"], "fully conv at 224")
    if r is not None and r is not m:  # the original stays usable
        assert_close(m(x).numpy(), y, TOL["float32"], "original after conversion")



def test_init_from_and_load_state_dict_refuse_non_mappings():
    a = vc.models.vgg("A", **SMALL)
    d = vc.models.vgg("D", **SMALL)
    before = d.state_dict()
    for bad, name in ((None, "NoneType"), ([("fc8.bias", np.zeros(3))], "list"), ("conv1_1", "str")):
        with pytest.raises(TypeError, match=rf"init_from: net_a must be a VGG .* or its state_dict\(\), got {name}"):
            vc.models.init_from(d, bad)
        with pytest.raises(TypeError, match=rf"load_state_dict: state_dict must be a mapping .*, got {name}"):
            d.load_state_dict(bad)
    with pytest.raises(TypeError, match="init_from: model must be a vggcore VGG .*, got NoneType"):
        vc.models.init_from(None, a)
    assert all(np.array_equal(v, before[k]) for k, v in d.state_dict().items())    # nothing changed
    vc.models.init_from(d, a.state_dict())                                           # a mapping still works
