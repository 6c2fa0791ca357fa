"""Serving: the embedded Triton server and the in-process pipeline over the same repository."""
