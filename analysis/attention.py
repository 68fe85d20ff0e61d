"""`python -m analysis.attention CLIP --out DIR`: the earlier name of `tslab explain` (analysis/report.py)."""

import sys

from analysis.report import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m analysis.attention"))
