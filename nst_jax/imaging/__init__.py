"""Image files <-> float RGB arrays, and colour spaces."""
