"""Model cards: the bundled catalog's cards per provider, null prices that stay unpriced, config overrides."""

from __future__ import annotations

from relaygate.catalog.cards import Catalog
from relaygate.catalog.context import ContextWindows
from relaygate.catalog.prices import FREE, PriceBook, bundled_models
from relaygate.config import PriceConfig, parse_config

PROVIDERS = ("openai", "anthropic", "gemini", "bedrock", "cohere", "mistral", "groq", "xai")


def test_every_bundled_card_names_its_source_date_and_capabilities() -> None:
    entries = bundled_models()
    for name, e in entries.items():
        assert e.get("source") and e.get("as_of"), name
        for flag in ("supports_vision", "supports_tools", "supports_json_schema", "supports_reasoning",
                     "supports_audio_input", "supports_audio_output"):
            assert isinstance(e.get(flag), bool), (name, flag)
    assert {e["provider"] for e in entries.values()} >= set(PROVIDERS)


def test_cards_read_capabilities_and_prices_per_million_tokens() -> None:
    cat = Catalog()
    gpt = cat.lookup("gpt-4o-2024-08-06")
    assert gpt is not None and gpt.id == "gpt-4o" and gpt.provider == "openai"
    assert gpt.supports_vision and gpt.supports_tools and gpt.supports_chat and not gpt.supports_reasoning
    assert gpt.prices.input == 2.5 and gpt.prices.output == 10.0 and gpt.prices.cached_input == 1.25
    embed = cat.lookup("text-embedding-3-small")
    assert embed is not None and embed.supports_embeddings and not embed.supports_chat
    whisper = cat.lookup("whisper-1")
    assert whisper is not None and whisper.supports_audio and whisper.supports_audio_input
    bedrock_claude = cat.lookup("us.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert bedrock_claude is not None and bedrock_claude.id == "claude-sonnet-4-5"


def test_gemini_3_has_a_card_with_null_prices_and_stays_unpriced() -> None:
    card = Catalog().lookup("gemini-3-pro-preview")
    assert card is not None and card.context_window == 1_048_576 and card.max_output_tokens == 65_536
    assert card.supports_reasoning and card.supports_vision
    assert card.prices.input is None and card.prices.output is None
    assert PriceBook().lookup("gemini-3-pro-preview") is FREE  # unpriced, never priced at zero
    # a null-priced name stops the prefix match: the mini model does not take its big sibling's price
    assert PriceBook().lookup("gpt-5.4").input == 2.5e-6 and PriceBook().lookup("gpt-5.4-mini") is FREE


def test_a_prices_override_changes_the_card_and_the_price_alike() -> None:
    config = parse_config({"prices": {"gpt-4o": {"input_cost_per_token": 1e-6, "supports_vision": False,
                                                 "context_window": 64000}}}, {})
    card = Catalog(config.prices).lookup("gpt-4o-2024-08-06")
    assert card is not None and card.overridden
    assert card.prices.input == 1.0 and card.prices.output == 10.0  # only what the override sets
    assert not card.supports_vision and card.supports_tools and card.context_window == 64000
    assert PriceBook(config).lookup("gpt-4o").input == 1e-6
    assert ContextWindows(Catalog(config.prices).context_table()).lookup("gpt-4o-2024-08-06") == 64000


def test_an_override_of_an_unknown_model_is_a_card_of_its_own() -> None:
    cat = Catalog({"my-llama": PriceConfig(provider="ollama", context_window=8192, supports_tools=True,
                                           input_cost_per_token=0.0, source="our own server")})
    card = cat.lookup("my-llama")
    assert card is not None and card.provider == "ollama" and card.supports_tools and card.prices.input == 0.0
    assert card.source == "our own server" and card.mode == "chat"


def test_gpt5_keeps_its_smaller_input_window_unless_the_window_is_overridden() -> None:
    assert ContextWindows(Catalog().context_table()).lookup("gpt-5") == 272000
    priced = Catalog({"gpt-5": PriceConfig(input_cost_per_token=1e-6)})
    assert ContextWindows(priced.context_table()).lookup("gpt-5") == 272000
    widened = Catalog({"gpt-5": PriceConfig(context_window=300000)})
    assert ContextWindows(widened.context_table()).lookup("gpt-5") == 300000
