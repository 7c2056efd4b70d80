"""LLMLingua-style token pruning: a small causal LM scores every word, evidence sentences stay whole."""
