"""Raster images: PNG, JPEG, BMP, GIF and WebP through Pillow; TIFF through tifffile (Pillow as fallback)."""

from __future__ import annotations

import io
import logging
import struct
import warnings

import numpy as np

from bt_demo.errors import InputError
from bt_demo.io.slice import (
    FORMAT_LABEL,
    MAX_PIXELS,
    Selection,
    Slice,
    check_size,
    color_to_gray,
    finish,
    short_reason,
)

__all__ = ["PillowReader", "TiffReader"]

# ---------------------------------------------------------------------------
# Raster images through Pillow
# ---------------------------------------------------------------------------


class PillowReader:
    """PNG, JPEG, BMP, GIF or WebP (one reader per ``kind``) through Pillow; ``page`` picks a GIF/WebP frame."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.label = FORMAT_LABEL[kind]

    def accepts(self, kind: str | None) -> bool:
        return kind == self.kind

    def read(self, raw: bytes, sel: Selection) -> Slice:
        return _load_pillow(raw, self.kind, sel)


class TiffReader:
    """TIFF through tifffile (8/16/32-bit, float, RGB(A), palette, multi-page); Pillow for codecs it lacks."""

    label = "TIFF"

    def accepts(self, kind: str | None) -> bool:
        return kind == "tiff"

    def read(self, raw: bytes, sel: Selection) -> Slice:
        return _load_tiff(raw, sel)


def _peek_size(raw: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) from the header bytes alone, where cheap; None if unknown."""
    try:
        if kind == "png" and raw[12:16] == b"IHDR":
            return struct.unpack(">II", raw[16:24])
        if kind == "gif":
            return struct.unpack("<HH", raw[6:10])
        if kind == "bmp":
            hsize = struct.unpack("<I", raw[14:18])[0]
            if hsize == 12:
                w, h = struct.unpack("<HH", raw[18:22])
            else:
                w, h = struct.unpack("<ii", raw[18:26])
            return abs(w), abs(h)
        if kind == "jpeg":
            i = 2
            while i + 9 < len(raw):
                if raw[i] != 0xFF:
                    return None
                marker = raw[i + 1]
                if marker == 0xFF:
                    i += 1
                    continue
                seglen = struct.unpack(">H", raw[i + 2:i + 4])[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", raw[i + 5:i + 9])
                    return w, h
                i += 2 + seglen
    except struct.error:
        return None
    return None


def _pil():
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own bomb guard agrees with ours
    pil_log = logging.getLogger("PIL")
    if not pil_log.handlers:  # damaged uploads make Pillow log errors; keep them off stderr by default
        pil_log.addHandler(logging.NullHandler())
    return Image


def _load_pillow(raw: bytes, kind: str, sel: Selection, *, page_count: int | None = None) -> Slice:
    Image = _pil()
    from PIL import ImageOps, UnidentifiedImageError

    label = FORMAT_LABEL[kind]
    size = _peek_size(raw, kind)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        check_size(size[1], size[0])
    pil_format = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "gif": "GIF", "webp": "WEBP", "tiff": "TIFF"}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(raw), formats=[pil_format])
            w, h = im.size
            check_size(h, w)
            n = int(getattr(im, "n_frames", 1) or 1) if page_count is None else page_count
            chosen = sel.take("page", n)
            if chosen:
                im.seek(chosen)
            im.load()
            if kind in ("jpeg", "webp", "png"):  # (TIFF: ignored, as on the tifffile path)
                im = ImageOps.exif_transpose(im)
            px, levels, bits, photometric = _pil_to_array(im)
        except InputError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputError(f"this {label} image is larger than the limit of 4096x4096 ({MAX_PIXELS:,}) pixels "
                             "per slice; downsample or crop it before uploading") from None
        except (UnidentifiedImageError, OSError, SyntaxError, EOFError, ValueError, struct.error, IndexError,
                KeyError, TypeError, ZeroDivisionError) as e:
            raise InputError(f"this {label} file is damaged or incomplete and cannot be opened ({short_reason(e)}); "
                             "export or download it again") from None

    index: dict[str, tuple[int, int]] = {}
    if n > 1:
        index["page"] = (chosen, n)
    if px.ndim == 3:
        px, ch_index = color_to_gray(px, levels, sel)
        index.update(ch_index)
    else:
        sel.take("channel", 1)
    window = (127.5, 255.0) if levels == 255 else None
    meta = {"format": label, "bits": bits, "photometric": photometric}
    return finish(px, kind, window=window, metadata=meta, index=index)


