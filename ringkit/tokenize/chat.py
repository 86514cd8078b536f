"""Chat templates: rendering a model's Jinja template the way transformers does (sandboxed,
``raise_exception``, ``tojson``, ``strftime_now``), and LWM's prompt for checkpoints that carry
none."""

from __future__ import annotations

import datetime
import json

from ringkit.errors import ConfigError

# The prompt LWM's own scripts build for text QA; used when a checkpoint carries no template.
LWM_CHAT_TEMPLATE = (
    "{% if bos_token and add_bos %}{{ bos_token }}{% endif %}You are a helpful assistant."
    "{% for m in messages %}{% if m['role'] == 'user' %} USER: {{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %} ASSISTANT: {{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


def render(template: str, **context) -> str:
    """``template`` rendered with ``context`` (``ConfigError`` when it fails or raises)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ConfigError(f"chat template error: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, indent=indent,
                                                                   ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    # As transformers renders: Llama 3.2's template dates its system turn with this.
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(**context)
    except jinja2.TemplateError as err:
        raise ConfigError(f"the model's chat template failed to render: {err}") from err
