"""The build step (run as `python -m training_images.build`)."""
