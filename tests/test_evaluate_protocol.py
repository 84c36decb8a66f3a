"""The paper's test protocol against a NumPy reference of the averaging, one decode per image, the top-k rule,
non-finite scores, progress, ``predict`` and ``eval`` on the command line, and fine-tuning from torchvision
weights. Small nets (1/16 width, 32-pixel input) on a handful of JPEGs keep it to a few seconds."""
import json
import warnings

import numpy as np
import pytest
from PIL import Image

import vggcore as vc
from vggcore import cli, data
from vggcore.checkpoint import save_state
from vggcore.evaluation import evaluate, multi_crop_offsets, predict_images, protocol_settings, topk_errors

SIZES = [(40, 52), (61, 45), (48, 48), (70, 40), (44, 58), (50, 64), (41, 41)]   # (w, h): every aspect


def _write_folder(root, classes, per_class=1, seed=0):
    rng = np.random.default_rng(seed)
    k = 0
    for c in classes:
        for j in range(per_class):
            w, h = SIZES[k % len(SIZES)]
            # smooth colour blobs (not white noise), so crops at different places really differ
            yy, xx = np.mgrid[0:h, 0:w]
            base = rng.uniform(0, 255, 3)
            img = base + 80 * np.sin(xx[..., None] / rng.uniform(3, 9, 3) + yy[..., None] / rng.uniform(3, 9, 3))
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / c / f"{j}.jpg", quality=95)
            k += 1
    return root


CLASSES7 = [f"k{i}" for i in range(7)]


@pytest.fixture(scope="module")
def folder7(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("eval7"), CLASSES7)


def _net(seed, classes=7, config="A"):
    vc.manual_seed(seed)
    net = vc.models.vgg(config, num_classes=classes, width=1 / 16, fc_width=16, input_size=32, init="he")
    net.class_names = CLASSES7[:classes] if classes == 7 else [f"c{i}" for i in range(classes)]
    net.mean_rgb = [110.0, 120.0, 130.0]
    return net.eval()


@pytest.fixture(scope="module")
def nets():
    return _net(1), _net(2, config="B")


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _posteriors(net, views):
    """Soft-max posteriors of uint8 views of one size (one forward pass per call, grouped per image and method,
    unlike the implementation's batches across images), the score map averaged first."""
    with vc.no_grad():
        s = net(vc.tensor(net.preprocess(np.stack(views)))).numpy().astype(np.float64)
    return _softmax(s.reshape(len(views), -1, s.shape[-1]).mean(axis=1))


