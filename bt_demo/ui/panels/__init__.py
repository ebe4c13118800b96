"""One module per tab or area of the page: its handlers, and a ``build(page)`` that creates its components inside
the current ``gr.Blocks`` and declares its events right below them (:class:`bt_demo.ui.kit.Page`).

Left column: :mod:`.upload` (file, examples, index sliders, window), :mod:`.engines` (what answers),
:mod:`.preprocessing` (before/after, histogram; the step controls below the columns). Right column, one tab
each: :mod:`.prompts`, :mod:`.compare`, :mod:`.measure`, :mod:`.uncertainty`, :mod:`.kmeans`,
:mod:`.classifier`, :mod:`.export` (and corrections), :mod:`.volume`, :mod:`.synthetic`.
"""
