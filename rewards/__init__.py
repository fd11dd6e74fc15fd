"""Reward models for rlkit: the protocol (base), the weighted set (combine), programmatic rewards, the remote
client and its wire format, and the JRM reward model (jrm/)."""

from rewards.base import Reward, RewardInput, RewardOutput

__all__ = ["Reward", "RewardInput", "RewardOutput"]
