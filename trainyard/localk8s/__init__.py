"""A local single-node Kubernetes built from Debian packages, with its images, for the kubernetes runner."""
