"""Context compression: LLMLingua-style token pruning, extractive selection, chunk-cache KV reuse."""
