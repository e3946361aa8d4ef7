"""Datum step: process a chunk of datums with the step's transform, skipping those already processed."""
