"""Import public VGG-19 releases into nst-jax params files; download; synthetic files for tests."""
