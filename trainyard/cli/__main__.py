"""`python -m trainyard.cli`: the same as the `trainyard` console script."""

from trainyard.cli.app import entrypoint

if __name__ == "__main__":
    entrypoint()
