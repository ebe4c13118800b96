"""The slice: upload (or an example), its index sliders (slice, volume, page, frame, channel), window/level and
pixel spacing. A new slice recomputes every panel (:func:`bt_demo.ui.compute.recompute`)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import gradio as gr

from bt_demo.errors import InputError
from bt_demo.ui import compute as C
from bt_demo.ui import views, views_slice
from bt_demo.ui.kit import COMPARE_OUT, EVERY_PANEL, PROMPT_OUT, SLICE_OUT, Page, handler, need_slice, notify
from bt_demo.ui.state import Session
from bt_demo.ui.views import esc

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLES_DIR = REPO_ROOT / "assets" / "examples"

# Image file suffixes of the examples (the masks beside them are for trying "upload a corrected mask").
_EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".nii", ".nii.gz")


def example_files(folder: Path | str | None = None) -> list[Path]:
    """The example files of ``folder`` (default ``assets/examples``), the quickest to try first."""
    folder = Path(folder) if folder else EXAMPLES_DIR
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        name = p.name.lower()
        if p.is_file() and name.endswith(_EXAMPLE_SUFFIXES) and "_mask" not in name:
            out.append(p)
    # the plain 256 px PNG first: the quickest to try
    out.sort(key=lambda p: (p.name != "phantom_flair.png", p.name))
    return out


def _example_label(p: Path) -> str:
    name = p.name
    kinds = {".png": "PNG", ".tif": "16-bit TIFF", ".dcm": "DICOM", ".nii.gz": "NIfTI volume"}
    for suffix, kind in kinds.items():
        if name.endswith(suffix):
            return f"{name} ({kind})"
    return name


# ---------------------------------------------------------------------------
# handlers
# ---------------------------------------------------------------------------
def _load(source, selectors: dict):
    from bt_demo.io import load_slice

    return load_slice(source, **selectors)


def _adopt_upload(s: Session, path) -> str:
    """The upload, moved out of Gradio's cache into this session's private folder (named ``upload_N``, never
    the uploaded name): the cached copy could be fetched by anyone holding its path, and outlived the session.
    Files outside Gradio's cache (examples, tests, the API with a local path) are read where they are."""
    import shutil

    from bt_demo.ui.scratch import in_gradio_cache

    if not path or not in_gradio_cache(path) or not os.path.isfile(path) or _is_example(path):
        return path
    dst = os.path.join(s.ensure_workdir(), f"upload_{time.monotonic_ns()}")
    try:
        shutil.move(path, dst)
    except OSError:
        return path
    parent = os.path.dirname(path)
    try:
        os.rmdir(parent)  # Gradio keeps each upload in a folder of its own (named by a hash)
    except OSError:
        pass
    return dst


def _is_example(path) -> bool:
    """A bundled example (synthetic, shared by every session): Gradio serves it again, so it stays."""
    ex = EXAMPLES_DIR / os.path.basename(str(path))
    try:
        return ex.is_file() and ex.stat().st_size == os.path.getsize(path) and ex.read_bytes() == open(path, "rb").read()
    except OSError:
        return False


def _forget_upload(s: Session, path) -> None:
    """Delete a file this session adopted (an upload in its private folder); anything else is left alone."""
    if s.workdir and path and os.path.dirname(str(path)) == s.workdir and os.path.basename(str(path)).startswith("upload_"):
        try:
            os.remove(path)
        except OSError:
            pass


@handler("reading the file", heavy=True)
def load_file(s: Session, engines, path) -> dict:
    """A new upload (or example): read it, reset prompts, compute every panel.

    path: the server-side path Gradio gives for the upload (``gr.File(type="filepath")``),
    or None when the file box was cleared (nothing changes then).
    On an unreadable file the previous slice stays and the status line says why.
    """
    view: dict = {}
    if path is None or (isinstance(path, (list, tuple)) and not path):
        return view
    if isinstance(path, (list, tuple)):
        path = path[0]
    path = _adopt_upload(s, getattr(path, "name", path))
    try:
        sl = _load(path, {})
    except InputError as exc:
        _forget_upload(s, path)
        keep = " The previous image is still shown." if s.loaded else ""
        view["status"] = f"⚠️ **This file could not be opened:** {esc(str(exc).rstrip('.'))}.{keep}"
        view["upload"] = None  # the upload box must not keep showing the refused file's name
        notify(view, str(exc))
        return view
    view.update(adopt_slice(s, engines, sl, str(path)))
    return view


def adopt_slice(s: Session, engines, sl, path: str | None) -> dict:
    """Make ``sl`` the session's slice (an upload read from ``path``, or a generated one with None):
    prompts reset, every panel recomputed."""
    if s.source_path and s.source_path != path:
        _forget_upload(s, s.source_path)
    s.slice, s.source_path, s.selectors = sl, path, {}
    s.window = tuple(sl.window)
    view = C.recompute(s, engines, new_image=True)
    view.update(views_slice.slice_view(s))
    return view


