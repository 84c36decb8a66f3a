"""The CPU input pipeline: images/s per core of the training and eval transforms, and end-to-end training.

    python bench/pipeline.py                         # 160 generated JPEGs, 1..cores threads, results to stdout
    python bench/pipeline.py --images 320 --out bench/results/pipeline.md
    python bench/pipeline.py --decode-throughput --device cuda   # JPEG decode images/s, nvJPEG vs CPU threads

The images are generated once into ``--folder`` (default ``$VGGCORE_CACHE/bench-photos``): ImageNet-like
JPEGs (500x375 or 375x500, quality 90) with photo-like content, since JPEG decode time depends on it:
smooth colour gradients, a few shaded shapes with soft edges, fine texture and sensor noise, slightly blurred.

Rows, all measured in this run on the same files (best of ``--reps`` passes, one thread, file cache warm):
- ``baseline``: plain PIL the torchvision way (open, RGB, resize the smaller side to S, random crop, flip,
  to float32 and normalise), no scale-jitter-free shortcut;
- ``before``: a copy of vggcore's training transform as it was before the crop-first pipeline (decode, rescale
  the whole image to S, crop, flip, colour shift, np.stack);
- ``vggcore``: today's ``data.load_planned`` (random choices from the header, only the crop's source region
  resampled, JPEG DCT-domain downscale when the image is at least 2 S, the flip, shift and scale in one pass of
  the augment_crops CPU twin, written into the batch array);
- ``packed``: the CPU side of ``device_augment=True`` (``data.load_packed``: the same plan and decode, the uint8
  pixels packed into one batch buffer, no resampling), what the CPU does when a GPU augments;
- ``packed+op``: ``packed`` then ``data.augment_batch`` on the cpu device (the CPU twin resamples, mirrors and
  shifts the whole batch; its time, in the resample column, is CPU time of all its threads).
Per-stage times split one image's cost into decode, resample, augmentation (crop, flip, colour shift, float
conversion) and batch assembly. The scaling table runs ``data.DataLoader`` with 1..N threads; the end-to-end
figure trains a thin VGG-A on the cpu device from the loader and from the same batches held in memory.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
# The transform before crop-first resampling is the test suite's oracle (tests/pipeline_reference.py): one copy.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import pipeline_reference  # noqa: E402

import vggcore as vc  # noqa: E402
from vggcore import data  # noqa: E402
from vggcore.datasets import cache_dir  # noqa: E402

CLASSES = ("field", "street", "room", "coast")
# One-thread rates are per CPU-second of the measuring thread: on a shared machine, time spent waiting for a
# core (other processes) does not count against a pipeline; wall-clock rates are given beside them.
cpu_clock = time.thread_time


# ------------------------------------------------------------------------------------------------ images

def render_photo(rng: np.random.Generator, w=500, h=375) -> Image.Image:
    """A photo-like RGB image: low-frequency colour field, shaded soft shapes, texture, noise, a slight blur."""
    # Low-frequency field: a coarse random grid upsampled bicubically (sky, walls, ground).
    coarse = rng.uniform(30, 225, size=(4, 5, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    field += (y / h - 0.5)[..., None] * rng.uniform(-60, 60, size=3)        # vertical light gradient
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img, "RGBA")
    for _ in range(int(rng.integers(4, 10))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(15, w / 3), rng.uniform(15, h / 3)
        colour = tuple(int(c) for c in rng.uniform(0, 255, size=3)) + (int(rng.uniform(120, 255)),)
        if rng.random() < 0.5:
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=colour)
        else:
            k = int(rng.integers(3, 7))
            a = rng.uniform(0, 2 * math.pi)
            pts = [(cx + rx * math.cos(a + 2 * math.pi * i / k), cy + ry * math.sin(a + 2 * math.pi * i / k))
                   for i in range(k)]
            draw.polygon(pts, fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.0)))
    arr = np.asarray(img, dtype=np.float32)
    # Texture (foliage, fabric): band-limited noise at two scales, and per-pixel sensor noise.
    tex = rng.normal(0, 1, size=(h // 4 + 1, w // 4 + 1)).astype(np.float32)
    tex = np.asarray(Image.fromarray(tex, mode="F").resize((w, h), Image.BILINEAR))
    arr += tex[..., None] * rng.uniform(4, 14) + rng.normal(0, 3, size=(h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def ensure_photos(root: Path, n: int, seed=0, size=(500, 375)) -> Path:
    """``root/<class>/*.jpg``, n images in all (4 classes), generated once; landscape and portrait."""
    marker = root / f".complete-{n}-{seed}-{size[0]}x{size[1]}"
    if marker.is_file():
        return root
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        w, h = size if i % 4 else size[::-1]
        folder = root / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        render_photo(rng, w, h).save(folder / f"{i:05d}.jpg", quality=90)
    marker.write_text("")
    return root


# ------------------------------------------------------------------------------------- the three pipelines

def _add_stages(stages, t0, t1, t2, t3):
    """Adds one image's decode (t0..t1), resample (t1..t2) and augment (t2..t3) CPU seconds to ``stages``."""
    stages["decode"] += t1 - t0
    stages["resample"] += t2 - t1
    stages["augment"] += t3 - t2


def before_transform(tf: data.TrainTransform, path, rng, stages):
    """vggcore's training transform before the crop-first pipeline, with its stages timed."""
    t0 = cpu_clock()
    img = data.load_rgb(path)
    t1 = cpu_clock()
    arr = pipeline_reference.rescale_whole_image(tf, img, rng)
    t2 = cpu_clock()
    out = pipeline_reference.crop_and_augment(tf, arr, rng)
    t3 = cpu_clock()
    _add_stages(stages, t0, t1, t2, t3)
    return out


def baseline_transform(s, crop, path, rng, stages):
    """The torchvision way in plain PIL: Resize(S), RandomCrop(crop), RandomHorizontalFlip, to float, normalise."""
    t0 = cpu_clock()
    with Image.open(path) as im:
        img = im.convert("RGB")
    t1 = cpu_clock()
    w, h = img.size
    size = (s, round(h * s / w)) if w <= h else (round(w * s / h), s)
    img = img.resize(size, Image.BILINEAR)
    t2 = cpu_clock()
    x = int(rng.integers(0, size[0] - crop + 1))
    y = int(rng.integers(0, size[1] - crop + 1))
    img = img.crop((x, y, x + crop, y + crop))
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    out = (np.asarray(img, dtype=np.float32) / 255.0 - np.float32([0.485, 0.456, 0.406])) / np.float32(
        [0.229, 0.224, 0.225])
    t3 = cpu_clock()
    _add_stages(stages, t0, t1, t2, t3)
    return out


def _decode_planned(tf, path, rng):
    """data.load_planned's decode: the image's plan, JPEG draft-mode decoding where the plan allows it, RGB.
    Returns (image, plan)."""
    im = Image.open(path)
    plan = tf.plan(im.size, rng)
    if im.format == "JPEG" and min(im.size) >= 2 * min(plan.scaled):
        im.draft("RGB", tuple(plan.scaled))
    im.load()
    return (im if im.mode == "RGB" else im.convert("RGB")), plan


def vggcore_transform(tf, path, rng, stages, out):
    """data.load_planned's steps, timed one by one (the same calls, in the same order)."""
    t0 = cpu_clock()
    img, plan = _decode_planned(tf, path, rng)
    t1 = cpu_clock()
    arr = data._resample_crop(img, plan.scaled, plan.box)
    t2 = cpu_clock()
    data._crop_to_float(arr, plan.flip, plan.shift, tf.input_scale, out)
    t3 = cpu_clock()
    _add_stages(stages, t0, t1, t2, t3)
    return out


def packed_transform(tf, path, rng, stages):
    """data.load_packed's steps, timed: decode as load_planned does, then the pixels and plan row (batch)."""
    t0 = cpu_clock()
    img, plan = _decode_planned(tf, path, rng)
    t1 = cpu_clock()
    pixels = np.asarray(img, dtype=np.uint8)
    row = np.empty(11, np.float64)
    row[:3] = 0, pixels.shape[0], pixels.shape[1]
    row[3:7] = data._source_region(img.size, plan.scaled, plan.box)
    row[7] = 1.0 if plan.flip else 0.0
    row[8:] = plan.shift
    stages["decode"] += t1 - t0
    stages["batch"] += cpu_clock() - t1
    return pixels, row


def _one_pass(kind, paths, scale, crop, batch, tf):
    stages = dict(decode=0.0, resample=0.0, augment=0.0, batch=0.0)
    buf = np.empty((batch, crop, crop, 3), np.float32)
    op_cpu = 0.0        # the op's CPU time on all its threads (process time), added to the thread's
    t0, w0 = cpu_clock(), time.perf_counter()
    for b in range(0, len(paths), batch):
        chunk = paths[b:b + batch]
        outs = []
        for j, p in enumerate(chunk):
            rng = np.random.default_rng([0, b + j])
            if kind == "baseline":
                outs.append(baseline_transform(scale if isinstance(scale, int) else scale[0], crop, p, rng, stages))
            elif kind == "before":
                outs.append(before_transform(tf, p, rng, stages))
            elif kind in ("packed", "packed+op"):
                outs.append(packed_transform(tf, p, rng, stages))
            else:
                vggcore_transform(tf, p, rng, stages, buf[j])
        tb = cpu_clock()
        if kind in ("packed", "packed+op"):
            packed = data.PackedBatch.pack(outs, crop, tf.input_scale)
            stages["batch"] += cpu_clock() - tb
            if kind == "packed+op":
                tp, tt = time.process_time(), cpu_clock()
                data.augment_batch(packed, "cpu")
                spent = time.process_time() - tp
                stages["resample"] += spent
                op_cpu += spent - (cpu_clock() - tt)      # the other threads' share of the op
            continue
        if kind != "vggcore":
            np.stack(outs)
        stages["batch"] += cpu_clock() - tb
    # The op's OpenMP threads are not the measuring thread: their CPU time is added to the thread's.
    return cpu_clock() - t0 + op_cpu, time.perf_counter() - w0, stages


def time_pipelines(kinds, paths, scale, crop, batch, reps, tf):
    """{kind: (images/s, per-image stage ms)} on one thread, best of ``reps`` passes.

    The pipelines take turns pass by pass, so a change in the machine's load affects them alike.
    """
    best = {}
    for _ in range(reps):
        for kind in kinds:
            elapsed, wall, stages = _one_pass(kind, paths, scale, crop, batch, tf)
            if kind not in best or elapsed < best[kind][0]:
                best[kind] = (elapsed, wall, stages)
    return {k: (len(paths) / e, {n: 1e3 * v / len(paths) for n, v in st.items()}, len(paths) / w)
            for k, (e, w, st) in best.items()}


def before_eval(q, crop, mean, path):
    img = data.load_rgb(path)
    arr = np.asarray(data.rescale(img, q))
    h, w = arr.shape[:2]
    y, x = (h - crop) // 2, (w - crop) // 2
    return (arr[y:y + crop, x:x + crop].astype(np.float32) - mean) * np.float32(1 / 255)


def time_eval(paths, q, crop, reps):
    tf = data.EvalTransform(q, [120.0, 115.0, 100.0], crop=crop)
    folder_like = None
    rates = {}
    for name in ("before", "vggcore"):
        best = None
        for _ in range(reps):
            t0 = cpu_clock()
            for p in paths:
                if name == "before":
                    before_eval(q, crop, tf.mean_rgb, p)
                else:
                    with Image.open(p) as im:
                        plan = tf.plan(im.size)
                        if min(im.size) >= 2 * min(plan.scaled):
                            im.draft("RGB", tuple(plan.scaled))
                        im.load()
                        tf.apply(im.convert("RGB") if im.mode != "RGB" else im, plan)
            e = cpu_clock() - t0
            best = e if best is None else min(best, e)
        rates[name] = len(paths) / best
    del folder_like
    return rates


def before_stats(folder, sample=2000, seed=0):
    """compute_stats as it was before the threaded version: one thread, fancy indexing of float64 pixels."""
    rng = np.random.default_rng([seed, 0x57A75])
    n = len(folder)
    idx = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    total, outer, count = np.zeros(3), np.zeros((3, 3)), 0
    for i in idx:
        img = folder.load(int(i))
        if img is None:
            continue
        px = np.asarray(img, dtype=np.float64).reshape(-1, 3)
        if len(px) > 65536:
            px = px[rng.choice(len(px), size=65536, replace=False)]
        total += px.sum(0)
        outer += px.T @ px
        count += len(px)
    mean = total / count
    cov = (outer / count - np.outer(mean, mean)) / (255.0 ** 2)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    return {"mean_rgb": mean.tolist(), "eigval": np.maximum(eigval[order], 0).tolist(),
            "eigvec": eigvec[:, order].tolist()}


def time_stats(folder, workers, reps):
    """(wall, CPU) ms per image of the statistics: before, and compute_stats on 1 and ``workers`` threads."""
    best = {}
    for _ in range(reps):
        for name in ("before", "1 thread", f"{workers} threads"):
            t0, c0 = time.perf_counter(), time.process_time()
            if name == "before":
                got = before_stats(folder)
            else:
                got = data.compute_stats(folder, cache=False, num_workers=1 if name == "1 thread" else workers)
            e, c = time.perf_counter() - t0, time.process_time() - c0
            if name not in best or e < best[name][0]:
                best[name] = (e, c)
            if name == "before":
                ref = got
            elif got != ref:
                raise AssertionError("compute_stats differs from the single-threaded statistics")
    return {k: (1e3 * e / len(folder), 1e3 * c / len(folder)) for k, (e, c) in best.items()}


def loader_scaling(folder, tf, batch, max_workers, reps, device_augment=False):
    rows = []
    for workers in range(1, max_workers + 1):
        loader = data.DataLoader(folder, batch, tf, shuffle=True, seed=0, num_workers=workers, reuse_buffers=True,
                                 device_augment=device_augment)
        best = None
        for r in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            n = sum(len(y) for _, y in loader.epoch(r))
            e, c = time.perf_counter() - t0, time.process_time() - c0
            best = (e, c) if best is None or e < best[0] else best
        loader.close()
        rows.append((workers, n / best[0], n / best[1]))
    return rows


def _timed_steps(batches, todo, step):
    """Runs ``step(x, y)`` on up to ``todo`` batches of the iterator ``batches``. Returns (steps run, seconds spent
    in next(): the time the step waited for a batch that was not ready)."""
    done, wait = 0, 0.0
    asked = time.perf_counter()
    for x, y in itertools.islice(batches, todo):
        wait += time.perf_counter() - asked
        step(x, y)
        done += 1
        asked = time.perf_counter()
    return done, wait


def end_to_end(folder, tf, batch, steps, workers):
    """Training images/s of a thin VGG-A (224 crops) fed by the loader, and fed from batches in memory."""
    import vggcore.nn.functional as F
    vc.manual_seed(0)
    model = vc.models.vgg("A", num_classes=len(folder.classes), width=1 / 16, fc_width=64, input_size=tf.crop,
                          dropout=0.0, init="he").to("cpu")
    opt = vc.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loader = data.DataLoader(folder, batch, tf, shuffle=True, seed=0, num_workers=workers, reuse_buffers=True,
                             drop_last=True)

    def step(x_np, y_np):
        loss = F.cross_entropy(model(vc.tensor(x_np, device="cpu")), y_np)
        opt.zero_grad()
        loss.backward()
        opt.step()

    held = []
    for x_np, y_np in loader.epoch(0):
        held.append((x_np.copy(), y_np))
        if len(held) == 2:
            break
    step(*held[0])                                     # warm-up: allocations, kernel selection
    t0 = time.perf_counter()
    for i in range(steps):
        step(*held[i % len(held)])
    mem = steps * batch / (time.perf_counter() - t0)
    done, wait, epoch = 0, 0.0, 1
    t0 = time.perf_counter()
    while done < steps:
        n, w = _timed_steps(loader.epoch(epoch), steps - done, step)
        done, wait, epoch = done + n, wait + w, epoch + 1
    fed = steps * batch / (time.perf_counter() - t0)
    loader.close()
    return mem, fed, wait / (time.perf_counter() - t0)


def end_to_end_device(folder, tf, batch, steps, workers, device, config="A", width=1 / 16, fc_width=64,
                      prefetch=2, reps=3):
    """Training images/s of a VGG step on ``device`` fed by the real DataLoader (pinned buffers and the device
    prefetcher on sim/cuda, as vc.train does) against the same step fed from memory (one batch, already on the
    device, reused). Each step reads the loss back (loss.item(), as vc.train), so the GPU's work is timed too.
    The two alternate, ``reps`` passes of ``steps`` steps each, and the best pass of each counts. Returns (from
    memory, fed by the loader, ratio, fraction of the best fed pass spent waiting for a batch, share of the fed
    batches copied asynchronously)."""
    import vggcore.nn.functional as F
    from vggcore.prefetch import DevicePrefetcher
    vc.manual_seed(0)
    model = vc.models.vgg(config, num_classes=len(folder.classes), width=width, fc_width=fc_width,
                          input_size=tf.crop, dropout=0.0, init="he").to(device)
    opt = vc.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    pinned = device != "cpu"
    loader = data.DataLoader(folder, batch, tf, shuffle=True, seed=0, num_workers=workers, reuse_buffers=True,
                             drop_last=True, pin_memory=pinned)

    def step(x, y_np):
        loss = F.cross_entropy(model(x), y_np)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    first = loader.epoch(0)
    x_np, y_held = next(first)
    first.close()
    x_held = vc.tensor(x_np.copy(), device=device)
    y_held = y_held.copy()
    step(x_held, y_held)                               # warm-up: allocations, kernel selection, the caches
    step(x_held, y_held)
    epoch, copies, batches = 1, 0, 0

    def from_memory():
        t0 = time.perf_counter()
        for _ in range(steps):
            step(x_held, y_held)
        return steps * batch / (time.perf_counter() - t0), 0.0

    def fed():
        nonlocal epoch, copies, batches
        done, wait = 0, 0.0
        t0 = time.perf_counter()
        while done < steps:
            it = DevicePrefetcher(loader.epoch(epoch), device, prefetch)
            n, w = _timed_steps(it, steps - done, step)
            it.close()
            done, wait, epoch = done + n, wait + w, epoch + 1
            copies, batches = copies + it.async_copies, batches + n
        elapsed = time.perf_counter() - t0
        return steps * batch / elapsed, wait / elapsed

    # Alternate the two, best of `reps` each: on a shared machine the load drifts between passes.
    mem, fed_rate, wait = 0.0, 0.0, 0.0
    for _ in range(reps):
        mem = max(mem, from_memory()[0])
        rate, w = fed()
        if rate > fed_rate:
            fed_rate, wait = rate, w
    loader.close()
    return mem, fed_rate, fed_rate / mem, wait, copies / max(batches, 1)


def end_to_end_section(folder, args, stats):
    """The markdown section of ``end_to_end_device`` for ``args.device`` (its own heading)."""
    tf = data.TrainTransform(args.crop, (256, 512), stats["mean_rgb"], stats["eigval"], stats["eigvec"])
    workers = args.max_workers
    mem, fed, ratio, wait, async_share = end_to_end_device(folder, tf, args.e2e_batch, args.steps, workers, args.device,
                                              args.config, args.width, args.fc_width, args.prefetch, args.reps)
    name = args.device
    if args.device.startswith("cuda"):
        name += f" ({vc._C.cuda_device_name(int(args.device.partition(':')[2] or 0))})"
    print(f"end to end on {args.device}: memory {mem:.1f}/s, loader {fed:.1f}/s, ratio {ratio:.3f}, "
          f"wait {wait:.2f}, async copies {async_share:.2f}", flush=True)
    return ["", f"## End-to-end training step on {args.device}, data included vs from memory", "",
            f"VGG-{args.config} width {args.width:g}, fc {args.fc_width}, {args.crop} crops of S in [256, 512], "
            f"batch {args.e2e_batch}; the two alternate, best of {args.reps} passes of {args.steps} steps each "
            f"(after 2 warm-up steps), loss read back every step; device {name}. 'From memory': one batch already on the device, reused. 'Fed': the "
            f"DataLoader ({workers} decoding threads{', pinned buffers' if args.device != 'cpu' else ''}) through "
            f"the DevicePrefetcher (depth {args.prefetch}{'; on the cpu no copies are made' if args.device == 'cpu' else ''}).",
            "",
            common.markdown_table(["device", "from memory, images/s", "fed by the loader, images/s", "fed / memory",
                                   "time waiting for a batch", "batches copied asynchronously"],
                                  [[args.device, f"{mem:.1f}", f"{fed:.1f}", f"{ratio:.2f}", f"{100 * wait:.0f}%",
                                    f"{100 * async_share:.0f}%"]])]


def decode_throughput(folder, tf, batch, workers, device, reps, decoders=("cpu", "nvjpeg")):
    """Images/s from files to decoded pixels in the packed device buffer, per decoder and number of loader threads:
    "cpu" (the threads decode with Pillow; the packed pixels are uploaded) and "nvjpeg" (the threads read the bytes
    and the header; nvJPEG decodes on the device, on the training thread). Best of ``reps`` passes over the folder,
    the device synchronised at the end of each."""
    rows = []
    for decode in decoders:
        for w in workers:
            loader = data.DataLoader(folder, batch, tf, seed=0, num_workers=w, device_augment=True, decode=decode)
            best = 0.0
            for r in range(reps + 1):                  # the first pass warms the file cache and nvJPEG's buffers
                t0, n = time.perf_counter(), 0
                for x, _ in loader.epoch(r):
                    x.device_images(device)
                    n += len(x)
                vc._C.synchronize(device)
                if r:
                    best = max(best, n / (time.perf_counter() - t0))
            loader.close()
            rows.append((getattr(decode, "name", decode), w, best))
            print(f"decode {rows[-1][0]}, {w} threads: {best:.0f} images/s", flush=True)
    return rows


def decode_section(folder, args, stats):
    """The markdown section of ``decode_throughput`` on ``args.device`` (cuda only: nvJPEG runs there)."""
    if not args.device.startswith("cuda"):
        raise SystemExit("--decode-throughput measures nvJPEG: it needs --device cuda (or cuda:N)")
    tf = data.TrainTransform(224, (256, 512), stats["mean_rgb"], stats["eigval"], stats["eigvec"])
    workers = sorted({1, args.max_workers})
    rows = decode_throughput(folder, tf, args.batch, workers, args.device, args.reps)
    cpu1 = next(r for d, w, r in rows if d == "cpu" and w == 1)
    return ["", f"## JPEG decode into the packed device buffer on {args.device}, images/s", "",
            f"{len(folder)} generated JPEGs, batch {args.batch}, best of {args.reps} passes after a warm-up pass; "
            "'cpu': the loader threads decode with Pillow and the pixels are uploaded; 'nvjpeg': the threads read "
            "the bytes and the header, nvJPEG decodes on the device (vggcore.decode).", "",
            common.markdown_table(["decode", "loader threads", "images/s", "vs cpu, 1 thread"],
                                  [[d, w, f"{r:.0f}", f"{r / cpu1:.2f}x"] for d, w, r in rows])]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--folder", default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--large", type=int, default=24, help="also time this many 1600x1200 JPEGs (0: skip)")
    ap.add_argument("--steps", type=int, default=6, help="training steps of the end-to-end figure (0: skip)")
    ap.add_argument("--out", default=None)
    e2e = ap.add_argument_group("end-to-end step on a device (--end-to-end: only this section)")
    e2e.add_argument("--end-to-end", action="store_true",
                     help="only the end-to-end figure on --device; --append adds its section to a results file")
    e2e.add_argument("--device", default="cpu", help="cpu, sim, cuda, cuda:N (default cpu)")
    e2e.add_argument("--config", default="A", help="VGG configuration of the step (A..E; D is VGG-16)")
    e2e.add_argument("--width", type=float, default=1 / 16, help="channel width multiplier (1: the paper's net)")
    e2e.add_argument("--fc-width", type=int, default=64)
    e2e.add_argument("--crop", type=int, default=224)
    e2e.add_argument("--e2e-batch", type=int, default=16)
    e2e.add_argument("--prefetch", type=int, default=2, help="device prefetch depth")
    e2e.add_argument("--append", default=None, help="append the end-to-end section to this file")
    e2e.add_argument("--decode-throughput", action="store_true",
                     help="only the JPEG decode images/s, nvJPEG vs CPU threads, on --device cuda (--append as above)")
    args = ap.parse_args(argv)

    root = ensure_photos(Path(args.folder) if args.folder else cache_dir() / "bench-photos", args.images)
    folder = data.ImageFolder(root)
    paths = [p for p, _ in folder.samples][:args.images]
    crop = 224
    stats = {"mean_rgb": [120.0, 115.0, 100.0], "eigval": [0.05, 0.01, 0.002],
             "eigvec": np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0].tolist()}
    if args.end_to_end or args.decode_throughput:
        lines = (end_to_end_section if args.end_to_end else decode_section)(folder, args, stats)
        gpu = vc._C.cuda_device_name(int(args.device.partition(":")[2] or 0)) if args.device.startswith("cuda") else ""
        lines[3:3] = [*common.header_lines(gpu, extra=[
            f"images: {len(folder)} generated JPEGs in {root}", f"cores: {os.cpu_count()}",
            "load average at the start (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in os.getloadavg())]), ""]
        text = "\n".join(lines) + "\n"
        if args.append:
            with open(args.append, "a") as f:
                f.write(text)
        print(text)
        return
    lines = common.header_lines(extra=[f"images: {len(paths)} generated JPEGs (500x375 / 375x500, quality 90) "
                                       f"in {root}", f"cores: {os.cpu_count()}, batch {args.batch}, "
                                       f"best of {args.reps} passes, one thread unless stated",
                                       "load average at the start (1, 5, 15 min): "
                                       + ", ".join(f"{v:.1f}" for v in os.getloadavg())])
    lines += ["", "## Training transform, one thread (images per CPU-second of the thread, i.e. per core)", ""]
    rows = []
    sets = [("500x375", paths, (256, 384, 512, (256, 512)))]
    if args.large:
        big = ensure_photos(root.parent / f"{root.name}-large", args.large, seed=1, size=(1600, 1200))
        sets.append(("1600x1200", [p for p, _ in data.ImageFolder(big).samples], (256, (256, 512))))
    for size_label, files, scales in sets:
        for scale in scales:
            tf = data.TrainTransform(crop, scale, stats["mean_rgb"], stats["eigval"], stats["eigvec"])
            res = time_pipelines(("baseline", "before", "vggcore", "packed", "packed+op"), files, scale, crop,
                                 args.batch, args.reps, tf)
            label = f"S={scale}" if isinstance(scale, int) else f"S in [{scale[0]}, {scale[1]}]"
            for k, (ips, st, wall) in res.items():
                rows.append([size_label, label, k, f"{ips:.0f}", f"{ips / res['before'][0]:.2f}x", f"{wall:.0f}",
                             f"{st['decode']:.2f}", f"{st['resample']:.2f}", f"{st['augment']:.2f}",
                             f"{st['batch']:.2f}"])
            print(f"{size_label} {label}: " + ", ".join(f"{k} {v[0]:.0f}/s" for k, v in res.items()), flush=True)
    lines += [common.markdown_table(["images", "scale", "pipeline", "images/CPU-s", "vs before", "wall images/s", "decode ms", "resample ms",
                                    "augment ms", "batch ms"], rows)]
    lines += ["", "(baseline: S=Smin for the jittered row; per-stage times are ms per image.)", "",
              "## Eval transform (Q=256, centre crop 224), one thread", ""]
    ev = time_eval(paths, 256, crop, args.reps)
    lines += [common.markdown_table(["pipeline", "images/s", "vs before"],
                                   [[k, f"{v:.0f}", f"{v / ev['before']:.2f}x"] for k, v in ev.items()])]
    print("eval:", ev, flush=True)
    st = time_stats(folder, args.max_workers, args.reps)
    lines += ["", f"## Preprocessing statistics (mean RGB, colour PCA) of the {len(folder)} images, ms per image", "",
              "Bit-identical results (checked in the run).", ""]
    lines += [common.markdown_table(["implementation", "wall ms / image", "CPU ms / image", "wall speed-up"],
                                    [[k, f"{w:.2f}", f"{c:.2f}", f"{st['before'][0] / w:.2f}x"]
                                     for k, (w, c) in st.items()])]
    print("stats:", st, flush=True)
    tf = data.TrainTransform(crop, (256, 512), stats["mean_rgb"], stats["eigval"], stats["eigvec"])
    scaling = loader_scaling(folder, tf, args.batch, args.max_workers, args.reps)
    packed = loader_scaling(folder, tf, args.batch, args.max_workers, args.reps, device_augment=True)
    lines += ["", "## DataLoader threads, S in [256, 512] (whole pipeline, images/s)", "",
              "device_augment: the loader only decodes and packs (the augmentation runs on the training device).", ""]
    lines += [common.markdown_table(["threads", "images/s (wall)", "speed-up", "images per CPU-s",
                                     "device_augment images/s (wall)", "device_augment images per CPU-s"],
                                   [[w, f"{r:.0f}", f"{r / scaling[0][1]:.2f}x", f"{c:.0f}", f"{pr:.0f}", f"{pc:.0f}"]
                                    for (w, r, c), (_, pr, pc) in zip(scaling, packed)])]
    print("scaling:", scaling, "device_augment:", packed, flush=True)
    if args.steps:
        mem, fed, wait = end_to_end(folder, tf, 16, args.steps, args.max_workers)
        lines += ["", "## End-to-end training on cpu (VGG-A width 1/16, fc 64, 224 crops, batch 16)", "",
                  f"- from batches in memory: {mem:.1f} images/s",
                  f"- fed by the DataLoader ({args.max_workers} threads, S in [256, 512]): {fed:.1f} images/s "
                  f"({100 * wait:.0f}% of the time waiting for data)"]
        print(f"end to end: memory {mem:.1f}/s, loader {fed:.1f}/s, wait {wait:.2f}", flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
