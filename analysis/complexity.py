"""Cost of a TimeSformer: FLOPs, parameters and memory, estimated in closed form and measured.

`estimate(config)` is pure arithmetic (no model is built) and sweeps a 100-point grid in a fraction of
a second; `measure(config)` runs the real model of `timesformer/` and counts the same quantities, so the
formulas are checked against the code they describe (tests/test_complexity.py does, for all five schemes).
FLOPs follow fvcore (one multiply-add is one FLOP) and are per view; memory is in bytes.
docs/complexity.md has the derivations and the reference tables.

This module is the entry point and public API; the code lives in `analysis.cost` (one module per concern).

CLI: `python analysis/complexity.py --out DIR` (or `python -m analysis.complexity --out DIR`, `tslab cost`).
"""

from __future__ import annotations

import sys

from analysis.cost.cli import build_parser, main, write_png
from analysis.cost.estimate import (
    DTYPES,
    OPTIMIZERS,
    OVERHEAD_BYTES,
    Estimate,
    GiB,
    count_params,
    estimate,
    max_batch_size,
)
from analysis.cost.measure import Measurement, measure, measure_if_it_fits
from analysis.cost.references import OFFICIAL_GFLOPS, PAPER_TFLOPS, references
from analysis.cost.shapes import StepShape, step_shapes
from analysis.cost.sweep import IMPLEMENTATIONS, sweep

__all__ = [
    "DTYPES", "OPTIMIZERS", "OVERHEAD_BYTES", "GiB", "Estimate", "StepShape", "count_params", "estimate",
    "max_batch_size", "step_shapes", "Measurement", "measure", "measure_if_it_fits", "IMPLEMENTATIONS", "sweep",
    "OFFICIAL_GFLOPS", "PAPER_TFLOPS", "references", "build_parser", "main", "write_png",
]

if __name__ == "__main__":
    sys.exit(main())
