"""Judging models: evaluation on a split, the fusion benchmark, explanations and their faithfulness."""
