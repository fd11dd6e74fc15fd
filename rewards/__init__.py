"""Rewards: the protocol every plugin speaks (base), the weighted set the loop calls (combine), the wire format
of `rlkit serve-reward` and its client (wire, remote), programmatic rewards, served VLM judges (vlm_judge) and
the JRM reward model (jrm/). The rest of rlkit imports rewards through this package only."""

from rlkit.rewards.base import FunctionReward, Reward, RewardInput, RewardOutput, as_reward
from rlkit.rewards.combine import CombinedReward, RewardSet, concat
from rlkit.rewards.openai_chat import ChatEndpoint, describe, image_message, png_data_url
from rlkit.rewards.wire import WireError, decode_input, decode_output, encode_input, encode_output

__all__ = ["ChatEndpoint", "CombinedReward", "FunctionReward", "Reward", "RewardInput", "RewardOutput", "RewardSet",
           "WireError", "as_reward", "concat", "decode_input", "decode_output", "describe", "encode_input",
           "encode_output", "image_message", "png_data_url"]