def _pil_to_array(im) -> tuple[np.ndarray, float, str, str]:
    """Pillow image -> (array (H, W) or (H, W, 3), full-scale level, bits text, photometric text)."""
    mode = im.mode
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
        mode = im.mode
    if mode in ("1", "L"):
        a = np.asarray(im.convert("L") if mode == "1" else im)
        return a, 255.0, "1" if mode == "1" else "8", "gray"
    if mode in ("LA", "La"):
        a = np.asarray(im.convert("LA")).astype(np.float32)
        return a[..., 0] * (a[..., 1] / 255.0), 255.0, "8", "gray+alpha"
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16), 65535.0, "16", "gray"
    if mode == "I":
        a = np.asarray(im)
        levels = 65535.0 if (a.size and a.min() >= 0 and a.max() <= 65535) else float(2**31 - 1)
        return a, levels, "32", "gray"
    if mode == "F":
        return np.asarray(im), 0.0, "32f", "gray"
    if mode in ("RGBA", "RGBa"):
        a = np.asarray(im.convert("RGBA")).astype(np.float32)
        return a[..., :3] * (a[..., 3:4] / 255.0), 255.0, "8", "RGBA"
    if mode == "RGB":
        return np.asarray(im), 255.0, "8", "RGB"
    photometric = mode
    return np.asarray(im.convert("RGB")), 255.0, "8", photometric


# ---------------------------------------------------------------------------
# TIFF through tifffile (Pillow as fallback for codecs tifffile lacks)
# ---------------------------------------------------------------------------


