"""Policies: one interface (:class:`Policy`) for baselines, Q-learning and learned policies."""

from edgesched.policy.base import Performance, Policy, Powersave, StaticPolicy

__all__ = ["Performance", "Policy", "Powersave", "StaticPolicy"]
