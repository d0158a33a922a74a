"""Reinforcement-learning pieces shared by the RL stages (PPO now; GRPO/RLOO later)."""
