"""Serving mmfm models over HTTP."""
