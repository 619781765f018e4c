"""Benchmarks of the style-transfer step (not tests): compile and step time, batch scaling,
GFLOP/s against the machine's matrix-multiply peak, and the same step in plain PyTorch.

    python -m bench            # the recorded run: JSON + PNG in bench/results/, tables in BENCHMARKS.md
    python -m bench --quick    # small sizes, under 2 minutes on a 2-core CPU
"""
