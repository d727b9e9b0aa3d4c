"""Refusal discovery: score SAE latents (ActDiff, CosSim, AP, IG), select, validate causally."""

from .features import METHODS, FeatureSet, RankedFeature, ScoreTables, select
from .pipeline import Discovery, DiscoveryConfig, discover
from .validation import ValidationConfig, ValidationReport, validate

__all__ = [
    "METHODS",
    "Discovery",
    "DiscoveryConfig",
    "FeatureSet",
    "RankedFeature",
    "ScoreTables",
    "ValidationConfig",
    "ValidationReport",
    "discover",
    "select",
    "validate",
]
