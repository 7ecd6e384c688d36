"""What a reply cost: a price table per model in dollars per million tokens."""

from __future__ import annotations

from reflection_assets.engines.oracle.kinds import kind_of

# (input, output) $ per 1M tokens, list prices when this table was written. Override with
# REFLECTION_ORACLE_PRICE_INPUT / _PRICE_OUTPUT for any model, including self-hosted ones.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
}


def price_for(
    backend: str, model: str, input_override: float | None, output_override: float | None
) -> tuple[float, float] | None:
    """(input, output) $ per 1M tokens, or None when the price is unknown."""
    if input_override is not None or output_override is not None:
        return (input_override or 0.0, output_override or 0.0)
    if kind_of(backend).in_process:
        return (0.0, 0.0)
    if model in PRICES_PER_MTOK:
        return PRICES_PER_MTOK[model]
    # Dated snapshots ("gpt-4o-mini-2024-07-18") cost what their family costs.
    family = max((name for name in PRICES_PER_MTOK if model.startswith(name + "-")), key=len, default=None)
    return PRICES_PER_MTOK[family] if family else None


def cost_usd(price: tuple[float, float] | None, prompt_tokens: int, completion_tokens: int) -> float:
    if price is None:
        return 0.0
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000
