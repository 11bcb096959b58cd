"""Built-in models and checkpoint loading (see registry.py)."""

from .registry import Model, builtin_names, gguf_path, list_models, load_model, resolve_dtype

__all__ = ["Model", "builtin_names", "gguf_path", "list_models", "load_model", "resolve_dtype"]
