"""Models: the matcher, fusion heads, contrastive training, the captioner and text-to-image models, retrieval
ranks and reranking, and the model folders they are saved in."""
