"""python -m nst_jax.video: the video command (its code is nst_jax.cli.video)."""

import sys

from nst_jax.cli.video import main

sys.exit(main())
