"""JRM: Joint Reward Modeling. A VLM trained jointly on preference pairs and chain-of-thought rationales that
scores an edit in one forward pass (arXiv 2602.07533)."""

from rlkit.rewards.jrm.losses import bt_loss, joint_loss, uncertain_bt_loss
from rlkit.rewards.jrm.model import JRMConfig, JRMModel

__all__ = ["JRMConfig", "JRMModel", "bt_loss", "joint_loss", "uncertain_bt_loss"]
