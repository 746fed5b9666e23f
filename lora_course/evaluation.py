"""Scoring a model on a task by what it generates, not by its loss (notebook 05).

Held-out loss says how likely the right answer is; accuracy says whether greedy decoding writes
it. The two can disagree, and users see the second, so lessons 05-07 report accuracy.
`answer_scores` gets both from one teacher-forced pass over the gold answers (notebook 06): greedy
decoding writes a gold answer exactly when every answer token is the model's top choice after the
tokens before it, so token-exact accuracy needs no generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .chat import chat_input_ids
from .data import collate
from .tasks import get_task


@dataclass
class TaskScore:
    """Accuracy of one model on one task's examples, with every prediction kept."""

    task: str
    accuracy: float  # rate of the task's main metric (tickets: exact; sql: correct)
    rates: dict[str, float]  # fraction true for every scored field
    predictions: list[str]

    def __str__(self) -> str:
        rates = ", ".join(f"{k} {v:.1%}" for k, v in self.rates.items())
        return f"{self.task}: {self.accuracy:.1%} on {len(self.predictions)} examples ({rates})"


@torch.no_grad()
def generate_batch(
    model,
    tokenizer,
    prompts: list[str],
    system: str | None | Sequence[str | None],
    max_new_tokens: int = 64,  # the longest answer in either task is 54 tokens with its end mark
    batch_size: int = 64,  # on a CPU each decoding step reads every weight: more rows share it
    progress: bool = True,
    adapter_names: Sequence[str] | None = None,
) -> list[str]:
    """Greedy replies to many prompts, batched with left padding (same text as one at a time).

    `system` is one system prompt for all, or one per prompt. `adapter_names`, one per prompt,
    serves a mixed batch on a PeftModel: each row through its own adapter, "__base__" through
    none (notebook 10).
    """
    if isinstance(adapter_names, str):
        raise TypeError("adapter_names must be a list with one name per prompt, not one string")
    systems = [system] * len(prompts) if system is None or isinstance(system, str) else system
    for what, values in (("system prompts", systems), ("adapter_names", adapter_names)):
        if values is not None and len(values) != len(prompts):
            raise ValueError(f"{len(values)} {what} for {len(prompts)} prompts: one per prompt")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    replies = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="generating", disable=not progress, leave=False):
        rows = range(start, min(start + batch_size, len(prompts)))
        ids = [chat_input_ids(tokenizer, prompts[i], systems[i])[0] for i in rows]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros_like(input_ids)  # (B, T)
        for row, x in enumerate(ids):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(x) :] = x
            attention_mask[row, width - len(x) :] = 1
        routing = (
            {} if adapter_names is None else {"adapter_names": [adapter_names[i] for i in rows]}
        )
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            **routing,
        )  # (B, T + new)
        texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        replies += [text.strip() for text in texts]
    return replies


def evaluate_task(
    model, tokenizer, rows, task: str, batch_size: int = 64, progress: bool = True
) -> TaskScore:
    """Generate an answer for every row of a task split and score it with the task's scorer."""
    spec = get_task(task)
    prompts = [row[spec.input_field] for row in rows]
    predictions = generate_batch(
        model, tokenizer, prompts, spec.system_prompt, batch_size=batch_size, progress=progress
    )
    scores = [spec.score(p, row["answer"]) for p, row in zip(predictions, rows, strict=True)]
    rates = {key: sum(s[key] for s in scores) / len(scores) for key in scores[0]}
    return TaskScore(task, rates[spec.main_metric], rates, predictions)


