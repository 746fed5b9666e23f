"""TRL's SFTTrainer on the course's tasks, with the loss on the answer tokens only (notebook 11).

SFTTrainer takes conversations and builds the loss mask itself, from one of two sources:
a prompt-completion dataset (the completion's tokens), or, with `assistant_only_loss=True`, the
`{% generation %}` markers of the chat template. SmolLM2's template has no such markers, so
`training_chat_template` writes them into it (checked to render every conversation exactly as the
original does). `loss_mask_problems` is the check that catches a mask that trains on the wrong
tokens: the count of loss tokens of every example must equal its answer's.
"""

from __future__ import annotations

import copy

import torch

from .data import IGNORE_INDEX, load_task, tokenized_task
from .devices import Precision, choose_precision
from .finetune import (
    FinetuneConfig,
    _bar_without_log_lines,
    _train_with_training_attention,
    length_grouped_order,
    training_settings,
)
from .tasks import get_task

#: the dataset layouts SFTTrainer reads, and how each one decides what the loss sees
STYLES = {
    "messages": "whole conversations; TRL's default trains on every token of them",
    "prompt-completion": "the prompt apart from the completion; TRL trains on the completion",
    "assistant-only": "whole conversations with assistant_only_loss=True and a marked template",
}

# SmolLM2's chat template with {% generation %} around what the assistant writes, its closing
# <|im_end|> included (the model must learn to stop) and the newline after it left out.
_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SMOLLM2_TRAINING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + _DEFAULT_SYSTEM + "<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# conversations on which the marked template must render exactly as the tokenizer's own
_PROBES = (
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6\nDone."},
    ],
)


def training_chat_template(tokenizer) -> str:
    """SmolLM2's chat template with generation markers, for assistant_only_loss (notebook 11).

    Raises ValueError if `tokenizer` renders conversations differently from SmolLM2's template:
    the markers were written for that template, and a mask from another would be wrong.
    """
    for messages in _PROBES:
        for prompt in (messages[:-1], messages):
            generation = prompt is not messages
            ours = tokenizer.apply_chat_template(
                prompt, chat_template=SMOLLM2_TRAINING_TEMPLATE, tokenize=False,
                add_generation_prompt=generation,
            )  # fmt: skip
            theirs = tokenizer.apply_chat_template(
                prompt, tokenize=False, add_generation_prompt=generation
            )
            if ours != theirs:
                raise ValueError(
                    "this tokenizer's chat template is not SmolLM2's: write generation markers "
                    f"into its own template instead (it renders {theirs!r}, the marked one "
                    f"{ours!r})"
                )
    return SMOLLM2_TRAINING_TEMPLATE


def assistant_mask(tokenizer, messages: list[dict]) -> list[int]:
    """1 on each token of the rendered conversation that an assistant wrote, else 0 (exercise 11.2).

    The tokens are those of the tokenizer's own chat template; an assistant's closing <|im_end|>
    counts as written by it, the role header and the newline after <|im_end|> do not.
    """
    rendered = tokenizer.apply_chat_template(
        messages, chat_template=training_chat_template(tokenizer), return_dict=True,
        return_assistant_tokens_mask=True,
    )  # fmt: skip
    return list(rendered["assistant_masks"])


