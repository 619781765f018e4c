"""Weights: the params file, public VGG-19 layouts and readers, conversion, download and cache."""
