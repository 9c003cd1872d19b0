"""Embeddings in a frozen space and the FAISS index of past items."""
