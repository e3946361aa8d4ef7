"""The register step (run as `python -m training_images.register`)."""
