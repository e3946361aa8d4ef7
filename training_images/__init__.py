"""Step entrypoints: each subpackage is one step image, run as `python -m training_images.<step>`."""
