"""edgekit: make neural networks small and fast for edge devices, and prove it with measurements."""
__version__ = "0.1.0"
