"""Benchmarks (not tests): each measures Dunbot against a baseline run side by side, as a ratio.

The machine they run on is shared and noisy, so every figure is the best of several interleaved
repetitions and every target is a ratio to a baseline measured in the same run. `python -m bench.run`
runs them and rewrites their sections of docs/performance.md.
"""
