"""Image build step: build a build context's Dockerfile with buildah and push it, unless the tag exists."""
