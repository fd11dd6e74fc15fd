"""Reward models for rlkit: the protocol, cheap programmatic rewards, and (later) the JRM module."""

from rewards.base import Reward, RewardInput, RewardOutput

__all__ = ["Reward", "RewardInput", "RewardOutput"]
