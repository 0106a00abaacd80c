"""noisyad."""
