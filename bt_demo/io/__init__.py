"""io: every upload -> pixels, and every result -> a file.

The one face for a single slice is :func:`load_slice` (any supported file -> one :class:`Slice`); it lives in
:mod:`bt_demo.io.readers` and is re-exported here with the Slice model and its limits.

* :mod:`bt_demo.io.slice`: the :class:`Slice` model, the index :class:`~bt_demo.io.slice.Selection`, the limits
  (:data:`MAX_PIXELS`, ...) and the finishing checks every reader shares.
* :mod:`bt_demo.io.sniff`: raw bytes first: the upload read under its size cap, the format told from content,
  gzip decompressed only as far as needed.
* :mod:`bt_demo.io.readers`: :func:`load_slice` and the :class:`~bt_demo.io.readers.Reader` face, one reader per
  format: :mod:`bt_demo.io.raster` (Pillow, TIFF), :mod:`bt_demo.io.dicom`, :mod:`bt_demo.io.nifti`.
* :mod:`bt_demo.io.upload`: the files of one volume upload (files, folders, one level of zip) counted
  against one budget before any pixel is decoded.
* :mod:`bt_demo.io.memory`: the server-wide memory budget that volume loads share.
* :mod:`bt_demo.io.export`: a mask and a report out (PNG, NIfTI, DICOM SEG, JSON).
* :mod:`bt_demo.io.corrections`: the store of corrected masks, de-identified, for the next training round.
"""

from bt_demo.io.readers import load_slice
from bt_demo.io.slice import (
    AXES,
    MAX_ASPECT,
    MAX_PIXELS,
    MAX_VOLUME_VOXELS,
    MIN_SIDE,
    SOURCES,
    Slice,
    describe_indices,
)

__all__ = [
    "AXES",
    "MAX_ASPECT",
    "MAX_PIXELS",
    "MAX_VOLUME_VOXELS",
    "MIN_SIDE",
    "SOURCES",
    "Slice",
    "describe_indices",
    "load_slice",
]
