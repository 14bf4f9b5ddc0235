"""Losses of packed batches at their short, documented path (the code lives in packer.train.loss).

    from packer.loss import token_mean_loss
"""

from packer.train.loss import (example_mean_loss, example_sources, mean_example_loss, per_example_loss, sequence_logps,
                               token_mean_loss)

__all__ = ["token_mean_loss", "example_mean_loss", "per_example_loss", "mean_example_loss", "example_sources", "sequence_logps"]
