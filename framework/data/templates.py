"""Built-in chat templates and the choice between them and a tokenizer's own.

Every built-in renders each message at its own position and tool schemas once at the top,
so a conversation's prefix renders as a prefix of its text: render.py relies on that.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

_BOS = "{% if bos_token %}{{ bos_token }}{% endif %}"

CHAT_TEMPLATES = {
    "chatml": (
        "{% if tools %}<|im_start|>system\n# Tools\n{{ tools | tojson }}<|im_end|>\n{% endif %}"
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama3": (
        _BOS + "{% if tools %}<|start_header_id|>system<|end_header_id|>\n\n"
        "{{ tools | tojson }}<|eot_id|>{% endif %}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
        "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "mistral": (
        _BOS + "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + '[/INST]' }}"
        "{% elif message['role'] == 'tool' %}"
        "{{ '[TOOL_RESULTS]' + message['content'] + '[/TOOL_RESULTS]' }}"
        "{% else %}{{ message['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    ),
}


def apply_template_choice(tokenizer: PreTrainedTokenizerBase, choice: str | None) -> None:
    """Set the tokenizer's chat template: `choice` (a built-in name or a Jinja string)
    when given, else keep its own, else ChatML."""
    if choice is not None:
        tokenizer.chat_template = CHAT_TEMPLATES.get(choice, choice)
    elif tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATES["chatml"]


# End-of-turn markers of common chat templates: a reply ends at its template's marker even
# where the tokenizer's eos is another token (a base model given a chat template).
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>")


def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, previous: int | list[int] | None
) -> list[int]:
    """Ids that end a reply: the tokenizer's eos, the end-of-turn marker its chat template
    writes, and `previous` (those the model already stopped at)."""
    template = str(tokenizer.chat_template or "")
    markers = tokenizer.convert_tokens_to_ids([m for m in END_OF_TURN_MARKERS if m in template])
    previous = previous if isinstance(previous, list) else [previous]
    ids = [tokenizer.eos_token_id, *markers, *previous]
    return list(dict.fromkeys(i for i in ids if i is not None and i != tokenizer.unk_token_id))