def _load_tiff(raw: bytes, sel: Selection) -> Slice:
    import tifffile

    tiff_log = logging.getLogger("tifffile")
    if not tiff_log.handlers:  # damaged uploads make tifffile log errors; keep them off stderr by default
        tiff_log.addHandler(logging.NullHandler())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tif = tifffile.TiffFile(io.BytesIO(raw))
        except Exception as e:  # noqa: BLE001 - any parse failure is a damaged file
            raise InputError(f"this TIFF file is damaged and cannot be opened ({short_reason(e)})") from None
        with tif:
            try:
                n = len(tif.pages)
            except Exception as e:  # noqa: BLE001
                raise InputError(f"this TIFF file is damaged ({short_reason(e)})") from None
            if n == 0:
                raise InputError("this TIFF file contains no images")
            chosen = sel.take("page", n)
            try:
                page = tif.pages[chosen]
                if not isinstance(page, tifffile.TiffPage):
                    page = page.aspage()
                h, w = int(page.imagelength), int(page.imagewidth)
            except InputError:
                raise
            except Exception as e:  # noqa: BLE001
                raise InputError(f"page {chosen} of this TIFF file is damaged ({short_reason(e)})") from None
            check_size(h, w)
            depth = int(getattr(page, "imagedepth", 1) or 1)
            samples = int(page.samplesperpixel or 1)
            if depth * h * w * samples > 4 * MAX_PIXELS:
                raise InputError("this TIFF page holds a 3-D block larger than the per-slice limit; "
                                 "export it as ordinary 2-D pages")
            for off, cnt in zip(page.dataoffsets, page.databytecounts, strict=False):
                if off + cnt > len(raw):
                    raise InputError("this TIFF file is truncated (its image data stops before the end); "
                                     "export or download it again")
            photometric = int(page.photometric) if page.photometric is not None else 1
            if photometric not in (0, 1, 2, 3):  # CMYK, YCbCr, Lab, ...: let Pillow convert to RGB
                return _load_pillow(raw, "tiff", sel, page_count=n)
            try:
                arr = page.asarray()
            except Exception as e:  # noqa: BLE001
                if "imagecodecs" in str(e):  # LZW / JPEG / ... codec missing: Pillow decodes those
                    return _load_pillow(raw, "tiff", sel, page_count=n)
                raise InputError(f"page {chosen} of this TIFF file cannot be decoded ({short_reason(e)}); "
                                 "save it uncompressed and try again") from None
            axes = page.axes
            bits = int(page.bitspersample or 8)
            colormap = page.colormap if photometric == 3 else None
            extrasamples = tuple(int(v) for v in (page.extrasamples or ()))

    arr = _tiff_to_yxs(np.asarray(arr), axes)
    if arr.dtype.kind == "c":
        raise InputError("this TIFF holds complex numbers, not an image; export the magnitude image")
    if arr.dtype.kind not in "buif":
        raise InputError(f"this TIFF stores {arr.dtype} samples, which are not supported; export 8/16-bit or float")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
        bits = 8
    photo_text = {0: "MINISWHITE", 1: "MINISBLACK", 2: "RGB", 3: "PALETTE"}[photometric]
    if arr.dtype.kind == "f":
        finite = arr[np.isfinite(arr)]
        levels = float(np.abs(finite).max()) if finite.size else 1.0
        levels = levels if levels > 0 else 1.0
        bits_text, eight_bit = f"{arr.dtype.itemsize * 8}f", False
    else:
        bits = min(max(bits, 1), arr.dtype.itemsize * 8)
        levels = float(np.iinfo(arr.dtype).max) if arr.dtype.kind == "i" else float(2**bits - 1)
        bits_text, eight_bit = str(bits), arr.dtype == np.uint8 and bits == 8

    if photometric == 3:
        if colormap is None or arr.ndim != 2 or arr.dtype.kind not in "ui":
            raise InputError("this palette TIFF has no usable colour table; export it as gray or RGB")
        cmap = np.asarray(colormap).astype(np.int64)
        if cmap.ndim != 2 or cmap.shape[0] != 3 or cmap.shape[1] == 0:
            raise InputError("this palette TIFF has no usable colour table; export it as gray or RGB")
        levels = 65535.0
        if cmap.size and cmap.max() > 255 and not (cmap % 257).any():  # 8-bit palette stored as 16-bit
            cmap, levels = cmap // 257, 255.0
        elif cmap.size and cmap.max() <= 255:
            levels = 255.0
        idx = np.clip(arr.astype(np.int64), 0, cmap.shape[1] - 1)
        arr = np.moveaxis(cmap[:, idx], 0, -1)
        eight_bit = levels == 255.0
    if arr.ndim == 3:
        s = arr.shape[2]
        base = 3 if (photometric in (2, 3) and s >= 3) else 1
        if s > base:  # extra samples: composite when declared as unassociated alpha, else drop
            alpha_kind = extrasamples[0] if extrasamples else 0
            main = arr[..., :base]
            if alpha_kind == 2:
                main = main.astype(np.float32) * (arr[..., base:base + 1].astype(np.float32) / levels)
            arr = main
        if arr.shape[2] == 1:
            arr = arr[..., 0]
    if photometric == 0:  # white is zero: invert so bright = high signal
        if arr.dtype.kind == "f":
            finite = arr[np.isfinite(arr)]
            arr = (finite.max() + finite.min()) - arr if finite.size else arr
        else:
            arr = levels - arr.astype(np.float64)
    index: dict[str, tuple[int, int]] = {"page": (chosen, n)} if n > 1 else {}
    if arr.ndim == 3:
        arr, ch_index = color_to_gray(arr, levels, sel)
        index.update(ch_index)
    else:
        sel.take("channel", 1)
    meta = {"format": "TIFF", "bits": bits_text, "photometric": photo_text}
    return finish(arr, "tiff", window=(127.5, 255.0) if eight_bit else None, metadata=meta, index=index)


def _tiff_to_yxs(arr: np.ndarray, axes: str) -> np.ndarray:
    """tifffile page array with ``axes`` (e.g. 'YX', 'YXS', 'SYX', 'ZYXS') -> (Y, X) or (Y, X, S)."""
    if len(axes) != arr.ndim:
        axes = ("YX" if arr.ndim == 2 else "YXS")[: arr.ndim] if arr.ndim in (2, 3) else axes
    keep = []
    for i, ax in enumerate(axes):
        if ax in ("Y", "X", "S"):
            keep.append(i)
        elif arr.shape[i] != 1:
            raise InputError("this TIFF page holds a 3-D block of images; export it as ordinary 2-D pages")
    squeeze = tuple(i for i in range(arr.ndim) if i not in keep)
    arr = arr.squeeze(axis=squeeze) if squeeze else arr
    axes = "".join(a for a in axes if a in "YXS")
    order = [axes.index(a) for a in "YXS" if a in axes]
    return np.transpose(arr, order)
