"""The policy side: the model (load/save), rollout engines and held-out evaluation, the
GRPO update, and the bootstrap that builds the shipped tiny policy."""
