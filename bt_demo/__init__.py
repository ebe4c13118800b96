"""bt_demo: the core of the brain-tumour MRI clinician demo.

Pure Python/NumPy (and torch for the engines, imported lazily). Nothing here
imports Gradio; the UI lives in ``bt_demo.ui`` and is only imported by app.py.
"""

__version__ = "0.1.0"
