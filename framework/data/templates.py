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
