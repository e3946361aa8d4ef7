"""Transforms trainyard ships for datum steps, named `builtin:<name>` in a step declaration."""
