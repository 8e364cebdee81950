"""Pajama: the RedPajama recipe (data -> base -> instruct/chat -> serve) on Ray, tracked in MLflow."""

__version__ = "0.2.0"
