"""Prompt templates: plain YAML files in prompts/, rendering a row, and the template hash.

A template has a `prompt` (and a `prompt_with_input` for rows with context) that ends where the
answer starts, plus `stop_markers`: text that, once generated, means the model began a new
block. A grounded template also has a `{faq}` slot for the FAQ entries retrieved for the
question, each written as `faq_entry` (or `faq_entry_with_context` for an entry with context). Training appends the model's EOS token to every answer; the run folder keeps a copy of
the template file (`template.yaml`) so chat and eval render exactly what training saw.
"""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from builder.errors import UserError

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"


@dataclass(frozen=True)
class Template:
    name: str
    prompt: str
    prompt_with_input: str
    stop_markers: tuple[str, ...]
    text: str  # the file as written, kept in the run folder
    faq_entry: str = "{question}\n{answer}"
    faq_entry_with_context: str = "{question} ({context})\n{answer}"

    @property
    def grounded(self) -> bool:
        """True when prompts carry retrieved FAQ entries (a `{faq}` slot)."""
        return "{faq}" in self.prompt

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, instruction: str, input: str = "", faq: str = "") -> str:
        """The prompt for one question; the answer is generated (or trained) right after it.
        `faq` is the retrieved entries as written by `render_faq`. The question and context
        are the customer's: template markers in them are defused (`defuse`)."""
        instruction, input = self.defuse(instruction), self.defuse(input)
        if input.strip():
            return self.prompt_with_input.format(instruction=instruction, input=input, faq=faq)
        return self.prompt.format(instruction=instruction, faq=faq)

    def defuse(self, text: str) -> str:
        """Customer text that cannot pose as a block of the prompt: "### FAQ:" planted in the
        context would be read as the shop's FAQ. Headers ("###") lose their hashes, and a line
        that opens like an FAQ entry's line ("답변: ...") is joined to the line before."""
        text = re.sub(r"#{2,}\s*", "", text)
        labels = {line.split("{")[0].strip() for entry in (self.faq_entry,
                                                          self.faq_entry_with_context)
                  for line in entry.splitlines() if line.split("{")[0].strip()}
        lines = text.split("\n")
        out = lines[:1]
        for line in lines[1:]:
            if any(line.lstrip().startswith(label) for label in labels):
                out[-1] += " " + line.strip()
            else:
                out.append(line)
        return "\n".join(out)

    def render_faq(self, entries) -> str:
        """FAQ entries (with .question, .context, .answer) as the `{faq}` block."""
        return "\n\n".join(
            (self.faq_entry_with_context if e.context else self.faq_entry).format(
                question=e.question, context=e.context, answer=e.answer)
            for e in entries)


def parse_template(text: str, source: str) -> Template:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{source}: not valid YAML ({err})") from None
    missing = [k for k in ("name", "prompt", "prompt_with_input", "stop_markers") if k not in (data or {})]
    if missing:
        raise UserError(f"{source}: missing {', '.join(missing)}")
    for key in ("prompt", "prompt_with_input"):
        if "{instruction}" not in data[key]:
            raise UserError(f"{source}: {key} has no {{instruction}} placeholder")
    if "{input}" not in data["prompt_with_input"]:
        raise UserError(f"{source}: prompt_with_input has no {{input}} placeholder")
    if ("{faq}" in data["prompt"]) != ("{faq}" in data["prompt_with_input"]):
        raise UserError(f"{source}: put a {{faq}} placeholder in both prompts or in neither")
    entry_formats = {k: data[k] for k in ("faq_entry", "faq_entry_with_context") if k in data}
    for key, value in entry_formats.items():
        if "{question}" not in value or "{answer}" not in value:
            raise UserError(f"{source}: {key} needs {{question}} and {{answer}} placeholders")
    return Template(
        name=data["name"],
        prompt=data["prompt"],
        prompt_with_input=data["prompt_with_input"],
        stop_markers=tuple(data["stop_markers"]),
        text=text,
        **entry_formats,
    )


def available_templates() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))


def load_template(name_or_path: str | Path) -> Template:
    """A shipped template by name ('alpaca', 'korean') or a template file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPTS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(
            f"unknown prompt template {str(name_or_path)!r}; shipped: {', '.join(available_templates())}"
        )
    return parse_template(path.read_text(encoding="utf-8"), path.name)