def chat_rows(task: str, split: str, style: str):
    """A split of `task` as SFTTrainer's conversational rows in `style` (STYLES) (notebook 11)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    spec = get_task(task)

    def conversation(row):
        prompt = [
            {"role": "system", "content": spec.system_prompt},
            {"role": "user", "content": row[spec.input_field]},
        ]
        completion = [{"role": "assistant", "content": row["answer"]}]
        if style == "prompt-completion":
            return {"prompt": prompt, "completion": completion}
        return {"messages": prompt + completion}

    rows = load_task(task)[split]
    return rows.map(conversation, remove_columns=rows.column_names)


def answer_token_counts(tokenizer, task: str, split: str) -> list[int]:
    """Tokens of each answer plus its <|im_end|>: what the loss should see (notebook 11)."""
    labels = tokenized_task(task, tokenizer)[split]["labels"]
    return [sum(label != IGNORE_INDEX for label in row) for row in labels]


def loss_token_counts(trainer, examples: int | None = None) -> list[int]:
    """Tokens the loss looks at, per row of `trainer`'s training set, through its own collator.

    The first `examples` rows (all by default), one at a time, as the Trainer would batch them.
    """
    rows = trainer.train_dataset
    count = len(rows) if examples is None else min(examples, len(rows))
    counts = []
    for row in rows.select(range(count)):
        labels = trainer.data_collator([row])["labels"][0]  # (T,)
        counts.append(int((labels[1:] != IGNORE_INDEX).sum()))  # position 0 predicts nothing
    return counts


def loss_mask_problems(counts: list[int], expected: list[int]) -> list[str]:
    """What is wrong when the loss-token counts differ from the answers' (notebook 11).

    Empty when every row's count equals its answer's. `counts` and `expected` are per row, in the
    same order (loss_token_counts of an unshuffled trainer, answer_token_counts of its rows).
    """
    if len(counts) != len(expected):
        raise ValueError(f"{len(counts)} counts for {len(expected)} expected rows")
    problems = []
    for row, (got, want) in enumerate(zip(counts, expected, strict=True)):
        if got == want:
            continue
        if got == 0:
            why = "nothing of it trains (an all-zero mask)"
        elif got > want:
            why = "the loss also covers the prompt or the template (too many ones)"
        else:
            why = "part of the answer is not trained (its end-of-turn token?)"
        problems.append(f"row {row}: {got} loss tokens, its answer has {want}: {why}")
    return problems


def training_order(tokenizer, config: FinetuneConfig) -> list[int]:
    """Training-split row indices in the order make_trainer feeds them, one process (notebook 11).

    sft_trainer feeds its conversations in this order, so the two trainers see the same batches.
    """
    lengths = [len(row) for row in tokenized_task(config.task, tokenizer)["train"]["input_ids"]]
    batches = config.steps * config.grad_accum
    return length_grouped_order(lengths, config.batch_size, batches, config.seed)


def sft_trainer(
    model,
    tokenizer,
    config: FinetuneConfig,
    output_dir,
    style: str = "assistant-only",
    precision: Precision | None = None,
    progress: bool = True,
    callbacks=(),
):
    """TRL's SFTTrainer with PEFT's LoRA on `config`'s task, in `config`'s recipe (notebook 11).

    The same settings as finetune.make_trainer (training_settings) and the same rows in the same
    order, so the two can be compared step by step; only the dataset and its loss mask come from
    TRL. `style` picks the layout and the loss mask (STYLES). `model` is wrapped in place.
    """
    from trl import SFTConfig, SFTTrainer

    precision = precision or choose_precision()
    rows = chat_rows(config.task, "train", style).select(training_order(tokenizer, config))
    processing_class = tokenizer
    if style == "assistant-only":  # TRL refuses a template without generation markers
        processing_class = copy.deepcopy(tokenizer)
        processing_class.chat_template = training_chat_template(tokenizer)
    args = SFTConfig(
        **training_settings(config, precision, output_dir),
        max_length=None,  # no truncation: the tickets are 100 tokens or so
        assistant_only_loss=style == "assistant-only",
        completion_only_loss=style == "prompt-completion" or None,
        gradient_checkpointing=False,  # SFTConfig's default is True: slower, and not needed here
        dataset_num_proc=None,
    )
    torch.manual_seed(config.seed)  # the same A initialization as fine_tune_run
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        processing_class=processing_class,
        peft_config=config.lora_config(),
        callbacks=list(callbacks),
    )
    _bar_without_log_lines(trainer, progress)
    _train_with_training_attention(trainer, precision)
    return trainer
