"""Constrained decisions for local models: each reply is either one valid call of an offered tool or a plain answer.

A decision is decoded under a Lark grammar compiled by llguidance: ``<tool_call>`` + a JSON object whose ``name``
is one of the tools offered for this case and whose ``arguments`` follow that tool's own JSON schema (enums,
types, no unknown keys) + ``</tool_call>``, or a final answer in prose. So the embedded policy cannot write an
unparseable call, a tool the case does not offer, ``True`` for ``true`` or an argument the tool lacks; the only
thing left to learn is which call or answer is right.

Why llguidance: it is one wheel with no dependencies, its Lark front end embeds JSON schemas (``%json``) so the
whole decision is one grammar, and it is fast here: measured on this project's 2-core machine, the token table
takes 0.7 s once per tokenizer, the grammar over all nine tools compiles in 4 ms, and a mask over SmolLM2's 49k
tokens takes 0.03 ms median (``macro eval overhead`` reports the cost per generated token, unpacking included).
xgrammar's CPU install pulls triton and a TVM runtime; outlines and lm-format-enforcer were not tried. The mask is
applied here with plain tensor ops because the library's torch helper compiles a kernel with ``torch.compile``,
which needs a C toolchain at run time. The tokens the grammar forces are fed to the model in one pass
(:class:`Guide`), so a constrained call costs fewer forward passes than an unconstrained one.

An answer is prose that starts with neither ``<`` nor ``{`` and contains no ``<`` (so it cannot open a
half-written call); JSON keys and separators are fixed to the ones :func:`~macro.agent.toolcall.format_call`
writes, which is the format the adapter was trained on.
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from macro.agent.toolcall import CLOSE, OPEN

ANSWER = r"/[^<{\s][^<]*/"
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


MAX_STRING = 64  # characters of a free-text argument
MAX_ITEMS = 16
MAX_MAGNITUDE = 10**6  # of a number the schema leaves unbounded
DECIMALS = 1e-4  # the finest step of a number the schema gives none


def bounded(schema: dict) -> dict:
    """``schema`` with every free value given a finite size, so a call always ends within the decoder's token budget:
    a random or confused model could otherwise write an integer or a string forever and never close the call. Only
    limits a schema leaves open are added; what it states is kept. An object admits only its named properties; a
    free-form object (no ``properties``) is left as it is."""
    schema = dict(schema)
    kind = schema.get("type")
    if "anyOf" in schema:
        schema["anyOf"] = [bounded(branch) for branch in schema["anyOf"]]
    if kind == "string" and "enum" not in schema and "const" not in schema:
        schema["maxLength"] = min(schema.get("maxLength", MAX_STRING), MAX_STRING)
    if kind in ("integer", "number"):
        if "minimum" not in schema and "exclusiveMinimum" not in schema:
            schema["minimum"] = -MAX_MAGNITUDE
        if "maximum" not in schema and "exclusiveMaximum" not in schema:
            schema["maximum"] = MAX_MAGNITUDE
    if kind == "number":
        schema.setdefault("multipleOf", DECIMALS)
    if kind == "array":
        schema["maxItems"] = min(schema.get("maxItems", MAX_ITEMS), MAX_ITEMS)
        if isinstance(schema.get("items"), dict):
            schema["items"] = bounded(schema["items"])
    if "properties" in schema:
        schema["properties"] = {k: bounded(v) for k, v in schema["properties"].items()}
        schema["additionalProperties"] = False
    return schema


def call_schema(tool: dict) -> dict:
    """The JSON schema of one call ``{"name": <this tool>, "arguments": <its parameters>}``, its free values
    :func:`bounded`."""
    fn = tool.get("function", tool)
    params = bounded({"type": "object", "properties": {}, **(fn.get("parameters") or {})})
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
        "x-guidance": JSON_STYLE,
    }


def decision_grammar(tools: Sequence[dict]) -> str:
    """Lark grammar of one decision given the offered tools (OpenAI-style function schemas)."""
    lines = ["start: call | answer" if tools else "start: answer", f"answer: {ANSWER}"]
    if tools:
        names = [f"c{i}" for i in range(len(tools))]
        lines.append(f"call: {json.dumps(OPEN)} ({' | '.join(names)}) {json.dumps(CLOSE)}")
        lines += [f"{n}: %json {json.dumps(call_schema(t))}" for n, t in zip(names, tools)]
    return "\n".join(lines) + "\n"


class Constraint:
    """llguidance state for one tokenizer: the token table (built once, ~1 s) and compiled grammars by tool set."""

    def __init__(self, hf_tokenizer: Any):
        import llguidance.hf

        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer)
        self._grammars: dict[str, str] = {}

    def grammar(self, tools: Sequence[dict]) -> str:
        from llguidance import LLMatcher

        lark = decision_grammar(tools)
        if lark not in self._grammars:
            grammar = LLMatcher.grammar_from_lark(lark)
            failed, messages = LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
            if failed:
                raise ValueError(f"tool schemas do not compile to a decoding grammar: {'; '.join(messages)}")
            if len(self._grammars) >= 16:
                self._grammars.pop(next(iter(self._grammars)))
            self._grammars[lark] = grammar
        return self._grammars[lark]

    def guide(self, tools: Sequence[dict]) -> "Guide":
        from llguidance import LLMatcher

        return Guide(LLMatcher(self.tokenizer, self.grammar(tools), log_level=0), self.tokenizer.vocab_size)


class Guide:
    """The grammar state of one decision: which tokens may come next, and which the grammar then forces.

    Forced tokens (``{"name": "``, the rest of a tool name once its first token is chosen, ``", "arguments": ``,
    ``</tool_call>``) need no choice, so the decoder feeds them to the model in one forward pass instead of one
    pass each: about two thirds of a call's tokens, measured on the shipped adapter's calls. llguidance returns
    them already tokenized the way the tokenizer splits the whole text, so the model sees the token sequence it
    was trained on. ``seconds`` is the time spent in the grammar.
    """

    def __init__(self, matcher: Any, vocab_size: int):
        import numpy as np

        self.matcher = matcher
        self.bitmask = np.full((1, (vocab_size + 31) // 32), -1, dtype=np.int32)
        self.seconds = 0.0

    def allowed(self, n: int):
        """Boolean tensor over ``n`` logits: True where the grammar admits the token next."""
        import numpy as np
        import torch
        from llguidance.numpy import fill_next_token_bitmask

        start = time.perf_counter()
        fill_next_token_bitmask(self.matcher, self.bitmask)
        bits = np.unpackbits(self.bitmask.view(np.uint8), bitorder="little")[:n]
        allowed = torch.from_numpy(bits.astype(bool))
        if n > allowed.shape[0]:
            allowed = torch.cat([allowed, torch.zeros(n - allowed.shape[0], dtype=torch.bool)])
        self.seconds += time.perf_counter() - start
        return allowed

    def advance(self, token: int) -> list[int]:
        """Consume the chosen token; return (and consume) the tokens the grammar forces after it."""
        start = time.perf_counter()
        self.matcher.consume_token(token)
        forced = [] if self.matcher.is_stopped() else list(self.matcher.compute_ff_tokens())
        if forced:
            self.matcher.consume_tokens(forced)
        if self.matcher.is_error():
            raise RuntimeError(f"constrained decoding left its grammar: {self.matcher.get_error()}")
        self.seconds += time.perf_counter() - start
        return forced

    @property
    def done(self) -> bool:
        """The decision is complete: nothing but the end of the turn may follow."""
        return self.matcher.is_stopped()
