"""Pajama: the RedPajama recipe (data -> base -> instruct/chat -> serve) on Ray, tracked in MLflow."""

__version__ = "0.1.0"
