"""Procedural pictures for the demo site: recognisable, varied, and a pure function of the RNG.

Why procedural: the demo must run offline and give the curate/label stages images that really
differ by topic (so CLIP alignment and dedup have something to find) without shipping photos.
Each routine returns the picture and a short description that the site uses as alt text.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageFont

RGB = tuple[int, int, int]
Drawing = Callable[[random.Random, int, int], tuple[Image.Image, str]]

SKIES: tuple[tuple[str, RGB, RGB], ...] = (
    ("dawn", (250, 180, 150), (255, 230, 200)),
    ("noon", (90, 160, 235), (190, 225, 250)),
    ("dusk", (70, 50, 120), (240, 140, 90)),
    ("night", (10, 15, 45), (40, 50, 95)),
    ("under grey clouds", (130, 135, 145), (190, 195, 200)),
)
SEAS: tuple[tuple[str, RGB], ...] = (
    ("calm blue", (40, 90, 170)),
    ("deep navy", (20, 40, 90)),
    ("turquoise", (40, 170, 170)),
    ("stormy grey", (80, 95, 110)),
)
STRIPES: tuple[tuple[str, RGB, RGB], ...] = (
    ("red and white", (200, 30, 40), (245, 245, 240)),
    ("black and white", (25, 25, 30), (240, 240, 235)),
    ("blue and white", (30, 70, 170), (240, 240, 245)),
    ("yellow and black", (235, 200, 40), (30, 30, 30)),
)
GREENS: tuple[tuple[str, RGB], ...] = (
    ("dark green", (30, 100, 50)),
    ("sage green", (120, 160, 110)),
    ("bright green", (60, 170, 60)),
    ("blue-green", (50, 130, 120)),
)
SAILS: tuple[tuple[str, RGB], ...] = (
    ("white", (245, 245, 240)),
    ("red", (210, 50, 40)),
    ("orange", (240, 140, 40)),
    ("striped blue", (60, 110, 200)),
    ("cream", (240, 225, 190)),
)
HULLS: tuple[tuple[str, RGB], ...] = (
    ("white", (235, 235, 235)),
    ("dark blue", (25, 40, 90)),
    ("red", (160, 30, 30)),
    ("wooden", (130, 85, 45)),
)


def _jitter(rng: random.Random, colour: RGB, amount: int = 18) -> RGB:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def _gradient(w: int, h: int, top: RGB, bottom: RGB) -> Image.Image:
    img = Image.new("RGB", (w, h), top)
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / max(1, h - 1)
        draw.line([(0, y), (w, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)))
    return img


def lighthouse(rng: random.Random, w: int, h: int) -> tuple[Image.Image, str]:
    sky_name, sky_top, sky_bottom = rng.choice(SKIES)
    sea_name, sea = rng.choice(SEAS)
    stripe_name, c1, c2 = rng.choice(STRIPES)
    img = _gradient(w, h, _jitter(rng, sky_top), _jitter(rng, sky_bottom))
    draw = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.62, 0.78))
    draw.rectangle([0, horizon, w, h], fill=_jitter(rng, sea))
    if sky_name in ("night", "dusk"):
        mx, my = rng.randint(0, w), rng.randint(0, horizon // 3)
        draw.ellipse([mx - 6, my - 6, mx + 6, my + 6], fill=(245, 240, 210))
    cx = int(w * rng.uniform(0.3, 0.7))
    rock = _jitter(rng, (90, 80, 70), 25)
    rw = int(w * rng.uniform(0.25, 0.4))
    draw.polygon(
        [(cx - rw, h), (cx - rw // 2, horizon - 6), (cx + rw // 2, horizon - 8), (cx + rw, h)],
        fill=rock,
    )
    base_w = max(8, int(w * rng.uniform(0.12, 0.2)))
    top_w = int(base_w * 0.65)
    tower_h = int(h * rng.uniform(0.38, 0.55))
    base_y, top_y = horizon - 4, horizon - 4 - tower_h
    n = rng.randint(3, 6)
    for i in range(n):
        y0 = base_y - tower_h * (i + 1) / n
        y1 = base_y - tower_h * i / n
        half0 = (top_w + (base_w - top_w) * (y0 - top_y) / tower_h) / 2
        half1 = (top_w + (base_w - top_w) * (y1 - top_y) / tower_h) / 2
        draw.polygon(
            [(cx - half1, y1), (cx - half0, y0), (cx + half0, y0), (cx + half1, y1)],
            fill=c1 if i % 2 == 0 else c2,
        )
    lamp = (255, 235, 120) if sky_name in ("night", "dusk") else (200, 220, 230)
    lh = max(5, tower_h // 7)
    draw.rectangle(
        [cx - top_w // 2, top_y - lh, cx + top_w // 2, top_y], fill=lamp, outline=(30, 30, 30)
    )
    draw.polygon(
        [
            (cx - top_w // 2 - 2, top_y - lh),
            (cx, top_y - lh - lh),
            (cx + top_w // 2 + 2, top_y - lh),
        ],
        fill=(40, 40, 40),
    )
    if sky_name == "night":
        side = rng.choice((-1, 1))
        draw.polygon(
            [
                (cx, top_y - lh // 2),
                (cx + side * w, top_y - lh * 3),
                (cx + side * w, top_y + lh * 2),
            ],
            fill=(250, 240, 170),
        )
    return (
        img,
        f"a {stripe_name} striped lighthouse on a rocky island at {sky_name} by a {sea_name} sea",
    )


def cactus(rng: random.Random, w: int, h: int) -> tuple[Image.Image, str]:
    green_name, green = rng.choice(GREENS)
    green = _jitter(rng, green)
    potted = rng.random() < 0.4
    if potted:
        img = Image.new(
            "RGB",
            (w, h),
            _jitter(rng, rng.choice([(235, 230, 220), (200, 215, 230), (240, 220, 200)]), 10),
        )
        ground = int(h * 0.92)
    else:
        img = _gradient(w, h, _jitter(rng, (120, 180, 240)), _jitter(rng, (230, 210, 170)))
        ground = int(h * rng.uniform(0.7, 0.82))
    draw = ImageDraw.Draw(img)
    if not potted:
        draw.rectangle([0, ground, w, h], fill=_jitter(rng, (215, 180, 120)))
        sx, sy = rng.randint(w // 2, w), rng.randint(0, h // 4)
        draw.ellipse([sx - 10, sy - 10, sx + 10, sy + 10], fill=(255, 220, 90))
    cx = int(w * rng.uniform(0.35, 0.65))
    trunk_w = max(8, int(w * rng.uniform(0.12, 0.2)))
    trunk_h = int(h * rng.uniform(0.45, 0.62))
    bottom = ground - (int(h * 0.18) if potted else 0)
    top = bottom - trunk_h
    if potted:
        pw = trunk_w * 2
        draw.polygon(
            [
                (cx - pw // 2, bottom),
                (cx + pw // 2, bottom),
                (cx + pw // 3, ground),
                (cx - pw // 3, ground),
            ],
            fill=_jitter(rng, (190, 90, 50)),
        )
    draw.rounded_rectangle(
        [cx - trunk_w // 2, top, cx + trunk_w // 2, bottom], radius=trunk_w // 2, fill=green
    )
    arms = rng.randint(0, 2)
    for side in rng.sample((-1, 1), arms):
        ay = top + int(trunk_h * rng.uniform(0.3, 0.55))
        reach = int(w * rng.uniform(0.12, 0.2))
        aw = max(5, trunk_w * 2 // 3)
        x0, x1 = sorted((cx, cx + side * reach))
        draw.rounded_rectangle([x0, ay, x1, ay + aw], radius=aw // 2, fill=green)
        ax = cx + side * reach
        draw.rounded_rectangle(
            [ax - aw // 2, ay - int(trunk_h * 0.3), ax + aw // 2, ay + aw],
            radius=aw // 2,
            fill=green,
        )
    dark = tuple(max(0, c - 40) for c in green)
    for y in range(top + 4, bottom - 2, 6):
        draw.point([(cx - trunk_w // 4, y), (cx + trunk_w // 4, y)], fill=dark)
    flowers = rng.random() < 0.5
    if flowers:
        for _ in range(rng.randint(1, 3)):
            fx = cx + rng.randint(-trunk_w // 3, trunk_w // 3)
            draw.ellipse([fx - 3, top - 3, fx + 3, top + 3], fill=(240, 90, 160))
    arms_text = {0: "no arms", 1: "one arm", 2: "two arms"}[arms]
    where = "in a terracotta pot" if potted else "in the desert"
    bloom = " and pink flowers" if flowers else ""
    return img, f"a {green_name} saguaro cactus with {arms_text}{bloom} {where}"


def sailboat(rng: random.Random, w: int, h: int) -> tuple[Image.Image, str]:
    sky_name, sky_top, sky_bottom = rng.choice(SKIES[:3] + SKIES[4:])
    sea_name, sea = rng.choice(SEAS)
    sail_name, sail = rng.choice(SAILS)
    hull_name, hull = rng.choice(HULLS)
    img = _gradient(w, h, _jitter(rng, sky_top), _jitter(rng, sky_bottom))
    draw = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.55, 0.7))
    sea = _jitter(rng, sea)
    draw.rectangle([0, horizon, w, h], fill=sea)
    light = tuple(min(255, c + 50) for c in sea)
    for _ in range(rng.randint(4, 9)):
        x, y = rng.randint(0, w), rng.randint(horizon + 4, h)
        draw.arc([x - 8, y - 3, x + 8, y + 3], 200, 340, fill=light)
    for _ in range(rng.randint(0, 2)):
        x, y = rng.randint(0, w), rng.randint(4, horizon // 2)
        draw.ellipse([x - 14, y - 5, x + 14, y + 5], fill=(245, 245, 250))
    cx = int(w * rng.uniform(0.3, 0.7))
    hull_w = int(w * rng.uniform(0.3, 0.45))
    hull_h = max(6, int(h * 0.07))
    deck = horizon + int(h * rng.uniform(0.04, 0.12))
    draw.polygon(
        [
            (cx - hull_w // 2, deck),
            (cx + hull_w // 2, deck),
            (cx + hull_w // 3, deck + hull_h),
            (cx - hull_w // 3, deck + hull_h),
        ],
        fill=hull,
    )
    mast_h = int(h * rng.uniform(0.4, 0.55))
    draw.line([(cx, deck), (cx, deck - mast_h)], fill=(60, 45, 30), width=2)
    draw.polygon(
        [(cx + 2, deck - mast_h), (cx + 2, deck - 4), (cx + hull_w // 2 - 2, deck - 4)], fill=sail
    )
    draw.polygon(
        [(cx - 2, deck - mast_h + 6), (cx - 2, deck - 4), (cx - hull_w // 3, deck - 4)],
        fill=tuple(max(0, c - 25) for c in sail),
    )
    if sail_name.startswith("striped"):
        for k in range(1, 4):
            y = deck - 4 - mast_h * k // 5
            draw.line(
                [(cx + 2, y), (cx + 2 + (hull_w // 2) * (deck - y) // mast_h // 2, y)],
                fill=(250, 250, 250),
                width=2,
            )
    return (
        img,
        f"a sailboat with {sail_name} sails and a {hull_name} hull on a {sea_name} sea at {sky_name}",
    )


def lemon_cake(rng: random.Random, w: int, h: int) -> tuple[Image.Image, str]:
    img = Image.new("RGB", (w, h), _jitter(rng, (245, 240, 230)))
    draw = ImageDraw.Draw(img)
    cx, base = w // 2, int(h * 0.8)
    cw = int(w * rng.uniform(0.5, 0.7))
    layers = rng.randint(2, 4)
    lh = int(h * 0.12)
    for i in range(layers):
        colour = (250, 230, 150) if i % 2 == 0 else (255, 250, 235)
        draw.rectangle(
            [cx - cw // 2, base - (i + 1) * lh, cx + cw // 2, base - i * lh], fill=colour
        )
    top = base - layers * lh
    for _ in range(rng.randint(2, 5)):
        x = cx + rng.randint(-cw // 3, cw // 3)
        draw.ellipse([x - 7, top - 7, x + 7, top + 7], fill=(250, 220, 40), outline=(200, 170, 20))
    draw.ellipse(
        [cx - cw * 0.7, base - 4, cx + cw * 0.7, base + 10], outline=(150, 150, 160), width=2
    )
    return img, f"a {layers}-layer lemon cake topped with lemon slices"


def teapot(rng: random.Random, w: int, h: int) -> tuple[Image.Image, str]:
    colour_name, colour = rng.choice(
        (("blue", (60, 90, 180)), ("brown", (120, 70, 40)), ("green", (70, 140, 90)))
    )
    img = Image.new("RGB", (w, h), _jitter(rng, (230, 225, 215)))
    draw = ImageDraw.Draw(img)
    cx, cy = w // 2, int(h * 0.58)
    rw, rh = int(w * 0.28), int(h * 0.22)
    draw.line([(cx + rw - 4, cy), (cx + rw + w // 6, cy - h // 6)], fill=colour, width=6)
    draw.arc(
        [cx - rw - w // 8, cy - rh // 2, cx - rw + 8, cy + rh // 2], 90, 270, fill=colour, width=5
    )
    draw.ellipse([cx - rw, cy - rh, cx + rw, cy + rh], fill=colour)
    draw.ellipse([cx - 6, cy - rh - 8, cx + 6, cy - rh + 2], fill=colour)
    return img, f"a {colour_name} teapot on a kitchen table"


def soup_bowl(rng: random.Random, w: int, h: int) -> tuple[Image.Image, str]:
    img = Image.new("RGB", (w, h), _jitter(rng, (200, 170, 130)))
    draw = ImageDraw.Draw(img)
    cx, cy = w // 2, h // 2
    r = int(min(w, h) * rng.uniform(0.3, 0.42))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(245, 245, 245))
    soup = _jitter(rng, (220, 120, 40), 30)
    draw.ellipse([cx - r + 8, cy - r + 8, cx + r - 8, cy + r - 8], fill=soup)
    for _ in range(rng.randint(3, 7)):
        x, y = cx + rng.randint(-r // 2, r // 2), cy + rng.randint(-r // 2, r // 2)
        draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(60, 130, 50))
    return img, "a bowl of pumpkin soup with herbs"


def logo(rng: random.Random, w: int, h: int) -> tuple[Image.Image, str]:
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    colour = _jitter(rng, (40, 90, 160), 40)
    draw.ellipse([w * 0.15, h * 0.15, w * 0.85, h * 0.85], fill=colour)
    draw.text(
        (w // 2, h // 2),
        "DS",
        fill=(255, 255, 255),
        anchor="mm",
        font=ImageFont.load_default(size=h // 4),
    )
    return img, "the Demo Seaside Society logo"


def ad_banner(rng: random.Random, w: int, h: int) -> tuple[Image.Image, str]:
    bg = rng.choice(((255, 40, 40), (255, 200, 0), (0, 200, 90), (250, 0, 200)))
    img = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(img)
    draw.rectangle([2, 2, w - 3, h - 3], outline=(0, 0, 0), width=3)
    text = rng.choice(("BUY NOW", "50% OFF - BUY NOW", "SALE! CLICK HERE", "FREE SHIPPING"))
    size = max(10, min(h // 3, int(w / (0.7 * len(text)))))
    draw.text(
        (w // 2, h // 2), text, fill=(0, 0, 0), anchor="mm", font=ImageFont.load_default(size=size)
    )
    return img, "advertisement"


TOPIC_DRAWINGS: dict[str, Drawing] = {
    "lighthouse": lighthouse,
    "cactus": cactus,
    "sailboat": sailboat,
}
OFF_TOPIC_DRAWINGS: dict[str, Drawing] = {
    "lemon_cake": lemon_cake,
    "teapot": teapot,
    "soup_bowl": soup_bowl,
}
