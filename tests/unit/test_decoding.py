"""The pruned greedy decoder gives `generate`'s greedy tokens, token for token, on a
Llama-shaped model built from a config: rows of different prompt lengths (left padding),
rows that end early on the end-of-sequence token, a stop check, and the oracle's logits
repetition penalty and no-repeat n-gram rule."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from reflection_assets.engines.models.decoding import greedy_decode  # noqa: E402

PAD = 0


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(3)
    return LlamaForCausalLM(config).eval()


def batch(lengths: list[int], seed: int = 0):
    """Left-padded prompts of these lengths, as a tokenizer pads them for generation."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(3, 61, (n,), generator=generator)
        mask[row, width - n :] = 1
    return ids, mask


def reference(model, ids, mask, max_new: int, eos: int, **options) -> list[tuple[list[int], bool]]:
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False, pad_token_id=PAD,
            eos_token_id=eos, **options,
        )
    rows = []
    for row in out[:, ids.shape[1] :].tolist():
        ended = eos in row
        rows.append((row[: row.index(eos)] if ended else row, ended))
    return rows


def a_token_rows_end_on(model, ids, mask) -> int:
    """A token that some rows write early, so that rows leave the batch at different steps."""
    free = reference(model, ids, mask, 12, eos=60)
    counts: dict[int, int] = {}
    for tokens, _ in free:
        for token in set(tokens[2:8]):
            counts[token] = counts.get(token, 0) + 1
    return max(counts, key=lambda t: (0 < counts[t] < len(free), counts[t]))


def test_same_tokens_as_generate_with_rows_ending_at_different_steps(model):
    ids, mask = batch([5, 17, 9, 30, 1, 12, 23, 8])
    eos = a_token_rows_end_on(model, ids, mask)
    expected = reference(model, ids, mask, 24, eos)
    got = greedy_decode(model, ids, mask, 24, eos)
    assert [(d.tokens, d.ended) for d in got] == expected
    # The case the decoder is for: some rows end early, others run to the limit.
    assert any(ended for _, ended in expected) and not all(ended for _, ended in expected)
    assert len({len(tokens) for tokens, _ in expected}) > 1


def test_same_tokens_with_the_oracles_repetition_rules(model):
    ids, mask = batch([11, 4, 19, 7, 26], seed=1)
    eos = a_token_rows_end_on(model, ids, mask)
    expected = reference(model, ids, mask, 30, eos, repetition_penalty=1.3, no_repeat_ngram_size=3)
    plain = reference(model, ids, mask, 30, eos)
    assert expected != plain  # the rules change what is written here
    got = greedy_decode(model, ids, mask, 30, eos, repetition_penalty=1.3, no_repeat_ngram=3)
    assert [(d.tokens, d.ended) for d in got] == expected


def test_a_stop_check_ends_a_row_and_keeps_the_token_that_stopped_it(model):
    ids, mask = batch([6, 14, 3], seed=2)
    plain = reference(model, ids, mask, 16, eos=60)
    stop_token = plain[1][0][4]  # row 1's fifth token
    got = greedy_decode(model, ids, mask, 16, eos_token_id=60, stopped=lambda tokens: tokens[-1] == stop_token)
    for (tokens, ended), decoded in zip(plain, got, strict=True):
        if stop_token in tokens:
            cut = tokens.index(stop_token) + 1
            assert decoded.tokens == tokens[:cut] and decoded.ended
        else:
            assert (decoded.tokens, decoded.ended) == (tokens, ended)
    assert got[1].tokens == plain[1][0][: plain[1][0].index(stop_token) + 1]


def test_every_row_ending_at_once_and_a_limit_of_one(model):
    ids, mask = batch([4, 9], seed=4)
    first = reference(model, ids, mask, 1, eos=60)
    assert [(d.tokens, d.ended) for d in greedy_decode(model, ids, mask, 1, 60)] == first
    both = greedy_decode(model, ids, mask, 10, eos_token_id=60, stopped=lambda tokens: True)
    assert [d.tokens for d in both] == [tokens for tokens, _ in first] and all(d.ended for d in both)


def test_a_shared_beginning_computed_once_gives_the_same_tokens(model):
    """Prompts that begin alike (a system prompt, then each record) share one computation of
    that beginning; the rows then see what they would alone."""
    from reflection_assets.engines.models.decoding import _prefill, _shared_length

    lengths = [9, 3, 15, 1, 6]
    ids, mask = batch(lengths, seed=5)
    beginning = torch.randint(3, 61, (20,), generator=torch.Generator().manual_seed(6))
    width = ids.shape[1] + 20
    joined = torch.full((len(lengths), width), PAD)
    joined_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, n in enumerate(lengths):
        joined[row, width - n - 20 :] = torch.cat([beginning, ids[row, ids.shape[1] - n :]])
        joined_mask[row, width - n - 20 :] = 1
    assert _shared_length(joined.tolist(), [width - n - 20 for n in lengths]) == 20  # the 1-token row keeps its own
    from transformers import DynamicCache

    _, cache_mask = _prefill(model, joined, joined_mask, DynamicCache(config=model.config))
    assert cache_mask.shape[1] == 20 + max(lengths)  # computed once: shared, then each row's own

    eos = a_token_rows_end_on(model, joined, joined_mask)
    expected = reference(model, joined, joined_mask, 20, eos, repetition_penalty=1.2, no_repeat_ngram_size=4)
    got = greedy_decode(model, joined, joined_mask, 20, eos, repetition_penalty=1.2, no_repeat_ngram=4)
    assert [(d.tokens, d.ended) for d in got] == expected


def test_right_padded_prompts_are_refused(model):
    ids, mask = batch([3, 7])
    with pytest.raises(ValueError, match="left-padded"):
        greedy_decode(model, ids.flip(1), mask.flip(1), 4, 60)
