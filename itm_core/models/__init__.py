"""Models: the matcher, fusion heads, contrastive training, the captioner and text-to-image models."""
