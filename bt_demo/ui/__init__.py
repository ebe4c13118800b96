"""The Gradio user interface: per-session state, event handlers, the page layout.

Only this package (and ``app.py``) imports Gradio; ``bt_demo`` below it does not.

* :mod:`bt_demo.ui.kit`: the shared plumbing (the handler decorator, messages, the page context ``Page``).
* :mod:`bt_demo.ui.compute`: the recompute path (slice -> preprocessing -> every automatic panel).
* :mod:`bt_demo.ui.panels`: one module per tab or area, its handlers ``(session, ...) -> (session, view)``
  and its ``build(page)``: components in ``with`` blocks, their events right below.
* :mod:`bt_demo.ui.layout`: ``build_demo(engines, annotations_dir)`` -> ``gr.Blocks``, assembling the panels.
* :mod:`bt_demo.ui.state`: :class:`~bt_demo.ui.state.Session`, what one tab holds (in ``gr.State``).
* :mod:`bt_demo.ui.views`: what each panel shows, computed from a session.
* :mod:`bt_demo.ui.tabs`: only the tab on screen is drawn and sent; hidden tabs are drawn when opened.
* :mod:`bt_demo.ui.busy`: one heavy request per session at a time (others are told to wait).
"""
