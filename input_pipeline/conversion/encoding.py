"""One image file in, a JPEG and its histogram (or the reason to skip it) out.

This is the work the spawned worker processes do, so this module, and every
module it imports, imports no TensorFlow: PIL and numpy only. A worker then
starts in a fraction of the time and memory TensorFlow would take
(tests/test_make_tfrecords.py checks it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from input_pipeline.conversion.options import JPEG_MAX_SIDE

# Room for cameras well past the real data set's largest image (DATASET.md),
# while capping a worker's decoded image at 150 MB.
MAX_PIXELS = 50_000_000

# What `encode` is given: the file, --max_image_side and --jpeg_quality.
EncodeTask = tuple[str, int, int]


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    jpeg: bytes
    height: int
    width: int
    # 768 bins (R, G, B): exact, small, and summable in any order, so channel
    # statistics do not depend on worker scheduling.
    histogram: np.ndarray


def _skip_reason(error: Exception) -> str:
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image: PIL cannot identify the format"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"decompression bomb: {error}"
    if isinstance(error, OSError) and error.errno is not None:
        # The file system's error (PIL's own OSErrors carry no errno): e.g. a
        # file removed or made unreadable after it was listed.
        return f"unreadable: {error.strerror}"
    if isinstance(error, OSError) and "truncated" in str(error):
        return f"truncated: {error}"
    return f"corrupt: {type(error).__name__}: {error}"


def _open_checked(path: str) -> Image.Image:
    """Opens (reads the header only) and refuses images over MAX_PIXELS."""
    with warnings.catch_warnings():
        # PIL only warns between its limit and twice its limit; make it fatal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(path)
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise Image.DecompressionBombError(
            f"{width}x{height} pixels is over the {MAX_PIXELS} pixel limit"
        )
    return image


def probe(path: str) -> tuple[bytes | None, str | None]:
    """Phase 1: (sha256 of the file bytes, None) or (None, why it is unusable).

    Only the header is decoded here; truncation is caught in `encode`.
    """
    try:
        if os.path.getsize(path) == 0:
            return None, "empty file"
        _open_checked(path).close()
        with open(path, "rb") as f:
            # Streams the file, so a huge file costs no memory.
            return hashlib.file_digest(f, "sha256").digest(), None
    except Exception as error:  # noqa: BLE001 - see encode
        return None, _skip_reason(error)


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    # PIL's own I;16 -> L conversion clips at 255 instead of scaling, which
    # would turn every 16-bit greyscale photograph white.
    values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
    return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 3-channel RGB."""
    if image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    ):
        # Composite over black: the segmented Aarhus images use black for
        # "no plant", and the colour hidden under alpha 0 is arbitrary.
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size)
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    if image.mode == "I" or image.mode.startswith("I;16"):
        return _sixteen_bit_to_rgb(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    longer = max(image.size)
    if not max_side or longer <= max_side:
        return image
    scale = max_side / longer
    size = tuple(max(1, round(side * scale)) for side in image.size)
    # reducing_gap first shrinks by an integer factor (fast box filter), then
    # resamples with Lanczos: near-identical output, several times faster on
    # the multi-megapixel originals.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode(task: EncodeTask) -> EncodedImage | str:
    """Phase 2: one file -> RGB JPEG and histogram, or the reason it is skipped."""
    path, max_side, quality = task
    try:
        with _open_checked(path) as image:
            image.load()  # truncation surfaces here
            ImageOps.exif_transpose(image, in_place=True)
            rgb = _shrink(_to_rgb(image), max_side)
    except Exception as error:  # noqa: BLE001
        # PIL's format plugins raise a zoo of exception types on malformed
        # input (OSError, SyntaxError, struct.error, ValueError...). A failure
        # confined to one file must be reported, not end a long run.
        return _skip_reason(error)
    if max(rgb.size) > JPEG_MAX_SIDE:  # only with --max_image_side=0
        return (f"too large: {rgb.width}x{rgb.height} px, JPEG stores at most "
                f"{JPEG_MAX_SIDE} px a side; pass --max_image_side")
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=quality)
    histogram = np.asarray(rgb.histogram(), dtype=np.int64)
    return EncodedImage(buffer.getvalue(), rgb.height, rgb.width, histogram)
