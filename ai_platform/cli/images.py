"""Images for ``aip models predict``: a picture file prepared as the digit page prepares a drawing, as MNIST was made
(web/digits.js ``preprocess``): ink found, cropped to its box, the longer side scaled to 20 px, pasted into 28x28
with its centre of mass in the middle. Dark ink on light paper is inverted first (MNIST is white on black)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

INK = 20 / 255  # a pixel brighter than this is ink (the page's threshold)


class ImageError(ValueError):
    """A file that is not a picture, or one with no ink; the message names the file."""


def load_digit(path: Path) -> np.ndarray:
    """(1, 1, 28, 28) float32 in 0..1 from a PNG, JPEG or other picture of one digit."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            if "A" in picture.getbands() or "transparency" in picture.info:  # ink on a transparent background
                paper = Image.new("RGBA", picture.size, "white")
                picture = Image.alpha_composite(paper, picture.convert("RGBA"))
            grey = np.asarray(picture.convert("L"), dtype=np.float32) / 255
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageError(f"{path}: not a picture this can read ({exc})") from None
    if grey.mean() > 0.5:  # dark ink on light paper
        grey = 1 - grey
    return preprocess(grey, str(path)).reshape(1, 1, 28, 28)


def preprocess(grey: np.ndarray, name: str = "the image") -> np.ndarray:
    """A (H, W) picture in 0..1, white ink on black, as a (784,) MNIST digit."""
    from PIL import Image

    rows, columns = np.nonzero(grey > INK)
    if not len(rows):
        raise ImageError(f"{name}: no ink found (an empty or blank picture)")
    box = grey[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    scale = 20 / max(box.shape)
    height, width = max(1, round(box.shape[0] * scale)), max(1, round(box.shape[1] * scale))
    small = np.asarray(Image.fromarray((box * 255).astype(np.uint8)).resize((width, height), Image.LANCZOS),
                       dtype=np.float32) / 255
    mass = small.sum()
    ys, xs = np.indices(small.shape)
    cy, cx = ((ys * small).sum() / mass, (xs * small).sum() / mass) if mass else (height / 2, width / 2)
    digit = np.zeros((28, 28), np.float32)
    top, left = round(14 - cy), round(14 - cx)
    for y in range(height):
        for x in range(width):
            ty, tx = y + top, x + left
            if 0 <= ty < 28 and 0 <= tx < 28:
                digit[ty, tx] = small[y, x]
    return digit.reshape(784)
