"""Watching models in production: reference profiles, data-quality counters and PSI drift per
deployment, and per-stage latency (see docs/contracts.md, "Monitoring")."""

from .figures import drift_report, families
from .instrument import Monitor, instrument, timed
from .reference import profiling_validator, reference_profile
from .profile import Profile, load_profile, save_profile
from .stages import STAGES, clock
from .tracker import PSI_ALERT, PSI_WARN, Tracker, psi

__all__ = ["Monitor", "Tracker", "Profile", "reference_profile", "instrument", "timed", "profiling_validator", "load_profile",
           "save_profile", "psi", "clock", "STAGES", "PSI_WARN", "PSI_ALERT", "families", "drift_report"]
