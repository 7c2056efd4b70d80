"""Token-level chunking, embeddings and FAISS retrieval (plain Python, no Prefect)."""
