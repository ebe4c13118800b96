"""Training and evaluation CLIs that produce every shipped weight under weights/.

Imports bt_demo; bt_demo never imports train.
"""
