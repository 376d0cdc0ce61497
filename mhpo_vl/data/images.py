"""Images from dataset values, decoded safely: bounded memory, processor-safe geometry.

A dataset image reaches the model only through :func:`decode_image`, which

- reads the header first (``Image.open`` is lazy) and rejects an image with more
  source pixels than ``max_image_pixels`` before any pixel is decoded, so a
  decompression bomb (a 445 KB PNG of 12000 x 12000) never allocates its gigabytes;
- decodes a large JPEG at reduced scale (``Image.draft``) when the target is much
  smaller, then downscales to at most ``max_pixels``
  (:data:`DECODE_MAX_PIXELS` when the recipe sets none);
- fully decodes (``Image.load``), so a truncated or corrupt file fails here, where the
  row is known, instead of inside the processor;
- rejects geometry Qwen's processors cannot take (``smart_resize`` refuses an aspect
  ratio above :data:`MAX_ASPECT_RATIO`), judged on the image the processor will see.

Every failure is an :class:`ImageRejected` with a reason slug, a one-line detail and the
file it came from, so callers can drop the row and name it.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The largest image any Qwen-VL processor keeps (Qwen3-VL's ``longest_edge``, 4096**2;
# Qwen2/2.5-VL's is 12845056). Larger images are downscaled to this while decoding when
# the recipe sets no data.max_pixels: the processor would shrink them anyway, after
# converting the full-size image to float arrays.
DECODE_MAX_PIXELS = 16_777_216
# transformers' qwen2_vl ``smart_resize`` raises for max(h, w) / min(h, w) > 200.
MAX_ASPECT_RATIO = 200.0
# Source pixels above which an image is rejected undecoded (data.max_image_pixels).
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
# What reading or decoding a broken file raises inside PIL (a corrupt zlib stream is a
# ValueError or OSError, a broken chunk a SyntaxError, a short file an EOFError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError)


class ImageRejected(Exception):
    """An image that cannot be used: ``reason`` (a slug for metric keys), ``detail`` (one
    line for people) and ``file`` (the image file, or None for embedded bytes)."""

    def __init__(self, reason: str, detail: str, file: str | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.file = reason, detail, file


def image_file(value: Any, base_dir: Path | None) -> Path | None:
    """The file an image value points to (None for bytes or a decoded image)."""
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return None
        value = value.get("path")
    if not isinstance(value, str | Path) or value == "":
        return None
    path = Path(value)
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


def _unwrap(value: Any) -> Any:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None or value == "" or value == {}:
        raise ImageRejected("missing_image", "no image")
    return value


def open_lazy(value: Any, base_dir: Path | None = None) -> Any:
    """The image as a PIL image whose pixels are not decoded yet (header only), from a
    PIL image, a ``{bytes, path}`` dict, a path (relative to ``base_dir``) or a 1-list."""
    from PIL import Image

    value = _unwrap(value)
    if isinstance(value, Image.Image):
        return value
    file = image_file(value, base_dir)
    if file is None:
        data = value.get("bytes") if isinstance(value, Mapping) else None
        if not data:
            raise ImageRejected("missing_image", "no image")
        source: Any = io.BytesIO(data)
    else:
        if not file.is_file():
            raise ImageRejected("image_not_found", f"image file not found: {file}", str(file))
        source = file
    name = str(file) if file is not None else None
    try:
        with warnings.catch_warnings():
            # our own max_image_pixels check (below, before decoding) is the one that
            # decides; PIL's warning at 89M pixels would only be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(source)
    except Image.DecompressionBombError as exc:
        raise ImageRejected("image_too_large", f"decompression bomb: {exc}", name) from None
    except DECODE_ERRORS as exc:
        raise ImageRejected("unreadable_image", f"cannot read image: {exc}", name) from None


def check_size(size: tuple[int, int], max_image_pixels: int | None, file: str | None) -> None:
    """Reject by the header's size alone: too many pixels, an empty side, or an aspect
    ratio the processor refuses."""
    w, h = size
    if w < 1 or h < 1:
        raise ImageRejected("bad_image_geometry", f"image is {w}x{h}", file)
    if max_image_pixels and w * h > max_image_pixels:
        raise ImageRejected(
            "image_too_large",
            f"image is {w}x{h} = {w * h:,} pixels, over data.max_image_pixels "
            f"{max_image_pixels:,} (raise it to use such images; they are downscaled)",
            file,
        )
    check_aspect(size, file)


def check_aspect(size: tuple[int, int], file: str | None) -> None:
    """Qwen's ``smart_resize`` refuses ``max(h, w) / min(h, w) > 200``; so do we."""
    w, h = size
    if min(w, h) < 1 or max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise ImageRejected(
            "bad_image_geometry",
            f"image is {w}x{h}: aspect ratio over {MAX_ASPECT_RATIO:g} "
            "(Qwen-VL processors refuse it)",
            file,
        )


