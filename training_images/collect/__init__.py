"""Collect step: merge every datum's output into one commit of the step's output repo."""
