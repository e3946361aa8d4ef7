"""The fetch step (run as `python -m training_images.fetch`)."""

# The build workspace the fetch step writes and the build step reads: bundle/ (the source commit), the Dockerfile
# to build and build.json (which folder is the build context).
BUNDLE_DIR = "bundle"
BUILD_FILE = "build.json"
