"""Reward stability: per-step signals (signals.py) and the guard that turns them into alarms (alarms.py)."""

from rlkit.stability.alarms import ACTIONS, KINDS, Alarm, StabilityGuard
from rlkit.stability.signals import StabilityTracker, group_diversity

__all__ = ["ACTIONS", "KINDS", "Alarm", "StabilityGuard", "StabilityTracker", "group_diversity"]
