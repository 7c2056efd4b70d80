"""Retrieval-poisoning probe: plant passages in a copy of an index and measure how often they take over the top k."""
