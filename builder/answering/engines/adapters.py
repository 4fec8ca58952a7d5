"""Many shops over one base model: each run tuned from the same base folder is a LoRA adapter
loaded into one PEFT model under the run's name, and its engine generates with that adapter
alone (PEFT's `adapter_names`, per request), so N shops hold the base once and N adapters.

    bases = SharedBases()
    engine = bases.engine(Run("runs/shop_a"), "shop_a", rag)   # a TransformersEngine
    engine = bases.engine(Run("runs/shop_b"), "shop_b", rag)   # the same base model
    bases.release("shop_a")                                     # its adapter leaves; the base
                                                                # goes with the last one

An answer generated with one shop's adapter is the one `builder serve RUN --use adapter`
gives (base + that adapter, nothing else active). One generation at a time per base (a lock
shared by its engines): on CPU one generation takes every core, and PEFT's adapter choice
is a hook on the shared layers for the length of a generate call.
"""

import hashlib
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from builder.run import Run


@dataclass
class Base:
    """One base model in memory, with the adapters loaded into it."""

    model: object  # a peft.PeftModel
    lock: threading.Lock = field(default_factory=threading.Lock)
    adapters: set[str] = field(default_factory=set)


class SharedBases:
    """The base models in memory, by folder, and which shop's adapter is in which."""

    def __init__(self, device: str | None = None):
        self.device = device
        self.bases: dict[str, Base] = {}
        self._lock = threading.Lock()  # loading and releasing, one at a time

    def engine(self, run: Run, name: str, rag, **options):
        """A TransformersEngine answering with `run`'s adapter over its (shared) base."""
        from builder.answering.engines.transformers import (
            TransformersEngine,
            end_token_ids,
            load_tokenizer,
        )

        base_dir, adapter_dir = run.weights("adapter")
        with self._lock:
            base = self._base_with(str(Path(base_dir).resolve()), adapter_dir,
                                   self.adapter_name(name))
        tokenizer = load_tokenizer(adapter_dir if (adapter_dir / "tokenizer_config.json").is_file()
                                   else base_dir)
        meta = run.meta()
        ends = end_token_ids(base.model.generation_config, tokenizer) | set(
            meta.get("end_token_ids") or [])
        template = run.template()
        return TransformersEngine(
            base.model, tokenizer, end_ids=ends, stop_markers=template.stop_markers,
            repetition_penalty=rag.repetition_penalty if rag is not None else 1.0,
            context_length=meta.get("config", {}).get("model", {}).get("max_seq_length"),
            prompt_lookup_tokens=rag.prompt_lookup_tokens if rag is not None else 0,
            adapter=self.adapter_name(name), lock=base.lock, **options)

    def adapter_name(self, shop: str) -> str:
        """The shop's adapter name in PEFT (a module name: no dots), one per shop."""
        digest = hashlib.sha256(shop.encode()).hexdigest()[:8]  # (two names, one spelling)
        return f"shop_{re.sub(r'[^0-9A-Za-z_]', '_', shop)}_{digest}"

    def release(self, shop: str) -> None:
        """Take the shop's adapter out of its base; the base leaves memory with its last one."""
        name = self.adapter_name(shop)
        with self._lock:
            for key, base in list(self.bases.items()):
                if name not in base.adapters:
                    continue
                with base.lock:  # (not while it generates)
                    base.model.delete_adapter(name)
                base.adapters.discard(name)
                if not base.adapters:
                    del self.bases[key]

    def _base_with(self, base_dir: str, adapter_dir: Path, name: str) -> Base:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        from builder.answering.engines.transformers import load_dtype

        base = self.bases.get(base_dir)
        if base is None:
            device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            model = AutoModelForCausalLM.from_pretrained(base_dir,
                                                         dtype=load_dtype(base_dir, device))
            model = PeftModel.from_pretrained(model, adapter_dir, adapter_name=name)
            base = self.bases[base_dir] = Base(model.to(device).eval())
        elif name not in base.adapters:
            with base.lock:
                base.model.load_adapter(adapter_dir, adapter_name=name)
                base.model.eval()
        base.adapters.add(name)
        return base

    def holding(self) -> dict[str, list[str]]:
        """{base folder: the adapter names loaded into it} (see adapter_name)."""
        return {key: sorted(base.adapters) for key, base in self.bases.items()}
