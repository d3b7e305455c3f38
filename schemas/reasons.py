"""Why a record was not written. Every code has one sentence that tells the user what to fix.

Rejected = the input is bad or cannot be made into a verified example. Dropped = the input is fine but a
policy the user chose (length, masking) left nothing to train on. read = written + rejected + dropped.
"""

from __future__ import annotations

REJECT_REASONS: dict[str, str] = {
    "invalid_json": "the line is not valid JSON; fix or remove it",
    "invalid_utf8": "the line is not valid UTF-8; re-encode the file as UTF-8",
    "unreadable": "the record could not be read from its file (truncated or corrupt data; the detail gives the offset)",
    "record_too_large": "the record is longer than max_record_bytes (--max-record-bytes); it was skipped without "
    "being read whole: split it, or raise the limit",
    "duplicate_key": "a JSON object has the same key twice, so which value is meant is ambiguous; keep one",
    "invalid_text": 'a text field holds a lone UTF-16 surrogate (a JSON escape like "\\ud800" with no pair), which '
    "is no Unicode character and cannot be encoded; fix the program that wrote the data",
    "message_too_long": "a message (or a text, prompt or completion) is longer than max_message_chars; split it, or "
    "raise the limit (tokenizing costs memory in proportion to the text)",
    "not_an_object": "a record must be a JSON object",
    "unknown_format": "no known format matches the record's fields (messages, conversations, instruction/output, "
    "prompt/completion, text; chosen/rejected or a boolean label for preference data); pass --format or map the "
    "fields in the config",
    "missing_field": "a required field is missing",
    "wrong_type": "a field has the wrong type",
    "unknown_role": "a message has a role lossmask does not know; map it with `roles:` in the config",
    "empty_conversation": "the conversation has no messages",
    "empty_text": "the text is empty",
    "no_assistant_turn": "the conversation has no assistant turn to train on under --mask assistant",
    "special_token_in_content": "message content contains a control-token string and "
    "--special-tokens-in-content is reject",
    "special_token_in_tool_data": "tool definitions or tool-call arguments contain a control-token string; "
    "lossmask cannot escape those, so the record is rejected unless --special-tokens-in-content allow",
    "template_error": "the chat template raised an error on this conversation",
    "template_timeout": "the chat template took longer than template_timeout seconds to render this conversation "
    "(a loop that depends on the data?); fix the template, or raise the limit",
    "template_output_too_large": "the chat template's rendering, or a value it built on the way, is longer than "
    "template_max_chars; the record is too long for this limit, or the template builds text out of proportion to it",
    "template_rule": "the chat template refuses this conversation by a rule of its own (the detail quotes it); "
    "reshape the data to follow it, or use a template without that rule",
    "tool_call_id_format": "the chat template requires tool-call ids of a form the data does not have "
    "(Mistral: 9 alphanumeric characters); pass --tool-call-ids generate",
    "template_drops_reasoning": "the chat template leaves an assistant turn's reasoning out of every rendering and "
    "its generation prompt opens no think block, so what the model writes cannot be rendered; use a template "
    "that renders reasoning, or --reasoning-fallback drop",
    "template_dropped_message": "the chat template leaves a message out of the rendering (e.g. Mistral drops the "
    "system prompt when the conversation ends with the assistant); pass --dropped-messages keep to accept it",
    "template_content_dependent": "the chat template renders this conversation in a way that depends on message "
    "text lossmask cannot map to spans, so no mask could be verified",
    "template_unfaithful": "the chat template renders an assistant turn differently in training than at "
    "inference and --unfaithful-turns is reject",
    "mask_verification_failed": "the tokenized mask did not verify against the rendered spans",
    "internal_error": "lossmask itself failed on this record (the detail names the exception) and went on with "
    "the rest; please report it with the record",
    # Preference data (pipeline/formats/preference.py)
    "preference_record": "a preference pair (chosen/rejected) is not SFT data and this job writes SFT rows; "
    "prepare it as pairs, or map one side to SFT with `fields: {prompt: ..., completion: ...}`",
    "preference_no_prompt": "chosen and rejected are raw text without a prompt field; lossmask does not guess where "
    "a prompt ends inside text: give a prompt field (or map one with `fields:`), or message lists",
    "preference_prompt_mismatch": "chosen and rejected do not continue one prompt with an assistant answer: the "
    "sides share no messages that end right before an assistant message on both, or a completion does not begin "
    "with one",
    "preference_empty_side": "a side of the preference is empty: chosen or rejected has no completion (one side is "
    "the other's prefix), or a KTO example has no final assistant answer",
    "preference_identical_sides": "chosen and rejected are the same answer: the pair teaches nothing (its DPO loss "
    "stays log 2 and its gradient is 0)",
    # Preference data, rendered (pipeline/pairs.py)
    "preference_prompt_rendering": "the chat template renders the prompt differently once an answer follows it (or "
    "trains a character of it), so a side does not begin with the prompt the model reads at inference; use a "
    "template that renders earlier turns the same whatever follows",
    "preference_prompt_boundary": "a side's tokens do not begin with the prompt's own tokens: the prompt's last "
    "characters merge with the completion's first ones into other tokens (e.g. 'you' + 'I' -> 'youI'), so the model "
    "would learn the answer after a context it never reads at inference; end the prompt on a separator (a space or "
    "a newline) or use message lists",
    "preference_double_stop": "a side counts two stop tokens in a row (the data writes one, then the template or the "
    "tokenizer another): log p of the side would include a token the model emits after it has stopped; remove the "
    "stop string from the data",
    "preference_side_rows": "a side would need several rows (the template renders one of its assistant turns unlike "
    "inference, see --unfaithful-turns), and a pair compares one sequence per side; keep one assistant turn per "
    "completion, or use a prefix-stable template",
}

DROP_REASONS: dict[str, str] = {
    "too_long": "longer than --max-length and --overflow drop; for preference data, also an answer that would be cut "
    "(a pair's completions, or a KTO answer, do not fit --max-length with at least one prompt token)",
    "no_trainable_tokens": "no target is counted after masking (and truncation)",
    "blank": "the record has nothing to train on",
    "duplicate": "its normalized messages equal an earlier record's (dedup: exact); the earlier one is kept",
}


def describe(reason: str) -> str:
    return REJECT_REASONS.get(reason) or DROP_REASONS.get(reason) or reason
