"""The ChatML template the tiny tokenizer ships with.

Like Qwen2.5's real template it has NO `{% generation %}` markers and adds a default system turn when the
dialogue has none, so rlmed's assistant-only loss is exercised exactly as it is on a real Qwen model.
"""

DEFAULT_SYSTEM = "你是一名专业、耐心的儿科医生助手。"

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN = "<|im_end|>"  # as in Qwen2.5-Instruct: generation stops at the end of the assistant turn
PAD_TOKEN = "<|endoftext|>"