@handler("changing the slice", heavy=True)
def select_index(s: Session, engines, page=None, frame=None, slice_=None, volume=None, channel=None) -> dict:
    """Slice/page/frame/volume sliders (1-based, as shown) and the channel choice.

    Only the axes the loaded file has are used. The display window is kept
    (so scrolling through a volume does not change brightness); prompts are cleared.
    """
    need_slice(s)
    given = {"page": page, "frame": frame, "slice": slice_, "volume": volume}
    arg = {"page": "page", "frame": "frame", "slice": "slice_index", "volume": "volume"}
    selectors = {}
    for axis, (_chosen, count) in s.slice.index.items():
        if axis == "channel":
            ch = -1 if channel is None else int(channel)
            selectors["channel"] = None if ch < 0 else ch
        elif given.get(axis) is not None:
            v = int(round(float(given[axis]))) - 1
            selectors[arg[axis]] = min(max(v, 0), count - 1)
    sl = _load(s.source_path, selectors)
    s.slice, s.selectors = sl, selectors
    view = C.recompute(s, engines, new_image=True)
    view.update(views_slice.slice_view(s))
    return view


@handler("changing the window", heavy=True)
def set_window(s: Session, engines, center, width) -> dict:
    """Window/level (centre, width in the file's units); prompts are kept and re-answered."""
    need_slice(s)
    try:
        c, w = float(center), float(width)
    except (TypeError, ValueError):
        raise InputError("window centre and width must be numbers") from None
    if not (math.isfinite(c) and math.isfinite(w)) or w <= 0:
        raise InputError(f"window width must be above 0 (got {width})")
    s.window = (c, w)
    return C.recompute(s, engines, new_image=False)


@handler("setting the pixel spacing")
def set_spacing(s: Session, spacing_mm) -> dict:
    """Pixel spacing in mm typed by the user; used only when the file gives none. Empty/0 clears it."""
    v = None
    if spacing_mm not in (None, ""):
        v = float(spacing_mm)
        if not math.isfinite(v) or v < 0 or v > 100:
            raise InputError(f"pixel spacing must be between 0 and 100 mm, got {spacing_mm}")
        v = v or None
    s.spacing_mm = v
    if not s.loaded:
        return {}
    view = {"status": views_slice.slice_info(s)}
    view.update(C.prompt_and_compare(s))
    view.update(views.unet_view(s))
    view.update(views.kmeans_view(s))
    return view


# ---------------------------------------------------------------------------
# the panel
# ---------------------------------------------------------------------------
def build(page: Page) -> list:
    """The upload box, the examples and the status line. Returns the events that bring a new image
    (chained with the prompt engine's preparation by the layout)."""
    eng = page.engines
    upload = gr.File(label="Upload an MRI slice", file_count="single", type="filepath", height=110)
    gr.Markdown("PNG, JPEG, TIFF, BMP, DICOM or NIfTI (.nii / .nii.gz); the format is read from the "
                "content, not the name.", label="Accepted formats", elem_classes=["hint"])
    examples = example_files(page.examples_dir)
    if examples:
        gr.Examples(examples=[[str(p)] for p in examples], inputs=[upload],
                    label="Examples (synthetic phantoms, no patient data)",
                    example_labels=[_example_label(p) for p in examples],
                    cache_examples=False, examples_per_page=8)
    status = gr.Markdown("No slice loaded yet: upload a file or pick an example.", label="Slice")
    page.add(upload=upload, status=status)

    return [page.wire(upload.change, lambda s, f: load_file(s, eng, f), [upload],
                      ["upload"] + SLICE_OUT + EVERY_PANEL, api_name="upload_slice")]


def build_controls(page: Page) -> list:
    """The index sliders (shown for the axes the file has) and the window/spacing controls.
    Returns the events that bring a new image."""
    eng = page.engines
    idx_slice = gr.Slider(1, 2, value=1, step=1, label="Slice (1 = most inferior)", visible=False)
    idx_volume = gr.Slider(1, 2, value=1, step=1, label="Volume", visible=False)
    idx_page = gr.Slider(1, 2, value=1, step=1, label="Page", visible=False)
    idx_frame = gr.Slider(1, 2, value=1, step=1, label="Frame", visible=False)
    idx_channel = gr.Dropdown(choices=views_slice.CHANNEL_CHOICES, value=-1, label="Colour channel", visible=False)
    with gr.Accordion("Window / level and pixel spacing", open=False):
        win_center = gr.Slider(0, 255, value=127.5, label="Window centre (level)")
        win_width = gr.Slider(1, 510, value=255, label="Window width")
        spacing = gr.Number(value=None, label="Pixel spacing (mm), used when the file gives none",
                            minimum=0, maximum=100, step=0.01)
    page.add(idx_slice=idx_slice, idx_volume=idx_volume, idx_page=idx_page, idx_frame=idx_frame,
             idx_channel=idx_channel, win_center=win_center, win_width=win_width)

    new_image = []
    index_inputs = [idx_page, idx_frame, idx_slice, idx_volume, idx_channel]
    for ctl in (idx_page, idx_frame, idx_slice, idx_volume):
        new_image.append(page.wire(ctl.input, lambda s, *v: select_index(s, eng, *v), index_inputs,
                                   SLICE_OUT + EVERY_PANEL, trigger_mode="always_last", api_visibility="private"))
    new_image.append(page.wire(idx_channel.input, lambda s, *v: select_index(s, eng, *v), index_inputs,
                               SLICE_OUT + EVERY_PANEL, api_visibility="private"))
    for ctl in (win_center, win_width):
        new_image.append(page.wire(ctl.input, lambda s, c, w: set_window(s, eng, c, w), [win_center, win_width],
                                   EVERY_PANEL, trigger_mode="always_last", api_visibility="private"))
    for trig in (spacing.submit, spacing.blur):
        page.wire(trig, set_spacing, [spacing], ["status", "unet_info", "kmeans_info"] + PROMPT_OUT + COMPARE_OUT,
                  api_visibility="private")
    return new_image
