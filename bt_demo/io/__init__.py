"""io: every upload -> pixels, and every result -> a file.

* :mod:`bt_demo.io.upload`: the files of one volume upload (files, folders, one level of zip) counted
  against one budget before any pixel is decoded.
* :mod:`bt_demo.io.memory`: the server-wide memory budget that volume loads share.

(The single-slice readers still live in :mod:`bt_demo.imaging`; DESIGN.md moves them here.)
"""
