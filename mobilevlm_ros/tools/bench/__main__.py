"""python -m mobilevlm_ros.tools.bench: mobilevlm-bench (its worker processes start it so)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
