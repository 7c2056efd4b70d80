"""Chunk-cache KV reuse: compute each retrieved chunk's key/value cache once, reuse it across
questions (re-rotated to its new position), and optionally recover cross-chunk attention."""
