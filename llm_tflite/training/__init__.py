"""Training from scratch, fine-tuning, and reading text corpora."""
