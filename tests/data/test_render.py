import pytest

from framework.data.formats import Conversation, RecordError
from framework.data.render import render
from framework.data.templates import CHAT_TEMPLATES, apply_template_choice

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Reverse the word apple."},
    {"role": "assistant", "content": "elppa"},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
]
TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": '{"name": "weather", "arguments": {"city": "Paris"}}'},
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 degrees."},
]
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "<|im_end|>"}


@pytest.fixture
def with_template(tokenizer):
    original = tokenizer.chat_template

    def use(name):
        apply_template_choice(tokenizer, name)
        return tokenizer

    yield use
    tokenizer.chat_template = original


def trained_runs(tokenizer, example) -> list[tuple[str, float]]:
    """Decoded runs of consecutive trained tokens with their weight."""
    runs, current, weight = [], [], 0.0
    for token, w in [*zip(example.input_ids, example.weights, strict=True), (None, 0.0)]:
        if w != weight and current:
            runs.append((tokenizer.decode(current), weight))
            current = []
        if w > 0:
            current.append(token)
        weight = w
    return runs


@pytest.mark.parametrize("template", sorted(CHAT_TEMPLATES))
def test_each_reply_and_its_end_of_turn_are_trained_nothing_else(with_template, template):
    tokenizer = with_template(template)
    example = render(tokenizer, Conversation(CHAT), "assistant", "t")
    eot = END_OF_TURN[template]
    assert trained_runs(tokenizer, example) == [(f"elppa{eot}", 1.0), (f"5{eot}", 1.0)]
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(
        CHAT, tokenize=False
    )


@pytest.mark.parametrize("template", sorted(CHAT_TEMPLATES))
def test_tool_calls_are_trained_and_tool_results_are_not(with_template, template):
    tokenizer = with_template(template)
    example = render(tokenizer, Conversation(TOOL_CHAT, tools=TOOLS), "assistant", "t")
    eot = END_OF_TURN[template]
    assert [text for text, _ in trained_runs(tokenizer, example)] == [
        TOOL_CHAT[1]["content"] + eot,
        TOOL_CHAT[3]["content"] + eot,
    ]
    assert '"function"' in tokenizer.decode(example.input_ids[:60])  # tool schemas rendered


def test_last_turn_mode_trains_only_the_final_reply(tokenizer):
    example = render(tokenizer, Conversation(CHAT), "last_turn", "t")
    assert trained_runs(tokenizer, example) == [("5<|im_end|>", 1.0)]


def test_all_mode_trains_every_token(tokenizer):
    example = render(tokenizer, Conversation(CHAT), "all", "t")
    assert all(w == 1.0 for w in example.weights)


def test_message_weights_are_carried_per_token(tokenizer):
    chat = [dict(m) for m in CHAT]
    chat[2]["weight"], chat[4]["weight"] = 0.0, 2.5
    example = render(tokenizer, Conversation(chat), "assistant", "t")
    assert trained_runs(tokenizer, example) == [("5<|im_end|>", 2.5)]


def test_plain_text_trains_every_token_and_ends_with_eos(tokenizer):
    example = render(tokenizer, Conversation([], text="just some text"), "assistant", "t")
    assert example.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example.input_ids[:-1]) == "just some text"
    assert all(w == 1.0 for w in example.weights)


def test_no_bos_is_added_twice(with_template):
    tokenizer = with_template("llama3")
    tokenizer.bos_token = "<|endoftext|>"
    try:
        example = render(tokenizer, Conversation(CHAT[:3]), "assistant", "t")
        assert example.input_ids[:2] == [tokenizer.bos_token_id, example.input_ids[1]]
        assert example.input_ids[1] != tokenizer.bos_token_id
    finally:
        tokenizer.bos_token = None


GENERATION_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}"
    # transformers renders with trim_blocks, which would eat a literal newline here.
    "<|im_start|>assistant\n{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.parametrize("chat", [CHAT, TOOL_CHAT], ids=["chat", "tools"])
def test_mask_agrees_with_transformers_generation_markers(with_template, chat):
    tokenizer = with_template(GENERATION_TEMPLATE)
    example = render(tokenizer, Conversation(chat), "assistant", "t")
    reference = tokenizer.apply_chat_template(
        chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert example.input_ids == reference["input_ids"]
    assert [int(w > 0) for w in example.weights] == reference["assistant_masks"]
    assert tokenizer.decode(example.input_ids) == with_template("chatml").apply_chat_template(
        chat, tokenize=False
    )  # the marked template is ChatML itself


def test_non_prefix_template_is_refused(with_template):
    # A template that prints the number of messages first renders no prefix as a prefix.
    tokenizer = with_template(
        "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(RecordError, match=r"f\.jsonl:3: the chat template does not render") as err:
        render(tokenizer, Conversation(CHAT), "assistant", "f.jsonl:3")
    assert err.value.reason == "template_mismatch"


def test_reply_empty_after_templating_is_refused(with_template):
    tokenizer = with_template("llama3")  # trims message content
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " \n "}]
    with pytest.raises(RecordError, match="empty after templating") as err:
        render(tokenizer, Conversation(chat), "assistant", "x")
    assert err.value.reason == "empty_reply"


@pytest.mark.slow
def test_the_real_models_template_and_its_default_system_prompt_are_never_trained(
    real_tokenizer,
):
    """SmolLM2's own template inserts "You are a helpful AI assistant named SmolLM..." when
    a chat has no system turn: it is rendered, and only the replies are trained."""
    chat = CHAT[1:]  # no system turn: the template adds its own
    example = render(real_tokenizer, Conversation(chat), "assistant", "t")
    assert trained_runs(real_tokenizer, example) == [("elppa<|im_end|>", 1.0), ("5<|im_end|>", 1.0)]
    text = real_tokenizer.decode(example.input_ids)
    assert text == real_tokenizer.apply_chat_template(chat, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    own = render(real_tokenizer, Conversation(CHAT), "assistant", "t")  # with "Be brief."
    assert "SmolLM" not in real_tokenizer.decode(own.input_ids)
    assert trained_runs(real_tokenizer, own) == trained_runs(real_tokenizer, example)
