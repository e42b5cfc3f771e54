"""Shifted digit domains, for diffusion priors trained away from the target (docs/domain_shift.md).

The target stays the embedded handwritten `digits`. These datasets only feed a prior (their
`prior` split) and measure it per domain (`val`, `test`); each renders 32x32 RGB, deterministic
from a seed, and is exported like `digits` (whole splits, atomically):

* `printed`: the ten digits typed in the TrueType fonts that matplotlib ships, fitted to the
  frame, with a random rotation, stroke width and offset, then passed through the handwritten
  export's 8x8 -> 32 resampling. The prior split and the val/test splits use disjoint fonts.
* `inverted`: the handwritten digits, black ink on white.
* `lowcontrast`: the handwritten digits, ink at a quarter of the range on mid-grey.
* `photo`: the handwritten digits blended over colour patches of scikit-learn's sample photos,
  as in MNIST-M (|patch - ink|): the prior split crops `china.jpg`, val/test crop `flower.jpg`.

The derived three reuse the committed `digits` split indices, so their `prior` split holds the
very images of digits' `prior` split, only restyled: a pure appearance shift.
"""
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from distdiff import DistDiffError
from embedded.digits import digit_to_image, export_digits
from embedded.names import SHIFTED as SHIFTS
from embedded.names import SHIFTED_SPLITS as SPLITS

logger = logging.getLogger(__name__)
PRINTED_PER_CLASS = {"prior": 100, "val": 20, "test": 50}  # digits' prior split has 80-110 per class
# Text fonts with the ten digits; the DejaVu Sans Mono family and two Computer Modern faces are
# held out of the prior split, so printed val/test measure a prior on unseen glyph shapes.
PRIOR_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
               "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
               "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
               "cmr10.ttf", "cmb10.ttf", "cmtt10.ttf")
HELD_OUT_FONTS = ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
                  "DejaVuSansMono-BoldOblique.ttf", "cmss10.ttf", "cmti10.ttf")
SHIFT_SEED = 0


def font_path(name):
    """A font file shipped with matplotlib."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name


def render_printed(digit, font, rng, canvas=96):
    """One typed digit as an 8x8 array in [0, 16], like sklearn's digits."""
    face = ImageFont.truetype(str(font_path(font)), size=canvas // 2)
    img = Image.new("L", (canvas, canvas), 0)
    ImageDraw.Draw(img).text((canvas // 4, canvas // 8), str(digit), fill=255, font=face,
                             stroke_width=int(rng.integers(0, 4)), stroke_fill=255)
    img = img.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
    box = img.getbbox()
    if box is None:
        raise DistDiffError(f"font {font} draws nothing for {digit}")
    glyph = img.crop(box)
    # Fit the glyph into the frame the way the handwritten digits fill it: the height spans about
    # 7 of the 8 cells, centred, then a random offset of up to half a cell.
    side = max(glyph.size)
    square = Image.new("L", (side, side), 0)
    square.paste(glyph, ((side - glyph.size[0]) // 2, (side - glyph.size[1]) // 2))
    frame = 64
    inner = int(frame * 7 / 8)
    dx, dy = (int(v) for v in rng.integers(-4, 5, size=2))
    framed = Image.new("L", (frame, frame), 0)
    framed.paste(square.resize((inner, inner), Image.BILINEAR), ((frame - inner) // 2 + dx, (frame - inner) // 2 + dy))
    small = np.asarray(framed.resize((8, 8), Image.BOX), dtype=np.float64)
    return np.round(small * 16.0 / 255.0)  # sklearn's 17 grey levels


def restyle(image, shift, rng, photo=None):
    """A handwritten 32x32 RGB digit (white on black) restyled by `shift`."""
    ink = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    if shift == "inverted":
        out = 1.0 - ink
    elif shift == "lowcontrast":
        out = 0.375 + 0.25 * ink
    elif shift == "photo":
        patch = random_patch(photo, image.size[0], rng)
        return Image.fromarray(np.abs(patch - ink[..., None] * 255.0).astype(np.uint8))
    else:
        raise DistDiffError(f"unknown restyling {shift!r}")
    return Image.fromarray(np.round(out * 255).astype(np.uint8)).convert("RGB")


def random_patch(photo, side, rng):
    """A random square crop of a photo (1/8 to 1/3 of its height), resized to side x side."""
    h, w = photo.shape[:2]
    crop = int(rng.integers(h // 8, h // 3 + 1))
    y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
    patch = Image.fromarray(photo[y:y + crop, x:x + crop]).resize((side, side), Image.BILINEAR)
    return np.asarray(patch, dtype=np.float64)


def sample_photos():
    """scikit-learn's two sample photos: china.jpg (prior split) and flower.jpg (val/test)."""
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    by_name = {Path(f).name: img for f, img in zip(data.filenames, data.images)}
    return {"prior": by_name["china.jpg"], "val": by_name["flower.jpg"], "test": by_name["flower.jpg"]}


def printed_items(split, seed=SHIFT_SEED):
    """[(file stem, digit, 8x8 array)] of one printed split, class-balanced and seeded."""
    fonts = PRIOR_FONTS if split == "prior" else HELD_OUT_FONTS
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    items = []
    for digit in range(10):
        for i in range(PRINTED_PER_CLASS[split]):
            font = fonts[(i + digit) % len(fonts)]  # every font about equally often per class
            items.append((f"{digit}_{i:03d}", digit, render_printed(digit, font, rng)))
    return items


def export_shift(name, root, digits_root, seed=SHIFT_SEED):
    """Write <root>/{prior,val,test}/<digit>/*.png once per split (atomic per split)."""
    if name not in SHIFTS:
        raise DistDiffError(f"unknown shifted dataset {name!r}; known: {', '.join(SHIFTS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    photos = sample_photos() if name == "photo" else {}
    for split in SPLITS:
        if (root / split).is_dir():
            continue
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{split}."))
        try:
            for stem, digit, image in _split_images(name, split, digits_root, seed, photos):
                class_dir = tmp / str(digit)
                class_dir.mkdir(exist_ok=True)
                image.save(class_dir / f"{stem}.png")
            os.replace(tmp, root / split)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("%s: wrote %s", name, root / split)


def _split_images(name, split, digits_root, seed, photos):
    """(stem, digit, 32x32 RGB image) of one split of a shifted dataset."""
    if name == "printed":
        for stem, digit, small in printed_items(split, seed):
            yield stem, digit, digit_to_image(small)
        return
    export_digits(digits_root)
    rng = np.random.default_rng([seed, SHIFTS.index(name), SPLITS.index(split)])
    for class_dir in sorted(p for p in (Path(digits_root) / split).iterdir() if p.is_dir()):
        for path in sorted(class_dir.glob("*.png")):
            with Image.open(path) as img:
                yield path.stem, class_dir.name, restyle(img.convert("RGB"), name, rng, photos.get(split))
