"""Answer generators: a local causal LM (with chunk-cache reuse where supported), an
OpenAI-compatible HTTP endpoint, or any LangChain chat model (``generation.registry``)."""
