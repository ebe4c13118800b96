"""Panels of hidden tabs are drawn when their tab is opened, not on every event.

A click or an upload changes panels in every tab, but a person sees one tab
at a time (plus the left column). Drawing, encoding and sending the hidden
tabs' images was most of the time a click took in the browser, so:

* ``Session.tab`` is the tab on screen (None: every tab counts as shown, the
  default for handler-level callers and tests);
* :func:`draw` renders a tab's panels only when it is shown, else remembers
  the tab in ``Session.stale``;
* :func:`hold_back` drops a finished view's values for hidden tabs (and
  remembers them as stale), so only what is on screen travels;
* :func:`redraw` (on the tab's ``select``) draws a stale tab when it opens.

Panels outside the tabs (status line, before/after, histogram) always travel.
"""

from __future__ import annotations

from collections.abc import Callable

from bt_demo.ui import views

# the components of each tab that a handler's view may update (the Volume tab has its own events)
PANELS: dict[str, tuple[str, ...]] = {
    "prompts": ("prompt_image", "prompt_info", "candidates", "engine"),
    "compare": ("overlay_unet", "overlay_prompt", "overlay_kmeans", "compare_info", "metrics_table", "area_table",
                "agreement_image", "agreement_legend", "unet_info",
                *(f"overlay_{name}" for name in views.CLASSICAL_NAMES)),
    "measure": ("measure_image", "measure_table", "measure_which"),
    "uncertainty": ("uncertainty_image", "uncertainty_info"),
    "kmeans": ("kmeans_image", "kmeans_info", "sweep_plot", "sweep_info"),
    "classifier": ("class_label", "class_info", "gradcam_image", "gradcam_class", "heads_info",
                   "heads_cam_image"),
    "export": ("export_which",),
}
TAB_OF = {name: tab for tab, names in PANELS.items() for name in names}


def _compare(s) -> dict:
    return views.compare_view(s, measure=False) | views.unet_view(s)


def _export(s) -> dict:
    return {"export_which": s.chosen_mask if s.chosen_mask in views.MASK_KEYS else "prompted"}


# what opening a tab draws (each returns a view dict)
VIEWS: dict[str, Callable[[object], dict]] = {
    "prompts": views.prompt_view,
    "compare": _compare,
    "measure": views.measure_view,
    "uncertainty": views.uncertainty_view,
    "kmeans": lambda s: views.kmeans_view(s) | views.sweep_view(s),
    "classifier": views.classifier_view,
    "export": _export,
}


def shown(s, tab: str) -> bool:
    """Is ``tab`` on screen for this session (always, for a session without a known tab)?"""
    return s.tab is None or s.tab == tab


def draw(s, view: dict, *tabs: str) -> dict:
    """Add the panels of each shown tab in ``tabs`` to ``view``; the hidden ones become stale."""
    for tab in tabs:
        if shown(s, tab):
            view.update(VIEWS[tab](s))
            s.stale = s.stale - {tab}
        else:
            s.stale = s.stale | {tab}
    return view


def hold_back(s, view: dict) -> dict:
    """``view`` without the values for hidden tabs; those tabs are redrawn when opened."""
    if s.tab is None:
        return view
    hidden = {TAB_OF[k] for k in view if k in TAB_OF and TAB_OF[k] != s.tab}
    if not hidden:
        return view
    s.stale = s.stale | hidden
    return {k: v for k, v in view.items() if TAB_OF.get(k) not in hidden}


def redraw(s, tab: str) -> dict:
    """``tab`` is now on screen: its panels if they are stale, else nothing (the browser still shows them)."""
    s.tab = tab
    if tab not in s.stale or tab not in VIEWS or not s.loaded:
        return {}
    return draw(s, {}, tab)
