"""Independent re-implementations of the anchors' official code, for the parity tests."""