def verify_image(value: Any, base_dir: Path | None, max_image_pixels: int | None) -> None:
    """The load-time check: header, size and PIL's structural ``verify`` (chunk CRCs for
    PNG); reads the file but decodes no pixels."""
    from PIL import Image

    img = open_lazy(value, base_dir)
    file = str(image_file(value, base_dir) or "") or None
    if isinstance(_unwrap(value), Image.Image):
        check_size(img.size, max_image_pixels, file)
        return
    try:
        check_size(img.size, max_image_pixels, file)
        img.verify()
    except DECODE_ERRORS as exc:
        raise ImageRejected("unreadable_image", f"cannot read image: {exc}", file) from None
    finally:
        img.close()


def resize_within(image: Any, min_pixels: int | None, max_pixels: int | None) -> Any:
    """Scale ``image`` (keeping its aspect) so that width*height lies in [min, max]."""
    w, h = image.size
    area = w * h
    scale = 1.0
    if max_pixels and area > max_pixels:
        scale = math.sqrt(max_pixels / area)
    elif min_pixels and area < min_pixels:
        scale = math.sqrt(min_pixels / area)
    if scale == 1.0:
        return image
    size = (max(1, int(w * scale)), max(1, int(h * scale)))
    return image.resize(size)


def decode_image(
    value: Any,
    base_dir: Path | None = None,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Any:
    """The image as a decoded RGB PIL image of at most ``max_pixels`` (else
    :data:`DECODE_MAX_PIXELS`) pixels and processor-safe geometry; raises
    :class:`ImageRejected` (never a PIL error) when it cannot be used."""
    from PIL import Image

    src = open_lazy(value, base_dir)
    owned = not isinstance(_unwrap(value), Image.Image)  # never close the caller's image
    file = str(image_file(value, base_dir) or "") or None
    cap = max_pixels or DECODE_MAX_PIXELS
    try:
        check_size(src.size, max_image_pixels, file)
        w, h = src.size
        if w * h > cap and getattr(src, "format", None) == "JPEG":
            # decode at 1/2, 1/4 or 1/8 scale, never below the target size
            s = math.sqrt(cap / (w * h))
            src.draft("RGB", (math.ceil(w * s), math.ceil(h * s)))
        try:
            src.load()
            img = src
            if img.size[0] * img.size[1] > cap and img.mode not in ("1", "P", "PA"):
                img = resize_within(img, None, cap)  # shrink before the RGB copy
            rgb = img.convert("RGB")
        except DECODE_ERRORS as exc:
            raise ImageRejected("unreadable_image", f"cannot decode image: {exc}", file) from None
        except MemoryError:
            raise ImageRejected("image_too_large", "out of memory decoding it", file) from None
    finally:
        if owned:
            src.close()
    out = resize_within(rgb, min_pixels, cap)
    check_aspect(out.size, file)
    return out
