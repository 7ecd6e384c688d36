"""Greedy decoding that drops each sequence from the batch as soon as it has ended, and
computes the beginning every prompt of the batch shares once.

`model.generate` keeps every row of a batch in every forward pass until the last row ends:
a batch of 32 reflection replies whose lengths average about 50 tokens runs as long as its
longest (the compact profile's 96 or 128-token limit, which about one reply in ten
reaches), computing the finished rows' padding all the way. On 2 CPU cores a step of the
embedded model costs about 60 ms plus 5 ms a row, so that padding is a large part of the
work. Here a row that has ended (its end-of-sequence token, a stop string, or its limit)
leaves the batch and the KV cache at once. And the prompts of a batch of reflection
requests begin with the same system prompt and instructions (54 of phase 1's 149 tokens,
119 of phase 2's 201): that beginning is computed once (`_prefill`).

The tokens are the same as `generate`'s greedy ones with the same settings: the same
position ids (counted from the attention mask, so padding does not shift them), the same
repetition penalty (over each row's tokens after its left padding, as `generate` applies
it) and no-repeat n-gram rule on float32 logits, then argmax. Up to rounding: the rows are
computed in other batch shapes than `generate`'s (a shared beginning in a batch of one), so a
near-tie between two tokens can fall the other way, more likely in bfloat16 than in float32.
`benchmarks/local_batch.py` measures both side by side on the embedded model (float32: 1.77x
the tokens/s at batch 32, the same 127 replies of 127); `tests/unit/test_decoding.py`
compares them token for token on a model built from a config.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Decoded:
    tokens: list[int]  # the new tokens, without the end-of-sequence token
    ended: bool  # the end-of-sequence token or a stop string ended it (not the limit)


def greedy_decode(
    model,
    input_ids,
    attention_mask,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    repetition_penalty: float = 1.0,
    no_repeat_ngram: int = 0,
    stopped: Callable[[list[int]], bool] | None = None,
) -> list[Decoded]:
    """One `Decoded` per row of `input_ids` (left-padded, on the model's device), with
    `generate`'s `repetition_penalty` and `no_repeat_ngram_size` (1.0 and 0: off).
    `stopped(tokens)`: whether a row's new tokens so far end it (a stop string)."""
    import torch
    from transformers import DynamicCache, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    if not bool(attention_mask[:, -1].all()):
        raise ValueError("greedy_decode needs left-padded prompts (the tokenizer's padding_side 'left')")
    ends = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    rows = list(range(input_ids.shape[0]))  # the original row of each row still in the batch
    tokens: list[list[int]] = [[] for _ in rows]
    ended = [False for _ in rows]
    cache = DynamicCache(config=model.config)
    sequences = input_ids  # as generate's processors see them: left-padded prompt, then the new tokens
    padding = (attention_mask != 0).int().argmax(dim=1)  # each row's left padding, which the penalty skips
    ngrams = NoRepeatNGramLogitsProcessor(no_repeat_ngram) if no_repeat_ngram else None
    with torch.inference_mode():
        logits, mask = _prefill(model, input_ids, attention_mask, cache)
        for step in range(max_new_tokens):
            if step:
                logits = _forward(model, chosen[:, None], mask, mask.sum(-1, keepdim=True) - 1, cache)
            if repetition_penalty != 1.0:  # made again as rows leave: it holds a length per row
                logits = RepetitionPenaltyLogitsProcessor(repetition_penalty, prompt_ignore_length=padding)(sequences, logits)
            if ngrams is not None:
                logits = ngrams(sequences, logits)
            chosen = logits.argmax(dim=-1)
            sequences = torch.cat([sequences, chosen[:, None]], dim=-1)
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            keep = []
            for index, token in enumerate(chosen.tolist()):
                row = rows[index]
                if token in ends:
                    ended[row] = True
                    continue
                tokens[row].append(token)
                if stopped is not None and stopped(tokens[row]):
                    ended[row] = True
                    continue
                keep.append(index)
            if not keep:
                break
            if len(keep) < len(rows):
                selected = torch.tensor(keep, device=sequences.device)
                cache.batch_select_indices(selected)
                sequences, mask, chosen, padding = sequences[selected], mask[selected], chosen[selected], padding[selected]
                rows = [rows[i] for i in keep]
    return [Decoded(t, e) for t, e in zip(tokens, ended, strict=True)]


def _forward(model, ids, mask, positions, cache):
    """The float32 logits of each row's last position; the cache grows by `ids`' width."""
    options = {}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        options["logits_to_keep"] = 1  # the prompt's other positions are never read
    output = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True, **options)
    return output.logits[:, -1, :].float()


def _prefill(model, input_ids, attention_mask, cache, min_shared: int = 16):
    """(the logits after each prompt, the attention mask the cache now has).

    The prompts of a batch often begin alike (the same system prompt and instructions, then
    each record): a beginning shared by every row, of `min_shared` tokens or more, is
    computed once and its cache copied to every row, then each row's rest follows it. The
    cache's layout is then [shared][padding][rest] rather than [padding][shared][rest]; the
    mask hides the padding and the position ids count only real tokens, so each row sees
    what it would alone."""
    import torch

    lengths = attention_mask.sum(-1)
    width = input_ids.shape[1]
    shared = _shared_length(input_ids.tolist(), [width - int(n) for n in lengths])
    if input_ids.shape[0] < 2 or shared < min_shared:
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return _forward(model, input_ids, attention_mask, positions, cache), attention_mask
    start = width - int(lengths[0])
    prefix = input_ids[:1, start : start + shared]
    ones = attention_mask.new_ones((1, shared))
    _forward(model, prefix, ones, torch.arange(shared, device=input_ids.device)[None, :], cache)
    cache.batch_repeat_interleave(input_ids.shape[0])
    rest = lengths - shared  # every row keeps at least one token of its own
    rest_width = int(rest.max())
    columns = torch.arange(rest_width, device=input_ids.device)[None, :]
    rest_mask = (columns >= rest_width - rest[:, None]).to(attention_mask.dtype)
    mask = torch.cat([attention_mask.new_ones((input_ids.shape[0], shared)), rest_mask], dim=-1)
    positions = shared + (rest_mask.long().cumsum(-1) - 1).clamp(min=0)
    return _forward(model, input_ids[:, width - rest_width :], mask, positions, cache), mask


def _shared_length(rows: list[list[int]], pads: list[int]) -> int:
    """How many tokens every row's prompt begins with, leaving each at least one of its own."""
    first = rows[0][pads[0] :]
    limit = min(len(row) - pad for row, pad in zip(rows, pads, strict=True)) - 1
    shared = 0
    while shared < limit and all(row[pad + shared] == first[shared] for row, pad in zip(rows, pads, strict=True)):
        shared += 1
    return shared
