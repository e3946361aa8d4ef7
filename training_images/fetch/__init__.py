"""The fetch step (run as `python -m training_images.fetch`)."""
