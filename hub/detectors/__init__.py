"""The hub's excursion detectors: pure, readings in and findings out, with state per series.

``DetectorSet`` runs them all; each module holds one detector and says what it finds and how.
docs/detectors.md lists their parameters and their measured false-alarm rates.
"""

from hub.detectors.base import Detector, Finding, FindingKind, ProfileFor, SeriesDetector, SeriesKey, Severity
from hub.detectors.cumulative import CumulativeDetector
from hub.detectors.detector_set import DetectorSet, default_detectors
from hub.detectors.fluctuation import FluctuationDetector
from hub.detectors.mkt import MktDetector
from hub.detectors.out_of_range import OutOfRangeDetector
from hub.detectors.rate import RateOfChangeDetector
from hub.detectors.silent import SilentSensorDetector
from hub.detectors.stuck import StuckSensorDetector

__all__ = [
    "CumulativeDetector",
    "Detector",
    "DetectorSet",
    "Finding",
    "FindingKind",
    "FluctuationDetector",
    "MktDetector",
    "OutOfRangeDetector",
    "ProfileFor",
    "RateOfChangeDetector",
    "SeriesDetector",
    "SeriesKey",
    "Severity",
    "SilentSensorDetector",
    "StuckSensorDetector",
    "default_detectors",
]
