"""Volume mode: a whole NIfTI volume or DICOM series, segmented slice by slice, measured in mL, and
exported so the mask sits on its source in any viewer.

- :mod:`bt_demo.volume.series`  any volume upload -> :class:`Volume` (display-ordered slices + geometry)
- :mod:`bt_demo.volume.segment` U-Net over every slice, 3-D post-processing, volume numbers, propagation
- :mod:`bt_demo.volume.export`  the 3-D mask as NIfTI in the source's grid, DICOM SEG for DICOM series
- ``python -m bt_demo.volume INPUT... --out DIR``: the same without the UI, for folders of volumes
"""

from bt_demo.volume.series import Volume, load_volume

__all__ = ["Volume", "load_volume"]
