"""Shared test helpers: tiny datasets, Hydra configs, command lines, models and learning runs."""
