"""The loss: pure per-image terms (Gram, content, style, TV) and the Objective built from them."""
