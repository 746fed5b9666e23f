"""Prompting SmolLM2 through its chat template (introduced in notebook 00)."""

from __future__ import annotations

import torch


def chat_input_ids(tokenizer, user_message: str, system: str | None = None) -> torch.Tensor:
    """Token ids (1, seq) for one user turn, ending where the assistant's reply begins."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_message})
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    return encoded["input_ids"]  # (1, seq)


@torch.no_grad()
def generate_reply(
    model, tokenizer, user_message: str, max_new_tokens: int = 60, system: str | None = None
) -> str:
    """The model's greedy (deterministic) reply to one user message."""
    input_ids = chat_input_ids(tokenizer, user_message, system).to(model.device)  # (1, seq)
    output = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )  # (1, seq + new)
    return tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True).strip()
