"""Videos with temporal consistency (Ruder et al. 2016): `python -m nst_jax.video`."""
