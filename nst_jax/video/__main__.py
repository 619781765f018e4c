"""python -m nst_jax.video: see nst_jax.video.transfer."""

import sys

from nst_jax.video.transfer import main

sys.exit(main())
