"""Streaming deepfake-moderation worker: upload events in, takedown recommendations out."""

__version__ = "0.1.0"
