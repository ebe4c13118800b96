"""studies: what the app measures and compares on a slice: K-Means clusters, classical segmenters,
measurement (RANO), agreement metrics (Dice, IoU, Hausdorff) and uncertainty."""
