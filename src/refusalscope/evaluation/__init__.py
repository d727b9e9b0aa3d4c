"""Evaluation: refusal and capability under steering, sweeps and their results store."""
