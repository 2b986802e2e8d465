"""Prefix-shared packing: rows of one case trained in one sequence give the same loss as each row alone."""

from __future__ import annotations

import pytest

from macro.training import packing

SYSTEM = {"role": "system", "content": "You are MACRO.\nTools:\n- describe_scan(): Modality and size of the scan."}
OTHER = {"role": "system", "content": "You are MACRO.\nTools:\n- render_slice(): Render a slice to PNG."}
CALL = '<tool_call>{"name": "describe_scan", "arguments": {}}</tool_call>'


def row(system: dict, request: str, reply: str, before: tuple = ()) -> dict:
    return {
        "prompt": [system, *before, {"role": "user", "content": request}],
        "completion": [{"role": "assistant", "content": reply}],
    }


ROWS = [
    row(SYSTEM, "What is this scan?", CALL),
    row(SYSTEM, "Describe it, please.", CALL),
    row(
        SYSTEM,
        "And its size?",
        "It is 128x128.",
        ({"role": "user", "content": "Describe it"}, {"role": "assistant", "content": CALL}),
    ),
    row(OTHER, "Show me a slice.", '<tool_call>{"name": "render_slice", "arguments": {}}</tool_call>'),
]


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from macro.agent.local_llm import load_model

    return load_model(tiny_model)


def test_labels_are_the_reply_up_to_the_end_of_turn(tiny):
    _, tokenizer = tiny
    prefix, branch = packing.split_row(tokenizer, ROWS[0])
    labelled = [t for t, label in zip(branch.tokens, branch.labels) if label != packing.IGNORE]
    assert tokenizer.decode(labelled) == CALL + tokenizer.eos_token
    assert len(branch.tokens) == len(branch.labels)
    assert tokenizer.decode(list(prefix)).count("system") == 1 and "What is this scan" not in tokenizer.decode(prefix)


def test_rows_sharing_a_system_turn_share_a_pack_and_long_rows_are_skipped(tiny):
    _, tokenizer = tiny
    packs, skipped = packing.pack(tokenizer, ROWS, max_tokens=400)
    assert skipped == 0 and len(packs) == 2
    assert sorted(max(p["segments"]) for p in packs) == [1, 3]
    _, skipped = packing.pack(tokenizer, ROWS, max_tokens=30)
    assert skipped == len(ROWS)


def test_a_packed_sequence_gives_each_row_its_own_loss(tiny):
    import torch

    model, tokenizer = tiny
    packs, _ = packing.pack(tokenizer, ROWS[:3], max_tokens=400)
    with torch.no_grad():
        packed = float(packing.loss(model, packing.collate(packs, tokenizer.pad_token_id)))
        alone = 0.0
        for r in ROWS[:3]:
            (single,), _ = packing.pack(tokenizer, [r], max_tokens=400)
            alone += float(packing.loss(model, packing.collate([single], tokenizer.pad_token_id)))
    assert packed == pytest.approx(alone, rel=1e-4)


def test_padding_in_a_batch_changes_nothing(tiny):
    import torch

    model, tokenizer = tiny
    packs, _ = packing.pack(tokenizer, ROWS, max_tokens=400)
    short = min(packs, key=lambda p: len(p["input_ids"]))
    with torch.no_grad():
        alone = model(**{k: v for k, v in packing.collate([short], 0).items() if k != "labels"}).logits[0]
        padded = packing.collate(packs if packs[0] is short else packs[::-1], tokenizer.pad_token_id)
        both = model(**{k: v for k, v in padded.items() if k != "labels"}).logits[0, : len(short["input_ids"])]
    assert not torch.isnan(both).any()
    assert torch.allclose(alone, both, atol=1e-4)
