"""mdiexit: early-exit, model-distributed DNN inference across a network of edge devices."""

__version__ = "0.1.0"
