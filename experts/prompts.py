"""Chat messages and prompt text: the one place where a question becomes the messages and the text a model sees.

    msgs = build_messages("Why is the sky blue?", system="You are a physicist.", passages="[1] Rayleigh ...")
    text = render_prompt(tokenizer, msgs)            # the chat template (or an expert's own) + generation prompt

Pure Python (no torch): the training-data readers and the option scorer use it as well as the assistant.
"""

from __future__ import annotations

Messages = list[dict[str, str]]


def build_messages(question: str, *, system: str | None = None, passages: str | None = None,
                   history: Messages | None = None, instruction: str | None = None) -> Messages:
    """Chat messages for one turn: the system prompt (then ``instruction``, then ``"Passages:\\n" + passages``),
    the earlier turns of ``history``, then the user's ``question``. No system message when all three are empty."""
    content = system or ""
    if instruction:
        content = (content + " " if content else "") + instruction
    if passages:
        content = (content + "\n\n" if content else "") + "Passages:\n" + passages
    messages = [{"role": "system", "content": content}] if content else []
    return messages + list(history or []) + [{"role": "user", "content": question}]


def with_system(messages: Messages, system_prompt: str | None) -> Messages:
    """Prepend the expert's system prompt unless the conversation already has one."""
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return list(messages)


def render_prompt(tokenizer, messages: Messages, template: str | None = None, *,
                  add_generation_prompt: bool = True) -> str:
    """The text of ``messages`` in the tokenizer's chat template (or the jinja ``template``), by default followed by
    the generation prompt: what the model sees before its reply. ``add_generation_prompt=False`` renders a finished
    conversation (its last message included as written), as training does."""
    kwargs = {"chat_template": template} if template else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **kwargs)
