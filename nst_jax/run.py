"""python -m nst_jax.run: the image command (its code is nst_jax.cli.run)."""

import sys

from nst_jax.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
