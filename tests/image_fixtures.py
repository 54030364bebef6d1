"""Small image files of every kind the converter must handle, made with PIL.

Each helper writes one file and returns its path. Colours are chosen so that a
test can check, after conversion, that the right pixels came out.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Callable, Iterable

import numpy as np
from PIL import Image

# One clearly different colour per class, so a decoded record shows its label.
CLASS_COLOURS = [
    (200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40),
    (200, 40, 200), (40, 200, 200), (120, 120, 120), (240, 140, 20),
]


def _save(image: Image.Image, path: str, **params) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **params)
    return path


def class_image(path: str, colour: tuple[int, int, int], index: int, size=(40, 32)) -> str:
    """A PNG filled with `colour`, made unique by a few pixels from `index`."""
    pixels = np.empty((size[1], size[0], 3), np.uint8)
    pixels[:] = colour
    rng = np.random.default_rng(index)
    pixels[0, :8] = rng.integers(0, 256, (8, 3), dtype=np.uint8)
    return _save(Image.fromarray(pixels), path)


def make_class_folders(root: str, counts: dict[str, int], size=(40, 32)) -> str:
    """`root/<class>/<i>.png`, with `counts[class]` unique images per class."""
    for label, (name, count) in enumerate(sorted(counts.items())):
        for i in range(count):
            path = os.path.join(root, name, f"{i:03d}.png")
            class_image(path, CLASS_COLOURS[label % len(CLASS_COLOURS)], label * 1000 + i, size)
    return root


def noise_png(path: str, size=(64, 48), seed: int = 0) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return _save(Image.fromarray(pixels), path)


def not_an_image(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("this is a text file with an image extension\n")
    return path


def empty_file(path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return path


def truncated_png(path: str) -> str:
    """A valid header and the first half of the pixel data."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    data = buffer.getvalue()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(
    path: str, width: int, height: int, bit_depth: int, colour_type: int,
    rows: Callable[[], Iterable[bytes]],
) -> str:
    """Writes a PNG by hand (PIL cannot write 16-bit RGB), streaming the rows."""
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(b"\0" + row) for row in rows()) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat)
                + _chunk(b"IEND", b""))
    return path


def bomb_png(path: str, side: int) -> str:
    """A genuine black 1-bit PNG of side x side pixels, a few kB on disk."""
    row = bytes((side + 7) // 8)
    return raw_png(path, side, side, 1, 0, lambda: (row for _ in range(side)))


def rgb16_png(path: str, rgb16: tuple[int, int, int], size=(16, 12)) -> str:
    row = struct.pack(">HHH", *rgb16) * size[0]
    return raw_png(path, size[0], size[1], 16, 2, lambda: (row for _ in range(size[1])))


def grey16_png(path: str, value: int, size=(16, 12)) -> str:
    return _save(Image.fromarray(np.full((size[1], size[0]), value, np.uint16)), path)


def rgba_png(path: str, rgb: tuple[int, int, int], size=(20, 20)) -> str:
    """Left half opaque `rgb`, right half the same colour but fully transparent."""
    pixels = np.zeros((size[1], size[0], 4), np.uint8)
    pixels[..., :3] = rgb
    pixels[:, : size[0] // 2, 3] = 255
    return _save(Image.fromarray(pixels, "RGBA"), path)


def grey_png(path: str, value: int, size=(20, 20)) -> str:
    return _save(Image.new("L", size, value), path)


def palette_png(path: str, rgb: tuple[int, int, int], size=(20, 20)) -> str:
    image = Image.new("P", size, 1)
    image.putpalette([0, 0, 0, *rgb] + [0] * (3 * 254))
    return _save(image, path)


def cmyk_jpeg(path: str, cmyk: tuple[int, int, int, int], size=(24, 24)) -> str:
    return _save(Image.new("CMYK", size, cmyk), path, format="JPEG", quality=95)


def exif_rotated_jpeg(path: str, size=(48, 24)) -> str:
    """Stored wide, top half red, bottom half blue, EXIF orientation 6.

    Orientation 6 means "rotate 90 degrees clockwise to display": shown
    upright the image is tall, with red on the right and blue on the left.
    """
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[: size[1] // 2] = (255, 0, 0)
    pixels[size[1] // 2 :] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(Image.fromarray(pixels), path, format="JPEG", quality=95, exif=exif)
