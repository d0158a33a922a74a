"""The RL stages' library: rlmed's PPO trainer and math, DPO/DFPO losses, reward adapters and gates.

Library code: nothing here imports a stage (docs/architecture.md, "Direction of imports"), so each piece takes
its settings as arguments and is tested without a recipe.
"""
