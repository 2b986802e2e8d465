"""Prefix-shared packing: the SFT rows of one case trained together, their common system turn computed once.

Every row of a case starts with the same system turn (the case and its tool list, ~300 tokens), while what differs
(the request, earlier turns, the reply to learn) is often under 50 tokens. Trained one row per sequence, about nine
tenths of the compute goes to that repeated prefix. Here one sequence holds the prefix once followed by many rows'
own tokens ("branches"); an attention mask lets each branch see the prefix and itself only, and position ids
continue from the prefix in every branch, so each branch's logits equal those of its row trained alone (checked
in the tests to float rounding). Only the reply tokens carry labels, up to and including the end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

IGNORE = -100


@dataclass
class Branch:
    tokens: list[int]
    labels: list[int]


def split_row(tokenizer: Any, row: dict) -> tuple[tuple[int, ...], Branch]:
    """A TRL prompt-completion row → (the tokens of its system turn, its branch with labels on the completion)."""
    prompt, completion = row["prompt"], row["completion"]
    prefix = _ids(tokenizer, prompt[:1])
    asked = _ids(tokenizer, prompt, add_generation_prompt=True)
    full = _ids(tokenizer, [*prompt, *completion])
    if full[: len(prefix)] != prefix or full[: len(asked)] != asked:
        raise ValueError("the chat template does not render a row as its system turn followed by the rest")
    reply = full[len(asked) :]
    eos = tokenizer.eos_token_id
    end = len(reply) - reply[::-1].index(eos) if eos in reply else len(reply)
    labels = [IGNORE] * (len(asked) - len(prefix)) + reply[:end] + [IGNORE] * (len(reply) - end)
    return tuple(prefix), Branch(full[len(prefix) :], labels)


def pack(tokenizer: Any, rows: Sequence[dict], max_tokens: int) -> tuple[list[dict], int]:
    """Rows → packed sequences of at most ``max_tokens`` tokens (rows that share a system turn, first-fit in the
    given order), each ``{"input_ids", "labels", "position_ids", "segments"}`` with segment 0 for the prefix and
    k for the k-th branch. Returns the packs and how many rows were too long to fit even alone (skipped)."""
    groups: dict[tuple[int, ...], list[list[Branch]]] = {}
    skipped = 0
    for row in rows:
        prefix, branch = split_row(tokenizer, row)
        if len(prefix) + len(branch.tokens) > max_tokens:
            skipped += 1
            continue
        bins = groups.setdefault(prefix, [])
        room = max_tokens - len(prefix)
        target = next((b for b in bins if sum(len(x.tokens) for x in b) + len(branch.tokens) <= room), None)
        if target is None:
            bins.append(target := [])
        target.append(branch)
    packs = [_sequence(prefix, branches) for prefix, bins in groups.items() for branches in bins]
    return packs, skipped


def _sequence(prefix: tuple[int, ...], branches: list[Branch]) -> dict:
    ids, labels = list(prefix), [IGNORE] * len(prefix)
    positions, segments = list(range(len(prefix))), [0] * len(prefix)
    for k, branch in enumerate(branches, 1):
        ids += branch.tokens
        labels += branch.labels
        positions += range(len(prefix), len(prefix) + len(branch.tokens))
        segments += [k] * len(branch.tokens)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "segments": segments}


def collate(features: Sequence[dict], pad_id: int) -> dict:
    """A batch of packs, right-padded, with the additive 4D attention mask that keeps branches apart (a padding
    token attends to itself only, so no softmax row is empty)."""
    import torch

    length = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": [], "labels": [], "position_ids": [], "attention_mask": []}
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for f in features:
        pad = length - len(f["input_ids"])
        segments = torch.tensor(list(f["segments"]) + [-1] * pad)
        visible = causal & ((segments[None, :] == 0) | (segments[:, None] == segments[None, :]))
        visible &= (segments[:, None] != -1) | torch.eye(length, dtype=torch.bool)
        batch["input_ids"].append(list(f["input_ids"]) + [pad_id] * pad)
        batch["labels"].append(list(f["labels"]) + [IGNORE] * pad)
        batch["position_ids"].append(list(f["position_ids"]) + [0] * pad)
        batch["attention_mask"].append(torch.zeros(length, length).masked_fill(~visible, float("-inf"))[None])
    return {
        "input_ids": torch.tensor(batch["input_ids"]),
        "labels": torch.tensor(batch["labels"]),
        "position_ids": torch.tensor(batch["position_ids"]),
        "attention_mask": torch.stack(batch["attention_mask"]),
    }


def loss(model, batch: dict):
    """Summed cross-entropy of the labelled tokens of a collated batch of one pack. Only the
    positions that predict a label go through the LM head (``logits_to_keep``)."""
    import torch.nn.functional as F

    targets = batch["labels"][0, 1:]
    positions = (targets != IGNORE).nonzero().squeeze(1)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=positions,
    ).logits[0]
    return F.cross_entropy(logits.float(), targets[positions], reduction="sum")


def _ids(tokenizer: Any, messages: Sequence[dict], add_generation_prompt: bool = False) -> list[int]:
    return list(
        tokenizer.apply_chat_template(list(messages), add_generation_prompt=add_generation_prompt, return_dict=False)
    )