def reference(net, paths, scales, single=False, dense=False, multi=False, flip=False, crop=32):
    """The protocol's averaging, written out view by view."""
    fcn = net.to_fully_convolutional().eval()
    out = []
    for path in paths:
        img = Image.open(path).convert("RGB")
        methods = []
        rescaled = [np.asarray(data.rescale(img, q)) for q in scales]
        flips = [False, True] if flip else [False]
        if single:
            views = []
            for arr in rescaled:
                h, w = arr.shape[:2]
                c = arr[(h - crop) // 2:(h - crop) // 2 + crop, (w - crop) // 2:(w - crop) // 2 + crop]
                views += [c[:, ::-1] if f else c for f in flips]
            methods.append(_posteriors(net, views).mean(axis=0))
        if multi:
            views = []
            for arr in rescaled:
                h, w = arr.shape[:2]
                ys = np.round(np.linspace(0, h - crop, 5)).astype(int)
                xs = np.round(np.linspace(0, w - crop, 5)).astype(int)
                for y in ys:
                    for x in xs:
                        c = arr[y:y + crop, x:x + crop]
                        views += [c, c[:, ::-1]]
            assert len(views) == 50 * len(scales)
            methods.append(_posteriors(net, views).mean(axis=0))
        if dense:
            ps = np.concatenate([_posteriors(fcn, [arr[:, ::-1] if f else arr for f in flips]) for arr in rescaled])
            methods.append(ps.mean(axis=0))
        out.append(np.mean(methods, axis=0))
    return np.array(out)


def _paths_labels(root):
    f = data.ImageFolder(root)
    return [p for p, _ in f.samples], f.targets


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("kw", [
    dict(multi=True),
    dict(multi=True, dense=True),
    dict(single=True, flip=True),
    dict(dense=True, flip=True),
], ids=["multi-crop", "dense+multi-crop", "single+flip", "dense+flip"])
def test_protocol_matches_numpy_reference(folder7, nets, kw):
    net = nets[0]
    paths, labels = _paths_labels(folder7)
    scales = [32, 40]
    want = reference(net, paths, scales, **kw)
    got = predict_images(net, paths, scale=scales, dense=kw.get("dense", False), flip=kw.get("flip", False),
                         multi_crop=kw.get("multi", False), batch_size=16, num_workers=2)
    _close(got, want)
    assert np.allclose(got.sum(axis=1), 1.0)
    res = evaluate(net, folder7, scale=scales, dense=kw.get("dense", False), flip=kw.get("flip", False),
                   multi_crop=kw.get("multi", False), batch_size=64 if kw.get("multi") else 5, num_workers=2)
    top1, top5 = topk_errors(want, labels)
    assert res["n"] == 7 and res["top1_err"] == pytest.approx(top1) and res["top5_err"] == pytest.approx(top5)


def test_ensemble_averages_posteriors(folder7, nets):
    paths, labels = _paths_labels(folder7)
    a = reference(nets[0], paths, [36], multi=True, dense=True)
    b = reference(nets[1], paths, [36], multi=True, dense=True)
    got = predict_images(list(nets), paths, scale=36, dense=True, multi_crop=True, num_workers=1)
    _close(got, (a + b) / 2)
    res = evaluate(list(nets), folder7, scale=36, dense=True, multi_crop=True, num_workers=1)
    assert res["top1_err"] == pytest.approx(topk_errors((a + b) / 2, labels)[0])
    assert not np.allclose(a, b, atol=1e-3)            # two different nets: the average is not trivial


def test_every_ensemble_member_is_checked_against_the_folder(folder7):
    anonymous = _net(5)
    anonymous.class_names = None                       # e.g. torchvision weights: no names, 7 classes
    other = _net(6)
    other.class_names = CLASSES7[:6] + ["zzz"]
    with pytest.raises(ValueError, match=r"those of model 1 of the ensemble: only in model 1 of the ensemble: "
                                         r"\['zzz'\]; only in the data: \['k6'\]"):
        evaluate([anonymous, other], folder7, scale=32, num_workers=1)
    # the named members against each other, whichever comes first (also without a folder)
    with pytest.raises(ValueError, match=r"name their classes differently: only in model 1: \['k6'\]; "
                                         r"only in model 2: \['zzz'\]"):
        evaluate([anonymous, _net(7), other], folder7, scale=32, num_workers=1)
    with pytest.raises(ValueError, match="name their classes differently"):
        protocol_settings([anonymous, _net(7), other])
    fewer = _net(8, classes=5)
    fewer.class_names = None
    with pytest.raises(ValueError, match="model 0 has 7, model 1 5"):
        evaluate([anonymous, fewer], folder7, scale=32, num_workers=1)
    assert evaluate([anonymous, _net(7)], folder7, scale=32, num_workers=1)["n"] == 7


def test_no_decodable_image_is_an_error_not_nan(tmp_path, nets):
    root = tmp_path / "junk"
    for c in CLASSES7:
        (root / c).mkdir(parents=True)
        (root / c / "0.jpg").write_bytes(b"junk")
    with pytest.warns(data.CorruptImageWarning):
        with pytest.raises(ValueError, match=r"evaluate: no image of .*junk could be decoded \(7 of 7"):
            evaluate(nets[0], root, scale=32, num_workers=1)


def test_data_of_the_wrong_type_is_named(nets):
    for bad in (None, 3, ["dir"]):
        with pytest.raises(TypeError, match="evaluate: data must be a folder path"):
            evaluate(nets[0], bad)


class CountingFolder(data.ImageFolder):
    def __init__(self, root):
        super().__init__(root)
        self.decodes = []

    def load(self, index):
        self.decodes.append(index)
        return super().load(index)


def test_one_decode_per_image(folder7, nets):
    f = CountingFolder(folder7)
    evaluate(list(nets), f, scale=[32, 40, 48], dense=True, flip=True, multi_crop=True, num_workers=2)
    assert sorted(f.decodes) == list(range(7))        # 3 scales x flips x 50 crops x 2 models: still one each
    f2 = CountingFolder(folder7)
    evaluate(nets[0], f2, scale=[32, 40], flip=True, batch_size=3, num_workers=1)
    assert sorted(f2.decodes) == list(range(7))


def test_settings_and_cost(nets):
    s = protocol_settings(nets[0], scale=[32, 40], dense=True, multi_crop=True, flip=True)
    assert s["scales"] == [32, 40] and s["crop"] == 32 and s["dense"] and s["multi_crop"] and s["flip"]
    assert s["views_per_image"] == 2 * (2 + 50)
    s = protocol_settings(list(nets), scale=36)
    assert s["views_per_image"] == 2 and s["models"] == 2 and s["method"] == "single crop"
    assert multi_crop_offsets(40, 32) == [0, 2, 4, 6, 8] and multi_crop_offsets(32, 32) == [0] * 5
    with pytest.raises(ValueError, match="smaller than the crop"):
        protocol_settings(nets[0], scale=30, multi_crop=True)


def test_topk_rule(folder7, tmp_path, nets):
    r7 = evaluate(nets[0], folder7, scale=32, num_workers=1)
    assert r7["top5_reported"] is True
    assert isinstance(r7["top5_err"], float) and 0 <= r7["top5_err"] <= r7["top1_err"] <= 1
    root3 = _write_folder(tmp_path / "three", ["a", "b", "c"], per_class=2)
    net3 = _net(3, classes=3)
    net3.class_names = ["a", "b", "c"]
    r3 = evaluate(net3, root3, scale=32, num_workers=1)
    # with 3 classes every label is among the top 5: the contract's key stays (exactly 0), flagged as unreported
    assert r3["top5_reported"] is False and r3["top5_err"] == 0.0 and r3["n"] == 6 and 0 <= r3["top1_err"] <= 1
    assert set(r3) >= {"top1_err", "top5_err", "n"}


def test_nonfinite_scores_are_never_a_prediction(folder7):
    net = _net(4)
    bias = net.state_dict()["fc8.bias"]
    bias[0] = np.nan
    net.load_state_dict({"fc8.bias": bias}, strict=False)
    for kw in (dict(), dict(multi_crop=True), dict(dense=True, flip=True)):
        with pytest.raises(ValueError, match="not finite"):
            evaluate(net, folder7, scale=32, num_workers=1, **kw)
    probs = np.array([[np.nan, 0.1, 0.2], [0.7, 0.2, 0.1], [np.inf, 0.0, 0.0]])
    assert topk_errors(probs, np.array([0, 0, 0]), k=(1, 3)) == [pytest.approx(2 / 3), pytest.approx(2 / 3)]


def test_progress_line(folder7, nets, capsys):
    evaluate(nets[0], folder7, scale=32, num_workers=1, progress=True)
    err = capsys.readouterr().err
    assert "eval: 7/7 images" in err and "img/s" in err


def _checkpoint(net, path):
    save_state(path, {"model": net.state_dict(), "model_info": vc.models.describe(net)})
    return path


def test_cli_predict_with_checkpoint_and_torchvision_file(folder7, nets, tmp_path, capsys):
    jpg = str(folder7 / "k3" / "0.jpg")
    ck = _checkpoint(nets[0], tmp_path / "a.safetensors")
    assert cli.main(["predict", jpg, "--model", str(ck), "--topk", "3", "--json", "--scales", "40"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = predict_images(nets[0], [jpg], scale=40)[0]
    top = out[0]["top"]
    assert [t["index"] for t in top] == list(np.argsort(-want)[:3])
    assert [t["class"] for t in top] == [CLASSES7[i] for i in np.argsort(-want)[:3]]
    assert top[0]["prob"] == pytest.approx(want.max(), rel=1e-6)
    # torchvision-layout weights carry no class names: --labels supplies them
    tv = vc.interop.to_torchvision(nets[0])
    try:
        import torch
        weights = tmp_path / "tv.pth"
        torch.save({k: torch.from_numpy(v) for k, v in tv.items()}, weights)
    except ImportError:
        weights = vc.interop.save_torchvision(nets[0], tmp_path / "tv.safetensors")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"name{i}" for i in range(7)) + "\n")
    assert cli.main(["predict", jpg, jpg, "--model", str(weights), "--labels", str(labels), "--dense",
                     "--scales", "32,48"]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == jpg and len(text) == 2 * (1 + 5) and "name" in text[1]
    assert cli.main(["predict", "--model", str(ck), "--model", str(weights), jpg, "--json"]) == 0   # ensemble
    both = json.loads(capsys.readouterr().out)[0]["top"]
    tv_model = vc.interop.load_weights(weights)          # torchvision's preprocessing, not the checkpoint's
    ens = (predict_images(nets[0], [jpg], scale=32)[0] + predict_images(tv_model, [jpg], scale=32)[0]) / 2
    assert both[0]["prob"] == pytest.approx(ens.max(), rel=1e-5) and both[0]["class"] == CLASSES7[ens.argmax()]
    assert cli.main(["predict", jpg, "--model", str(weights), "--labels", str(tmp_path / "a.safetensors")]) == 1
    assert cli.main(["predict", str(tmp_path / "missing.jpg"), "--model", str(ck)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_cli_eval_ensemble_multi_crop_prints_real_settings(folder7, nets, tmp_path, capsys):
    a = _checkpoint(nets[0], tmp_path / "a.safetensors")
    b = _checkpoint(nets[1], tmp_path / "b.safetensors")
    assert cli.main(["eval", str(a), str(b), "--data", str(folder7), "--multi-crop", "--dense",
                     "--scales", "32,40", "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "dense + multi-crop 5x5x2, Q=32,40: top-1 err" in out and "ensemble of 2" in out and "crop 32" in out
    assert "204 view(s) per image" in out and "top-5 err 0." in out and "(7 images" in out


def test_fine_tune_from_torchvision_weights(tmp_path):
    # torchvision-layout weights of a 4-class VGG-A, fine-tuned on a 2-class folder
    vc.manual_seed(6)
    src = vc.models.vgg("A", num_classes=4, width=1 / 16, fc_width=16, input_size=32, init="he")
    weights = vc.interop.save_torchvision(src, tmp_path / "src.safetensors")
    source = vc.models.from_torchvision(weights)
    # folding std into conv1_1 computes the same function on (RGB - mean) * scale
    tuned = vc.models.fine_tune_from(vc.models.vgg("A", num_classes=4, width=1 / 16, fc_width=16, input_size=32),
                                     source)
    rgb = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    with vc.no_grad():
        want = source.eval()(vc.tensor(source.preprocess(rgb))).numpy()
        got = tuned.eval()(vc.tensor(tuned.preprocess(rgb))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert tuned.std_rgb is None and tuned.mean_rgb == source.mean_rgb
    root = tmp_path / "data"
    _write_folder(root / "train", ["x", "y"], per_class=2)
    _write_folder(root / "val", ["x", "y"], per_class=1, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = vc.train("A", data=str(root), epochs=1, batch_size=2, lr=1e-12, scale=32, crop=32, width=1 / 16,
                       fc_width=16, init_from=str(weights), num_workers=1, stats_sample=4, verbose=False,
                       device="cpu")
    m = res.model
    assert m.num_classes == 2 and m.class_names == ["x", "y"] and m.fc8.weight.shape == (2, 16)
    assert m.mean_rgb == pytest.approx([255 * v for v in vc.interop.TORCHVISION_MEAN])
    assert m.input_scale == pytest.approx(1 / 255) and m.std_rgb is None
    st, ss = m.state_dict(), source.state_dict()
    np.testing.assert_allclose(st["conv2_1.weight"], ss["conv2_1.weight"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(st["fc7.weight"], ss["fc7.weight"], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(st["conv1_1.weight"],
                               ss["conv1_1.weight"] / np.array(vc.interop.TORCHVISION_STD, np.float32),
                               rtol=1e-6, atol=1e-9)
