"""JPEGs decoded on the device (here the CPU runs the same code): order, resume, seeded crops, pixels.

Pixels: the PIL path and this one use different JPEG decoders (PIL's libjpeg vs torchvision's
libjpeg-turbo / nvJPEG: IDCT and chroma upsampling differ by a few levels) and different bicubic
resizers (PIL's vs torch's antialiased): the normalised images agree to a mean absolute difference
under 0.05 (about 3 levels of 255 after dividing by std ~0.225), and no pixel beyond 1.0.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from support import make_image_folder, tiny_vit

from cait_cli.errors import CaitError
from cait_cli.pipeline.data.batches import StepBatches
from cait_cli.pipeline.data.device_decode import (
    DeviceDecode,
    device_decoded,
    jpeg_bytes_of,
    wants_device_decode,
)
from cait_cli.pipeline.data.sources import collate_skipping, open_data, resolve_data_config

CPU = torch.device("cpu")


def jpeg_folder(root, count=12, seed=0):
    """Smooth random images (JPEG keeps them well) of varied sizes, in two classes."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / "train" / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(40, 70)), int(rng.integers(40, 70))
        small = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3)).astype("uint8")
        Image.fromarray(small).resize((w, h), Image.BILINEAR).save(folder / f"{i}.jpg", quality=95)
    return root


def sources(root, augment: bool, seed: int = 1, batch: int = 4, **kwargs):
    """(CPU loader batches, device-decode batches) over the same JPEG folder."""
    data_cfg = resolve_data_config(tiny_vit())
    train = open_data(str(root), data_cfg, batch_size=batch, train_augment=augment).train
    dataset, collate, finish = device_decoded("gpu", CPU, train, data_cfg, augment, seed)
    return (StepBatches(train, batch, seed, collate_skipping, **kwargs),
            StepBatches(dataset, batch, seed, collate, finish=finish, **kwargs))


def run(batches, start, stop):
    return [(step, images, labels) for step, (images, labels) in batches.iterate(start, stop, CPU)]


def test_same_images_in_the_same_order_close_to_the_pil_path(tmp_path):
    cpu, device = sources(jpeg_folder(tmp_path), augment=False)
    for (s, a, la), (t, b, lb) in zip(run(cpu, 0, 5), run(device, 0, 5)):  # 5 steps: past one epoch (3)
        assert s == t and torch.equal(la, lb) and a.shape == b.shape
        assert (a - b).abs().mean() < 0.05 and (a - b).abs().max() < 1.0


def test_resumed_start_and_workers_see_the_same_batches(tmp_path):
    _, alone = sources(jpeg_folder(tmp_path), augment=True)
    _, resumed = sources(tmp_path, augment=True, workers=2)
    whole, later = run(alone, 0, 5), run(resumed, 2, 5)
    assert [s for s, _, _ in later] == [2, 3, 4]
    for (_, a, la), (_, b, lb) in zip(whole[2:], later):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_augmentation_is_seeded(tmp_path):
    jpeg_folder(tmp_path)
    first = run(sources(tmp_path, augment=True, seed=3)[1], 0, 2)
    again = run(sources(tmp_path, augment=True, seed=3)[1], 0, 2)
    other = run(sources(tmp_path, augment=True, seed=4)[1], 0, 2)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, again))
    step = DeviceDecode(resolve_data_config(tiny_vit()), augment=True, seed=3)
    image = torch.arange(3 * 50 * 60, dtype=torch.uint8).reshape(3, 50, 60)
    assert not torch.equal(step.shape(image, 0, 0), step.shape(image, 0, 1))  # each position its own crop
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other))


def test_unreadable_jpegs_are_skipped_and_counted(tmp_path):
    jpeg_folder(tmp_path)
    (tmp_path / "train" / "class_0" / "0.jpg").write_bytes(b"not a jpeg")
    _, device = sources(tmp_path, augment=False, batch=12)
    (_, images, labels), = run(device, 0, 1)
    assert len(images) == len(labels) == 11 and device.skipped == 1


def test_auto_decodes_on_the_device_only_for_cuda_and_jpegs(tmp_path):
    data_cfg = resolve_data_config(tiny_vit())
    jpegs = open_data(str(jpeg_folder(tmp_path / "j")), data_cfg, batch_size=4).train
    pngs = open_data(str(make_image_folder(tmp_path / "p", splits=("train",))), data_cfg, batch_size=4).train
    assert jpeg_bytes_of(jpegs) is not None and jpeg_bytes_of(pngs) is None
    assert not wants_device_decode("auto", CPU, jpegs)
    assert wants_device_decode("auto", torch.device("cuda"), jpegs)
    assert not wants_device_decode("auto", torch.device("cuda"), pngs)
    with pytest.raises(CaitError, match="JPEG"):
        device_decoded("gpu", CPU, pngs, data_cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_decode_matches_the_cpu_decode(tmp_path):
    _, device = sources(jpeg_folder(tmp_path), augment=False)
    (_, on_cpu, _), = run(device, 0, 1)
    (_, on_gpu, _), = [(s, i.cpu(), la) for s, (i, la) in device.iterate(0, 1, torch.device("cuda"))]
    assert (on_cpu - on_gpu).abs().mean() < 0.05
