"""The linear layers LoRA adapts, by name, and the placements compared (notebooks 03 and 06)."""

# The seven linear layers of a Llama-style decoder block, in the order they run
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION = PROJECTIONS[:4]  # q_proj, k_proj, v_proj, o_proj
MLP = PROJECTIONS[4:]  # gate_proj, up_proj, down_proj

TARGET_PRESETS = {  # the four placements notebooks 03 and 06 compare
    "q, v": ("q_proj", "v_proj"),  # the original LoRA paper's choice
    "attention": ATTENTION,
    "MLP": MLP,
    "all linear": PROJECTIONS,
}