@torch.no_grad()
def prompt_logits(model, tokenizer, prompts: list[str], system: str | None) -> torch.Tensor:
    """Logits (B, T, vocab) of chat-formatted prompts, right-padded, fp32 on the CPU (notebook 07).

    For comparing two models on the same inputs: merged vs unmerged, saved vs reloaded.
    """
    rows = []
    for prompt in prompts:
        ids = chat_input_ids(tokenizer, prompt, system)[0].tolist()
        rows.append({"input_ids": ids, "labels": ids})
    batch = collate(rows, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    logits = model(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
    ).logits  # (B, T, vocab)
    return logits.float().cpu()


@dataclass
class AnswerScores:
    """Teacher-forced scores of gold answers: loss per answer token, and rows written exactly."""

    loss: float  # mean cross-entropy per answer token (prompt tokens don't count)
    exact: list[bool]  # per row: greedy decoding would write its answer token for token
    logits: torch.Tensor | None = None  # (N, vocab) at every answer token, if asked for

    @property
    def accuracy(self) -> float:
        """Share of rows whose whole answer, end mark included, is the model's top choice."""
        return sum(self.exact) / len(self.exact)


def _answer_logits(model, rows, pad_id: int, batch_size: int, precision):
    """Per batch: logits (N, vocab) at the positions before each answer token, the targets (N,)
    and the number of answer tokens in each row: one teacher-forced pass, no gradients."""
    if len(rows) == 0:
        raise ValueError("no rows to score")
    device = next(model.parameters()).device
    autocast = precision.autocast if precision is not None else nullcontext
    model.eval()
    for start in range(0, len(rows), batch_size):
        chunk = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        batch = {
            k: v.to(device) for k, v in collate(chunk, pad_id, answer_logits_only=True).items()
        }
        with torch.no_grad(), autocast():
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                logits_to_keep=batch["logits_to_keep"],  # (B, T) bool: before each answer token
            ).logits  # (N, vocab): one row per answer token of the batch, row by row
        per_row = batch["logits_to_keep"].sum(dim=1).tolist()  # answer tokens in each row
        yield logits.float(), batch["shift_labels"], per_row


def answer_scores(
    model, rows, pad_id: int, batch_size: int = 16, precision=None, keep_logits: bool = False
) -> AnswerScores:
    """Loss and token-exact accuracy of tokenized `rows` in one teacher-forced pass (notebook 06).

    Each answer token is predicted from the gold tokens before it (teacher forcing). If every one
    is the model's top choice, greedy decoding of the prompt writes exactly the gold answer and
    stops at its end mark; if one is not, greedy decoding leaves the gold answer there. So
    `exact` is what generating and comparing token ids would give, in one forward pass per batch
    instead of one per new token (up to float rounding in near-ties). `precision` (a
    devices.Precision) runs the pass under its autocast; by default it runs in the model's dtype.
    `keep_logits=True` keeps the logits of every answer token, to compare two models (notebook 08).
    """
    total, tokens, exact, kept = 0.0, 0, [], []
    for logits, targets, per_row in _answer_logits(model, rows, pad_id, batch_size, precision):
        total += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        tokens += len(targets)
        hits = logits.argmax(dim=-1) == targets  # (N,): the top choice is the gold token
        exact += [bool(row_hits.all()) for row_hits in hits.split(per_row)]
        if keep_logits:
            kept.append(logits)
    logits = torch.cat(kept) if keep_logits else None  # (answer tokens, vocab)
    return AnswerScores(loss=total / tokens, exact=exact, logits=logits)


# Requests that have nothing to do with either course task: what an adapter should leave alone.
UNRELATED_PROMPTS = (
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Give me three tips for a good night's sleep.",
    "Explain photosynthesis in one sentence.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 7?",
    "Name three primary colours.",
    "Suggest a name for a friendly cat.",
    "Why is the sky blue?",
    "Write one sentence about autumn.",
    "What does a thermometer measure?",
    "List two benefits of regular exercise.",
)


def kl_from_base(base, adapted, rows, pad_id: int, batch_size: int = 16, precision=None) -> float:
    """Mean KL(base || adapted) per answer token of `rows`, teacher-forced (notebook 05).

    0 when the two models predict the same next-token distributions. On replies the base model
    wrote itself to prompts unrelated to the task, it measures how far fine-tuning moved the
    model away from what it did before: a measure of forgetting.
    """
    total, tokens = 0.0, 0
    pairs = zip(
        _answer_logits(base, rows, pad_id, batch_size, precision),
        _answer_logits(adapted, rows, pad_id, batch_size, precision),
        strict=True,
    )
    for (base_logits, _, _), (adapted_logits, _, _) in pairs:
        log_p = torch.log_softmax(base_logits, dim=-1)  # (N, vocab)
        log_q = torch.log_softmax(adapted_logits, dim=-1)  # (N, vocab)
        total += (log_p.exp() * (log_p - log_q)).sum().item()
        tokens += len(base_logits)
    return total / tokens
