"""The one training loop and its pieces."""
