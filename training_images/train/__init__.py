"""The train step (run as `python -m training_images.train`)."""
