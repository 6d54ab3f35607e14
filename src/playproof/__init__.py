"""playproof: proof-of-play impression recording for digital out-of-home screens."""

__version__ = "0.1.0"
