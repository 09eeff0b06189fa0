"""Aspect buckets, the bucketed data order and caption augmentation (pure logic, no models)."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from lora_factory.buckets import Bucket, assign_bucket, bucket_grid, bucket_score, crop_fraction
from lora_factory.errors import StageError
from tests.training_helpers import draw_image
from training.captions import augment_caption
from training.dataset import (
    CaptionedImageDataset,
    DataOrder,
    augment,
    collate,
    cover_geometry,
    load_pixels,
)


def test_grid_holds_only_step_multiples_within_the_pixel_budget() -> None:
    grid = bucket_grid(512, 64)
    assert Bucket(512, 512) in grid and Bucket(768, 320) in grid and Bucket(320, 768) in grid
    assert all(b.width % 64 == 0 and b.height % 64 == 0 for b in grid)
    assert all(b.area <= 512 * 512 and max(b.width, b.height) <= 1024 for b in grid)
    assert Bucket(576, 512) not in grid  # over the budget


def test_assignment_never_upscales_and_follows_the_aspect_ratio() -> None:
    grid = bucket_grid(512, 64)
    rng = random.Random(0)
    for _ in range(2000):
        w, h = rng.randint(64, 3000), rng.randint(64, 3000)
        b = assign_bucket(w, h, grid)
        assert b.width <= w and b.height <= h, (w, h, b)
        # The best trade of pixels against crop among the buckets the image covers.
        assert bucket_score(w, h, b) == max(bucket_score(w, h, c) for c in grid
                                            if c.width <= w and c.height <= h)
        if min(w, h) >= 512 and max(w, h) <= 1024:
            assert crop_fraction(w, h, b) < 0.2 and b.area >= 0.6 * 512 * 512, (w, h, b)
    assert assign_bucket(1600, 900, grid).width > assign_bucket(1600, 900, grid).height
    assert assign_bucket(900, 1600, grid).height > assign_bucket(900, 1600, grid).width
    assert assign_bucket(2048, 2048, grid) == Bucket(512, 512)
    small = assign_bucket(300, 200, grid)  # below the budget: a smaller bucket, not an upscale
    assert small.width <= 300 and small.height <= 200 and small.width > small.height


def test_an_image_smaller_than_every_bucket_is_a_one_line_error() -> None:
    with pytest.raises(StageError, match="smaller than the smallest bucket") as info:
        assign_bucket(40, 40, bucket_grid(512, 64))
    assert "\n" not in str(info.value)


def test_order_never_mixes_buckets_and_covers_every_example_repeats_times() -> None:
    groups = ["a"] * 5 + ["b"] * 7 + ["c"] * 1
    order = DataOrder(groups, batch_size=3, seed=4, repeats=2)
    per_epoch = order.batches_per_epoch()
    seen: Counter[int] = Counter()
    for _ in range(per_epoch):
        batch = [d.index for d in order.next_batch()]
        assert len({groups[i] for i in batch}) == 1
        assert 1 <= len(batch) <= 3
        seen.update(batch)
    assert seen == Counter({i: 2 for i in range(len(groups))})
    assert order.epoch == 0
    order.next_batch()
    assert order.epoch == 1


def test_order_resumes_to_the_same_batches_and_augmentation_seeds() -> None:
    groups = [i % 3 for i in range(10)]
    full = DataOrder(groups, 2, seed=9)
    expected = [full.next_batch() for _ in range(12)]
    first = DataOrder(groups, 2, seed=9)
    head = [first.next_batch() for _ in range(5)]
    resumed = DataOrder(groups, 2, seed=9)
    resumed.load_state_dict(first.state_dict())
    assert head + [resumed.next_batch() for _ in range(7)] == expected
    assert [d.aug_seed for d in DataOrder(groups, 2, seed=10).next_batch()] != \
        [d.aug_seed for d in expected[0]]


def test_tag_shuffle_keeps_the_leading_tokens_and_the_tag_set() -> None:
    caption = "lfstyle, lighthouse, cliff, dusk, sea, storm"
    variants = {augment_caption(caption, random.Random(s), shuffle=True, keep_tokens=1) for s in range(30)}
    assert len(variants) > 5
    for v in variants:
        tags = v.split(", ")
        assert tags[0] == "lfstyle" and sorted(tags) == sorted(caption.split(", "))
    assert augment_caption(caption, random.Random(1), shuffle=True, keep_tokens=1) == \
        augment_caption(caption, random.Random(1), shuffle=True, keep_tokens=1)
    assert augment_caption(caption, random.Random(1)) == caption


def test_caption_dropout_empties_about_the_configured_share() -> None:
    dropped = sum(augment_caption("lfstyle, x", random.Random(s), dropout=0.2) == "" for s in range(2000))
    assert 300 < dropped < 500


@pytest.fixture()
def mixed_folder(tmp_path: Path) -> Path:
    sizes = [(160, 96), (96, 160), (128, 128), (170, 100)]
    rows = []
    for i, size in enumerate(sizes):
        draw_image(i, size).save(tmp_path / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"lfstyle, shape {i}"}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_bucketed_dataset_gives_each_image_its_bucket_without_upscaling(mixed_folder: Path) -> None:
    ds = CaptionedImageDataset(mixed_folder, 64, grid=bucket_grid(64, 16))
    assert ds.upscaled == 0
    for i, (w, h) in enumerate(ds.sizes):
        b = ds.buckets[i]
        assert b.width <= w and b.height <= h
        pixels = ds[i]["pixel_values"]
        assert pixels.shape == (3, b.height, b.width)
    assert ds.buckets[0].width > ds.buckets[0].height and ds.buckets[1].height > ds.buckets[1].width
    assert ds.buckets[0] == ds.buckets[3]  # 160x96 and 170x100: the same shape
    with pytest.raises(ValueError, match="mixes buckets"):
        collate([ds[0], ds[1]])
    assert collate([ds[0], ds[3]])["pixel_values"].shape[0] == 2


def test_a_flipped_sample_is_the_mirror_image(mixed_folder: Path) -> None:
    ds = CaptionedImageDataset(mixed_folder, 64, grid=bucket_grid(64, 16))
    plain = load_pixels(ds.sample(0))
    flipped = load_pixels(ds.sample(0, flip=True))
    assert torch.allclose(flipped, torch.flip(plain, dims=[2]), atol=1e-6)
    many = [augment(ds, d, random_flip=True, caption_dropout=0, shuffle_tags=False, keep_tokens=1).flip
            for order in [DataOrder(ds.buckets, 1, seed=s) for s in range(40)] for d in order.next_batch()]
    assert 8 < sum(many) < 32


def test_exif_rotation_is_applied_before_bucketing(tmp_path: Path) -> None:
    im = Image.new("RGB", (160, 96), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated: 96 wide, 160 tall
    im.save(tmp_path / "p.jpg", exif=exif)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "p.jpg", "text": "x"}) + "\n")
    ds = CaptionedImageDataset(tmp_path, 64, grid=bucket_grid(64, 16))
    assert ds.sizes == [(96, 160)] and ds.buckets[0].height > ds.buckets[0].width
    assert ds[0]["pixel_values"].shape[1:] == (ds.buckets[0].height, ds.buckets[0].width)


def test_sdxl_time_ids_carry_the_real_size_crop_and_bucket(mixed_folder: Path) -> None:
    from training.families.sdxl import time_ids as sdxl_time_ids

    ds = CaptionedImageDataset(mixed_folder, 64, grid=bucket_grid(64, 16))
    plain, flipped = ds.sample(0), ds.sample(0, flip=True)
    b = plain.bucket
    ids = sdxl_time_ids([plain, flipped]).tolist()
    (new_w, _), (top, left) = cover_geometry(160, 96, b)
    assert ids[0] == [96, 160, top, left, b.height, b.width]
    # Flipped: the crop's left edge is measured in the mirrored image.
    assert ids[1] == [96, 160, top, new_w - left - b.width, b.height, b.width]
