"""The network: VGG-19 layer table, the Flax model and its features, input conventions."""
