"""sim: synthetic inputs (phantom slices and volumes, decoy images, simulated clicks) for tests, benchmarks,
training and the shipped examples; the app itself never runs them on a user's upload."""
