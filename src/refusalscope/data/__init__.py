"""Datasets: built-in prompts, and loaders for public benchmark files."""
