"""Benchmark harness: impls x specs x shapes, mask-exact TFLOP/s, ratios to a baseline."""
