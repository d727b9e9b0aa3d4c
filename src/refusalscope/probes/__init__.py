"""Linear probes for harm that still work on jailbreaks (Yeo et al. §6), and probe gates.

Train on vanilla prompts, test in and out of distribution, compare sparse-latent, random,
dense and direction probes (`compare_probes`); save probes as safetensors + JSON
(`LinearProbe`); turn the best into a `ProbeGate` for conditional steering."""

from .compare import ProbeComparison, compare_probes, table_rows
from .datasets import ProbeData, probe_data
from .linear import FeatureSpec, LinearProbe, best_threshold, fit_probe

__all__ = [
    "FeatureSpec",
    "LinearProbe",
    "ProbeComparison",
    "ProbeData",
    "best_threshold",
    "compare_probes",
    "fit_probe",
    "probe_data",
    "table_rows",
]
