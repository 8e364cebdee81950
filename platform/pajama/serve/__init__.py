"""Pajama serving: an OpenAI-compatible Ray Serve app over HF (or vLLM) text generation."""
