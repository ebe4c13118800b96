"""Engines: U-Net, classifier, click model, SAM/SAM 2 and a classical fallback.

Import the submodules you need; nothing here builds a model at import time.
"""
