"""Encoding: the batched encoding pipeline and the embedding cache."""
