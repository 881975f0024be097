"""Token counts follow OpenAI's chat accounting and agree with LiteLLM on plain text."""

from __future__ import annotations

from typing import Any

import pytest

from llm_server.core.tokens import count_message_tokens, count_text_tokens

OPENAI_CHAT_MODELS = [
    "gpt-4o-mini",
    "openai/gpt-4o-mini",
    "gpt-4o",
    "gpt-4",
    "gpt-4-turbo",
    "gpt-3.5-turbo",
    "gpt-4.1-mini",
    "gpt-5-mini",
    "o3-mini",
]

PLAIN_CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy? Ünïcode, 数据, emoji 🙂."},
    ],
    [
        {"role": "system", "content": "Be brief.", "name": "policy"},
        {"role": "user", "content": "Special text <|endoftext|> stays text.", "name": "bob"},
    ],
    [{"role": "user", "content": "word " * 190}],  # just under LiteLLM's 1,024-char slices
]


@pytest.fixture(scope="module")
def litellm_token_counter() -> Any:
    import litellm

    return litellm.token_counter


@pytest.mark.parametrize("model", OPENAI_CHAT_MODELS)
@pytest.mark.parametrize("messages", PLAIN_CONVERSATIONS)
def test_message_count_matches_litellm_for_openai_chat_models(
    litellm_token_counter: Any, model: str, messages: list[dict[str, Any]]
) -> None:
    assert count_message_tokens(messages, model) == litellm_token_counter(
        model=model, messages=messages
    )


def test_message_count_matches_litellm_on_a_dspy_prompt(litellm_token_counter: Any) -> None:
    import dspy

    messages = dspy.ChatAdapter().format(
        dspy.Signature("question, context -> answer"),
        demos=[],
        inputs={"question": "What is 2 + 2?", "context": "Arithmetic. " * 20},
    )
    assert count_message_tokens(messages, "gpt-4o-mini") == litellm_token_counter(
        model="gpt-4o-mini", messages=messages
    )


def test_long_strings_are_encoded_whole_where_litellm_slices_them(
    litellm_token_counter: Any,
) -> None:
    # "ab" * n tokenizes differently when cut mid-run, so LiteLLM's 1,024-char slices over-count.
    messages = [{"role": "user", "content": "xq7" * 2000}]
    ours = count_message_tokens(messages, "gpt-4o")
    theirs = litellm_token_counter(model="gpt-4o", messages=messages)
    whole = 3 + count_text_tokens("user", "gpt-4o") + count_text_tokens("xq7" * 2000, "gpt-4o") + 3
    assert ours == whole
    assert ours <= theirs <= ours + 6000 // 1024 + 1


def test_follows_openai_cookbook_arithmetic() -> None:
    model = "gpt-4o-mini"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "bob"},
    ]
    text_tokens = sum(count_text_tokens(v, model) for m in messages for v in m.values())
    assert count_message_tokens(messages, model) == 3 * 2 + text_tokens + 1 + 3


def test_text_parts_are_counted_and_image_parts_are_not() -> None:
    model = "gpt-4o-mini"
    as_string = [{"role": "user", "content": "Describe this picture."}]
    as_parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this picture."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        }
    ]
    assert count_message_tokens(as_parts, model) == count_message_tokens(as_string, model)


def test_tool_call_arguments_are_counted() -> None:
    model = "gpt-4o-mini"
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 12}'}}
    with_call = [{"role": "assistant", "content": None, "tool_calls": [call]}]
    without = [{"role": "assistant", "content": None}]
    assert count_message_tokens(with_call, model) == count_message_tokens(
        without, model
    ) + count_text_tokens('{"x": 12}', model)


def test_empty_inputs() -> None:
    assert count_text_tokens("", "gpt-4o") == 0
    assert count_message_tokens([], "gpt-4o") == 3  # reply priming only, as LiteLLM counts


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("anthropic/claude-3-5-haiku", "cl100k_base"),
    ],
)
def test_encoding_follows_the_model(model: str, encoding: str) -> None:
    import tiktoken

    text = "Tokenizers differ: 数据 and emoji 🙂 and code {x: 1}."
    assert count_text_tokens(text, model) == len(tiktoken.get_encoding(encoding).encode(text))
