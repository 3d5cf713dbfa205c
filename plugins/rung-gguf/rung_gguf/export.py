"""`rung export --format gguf`: a Llama model folder (or a LoRA adapter, merged first) as one GGUF file.

The file holds what llama.cpp's `llama` architecture reads: the hyperparameters, the tokenizer
(`rung_gguf.vocab`) and the weights in its names and layout (`rung_gguf.tensors`). An Ollama
Modelfile is written beside it (`rung_gguf.modelfile`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rung.errors import ConfigError

from rung_gguf.options import GGUFOptions
from rung_gguf.source import WHERE, LlamaShape, read_llama_config, read_weights


def export_gguf(options: GGUFOptions, source: Path, output: Path | None) -> Path:
    """Write `source` as a GGUF file (default `<source>/<name>-<outtype>.gguf`) and return its path.

    An adapter folder (adapter_config.json) is merged into its base through the `safetensors`
    export format first; the default output then goes into the adapter folder.
    """
    source = Path(source)
    if not source.is_dir():
        raise ConfigError(f"{WHERE}: '{source}' is not a model or adapter folder")
    name = options.model_name or _folder_name(source)
    target = Path(output) if output is not None else source / f"{name}-{options.outtype}.gguf"
    if target.is_dir():
        target = target / f"{name}-{options.outtype}.gguf"
    if target.suffix != ".gguf":
        raise ConfigError(f"{WHERE}: output '{target}' should end in .gguf")
    if (source / "adapter_config.json").is_file():
        from rung.exporting import export

        with tempfile.TemporaryDirectory(prefix="rung-gguf-merge-") as merged:
            merge_options = {"base": options.base} if options.base else {}
            folder = export("safetensors", source, Path(merged) / "model", merge_options)
            return write_gguf(folder, target, options, name)
    return write_gguf(source, target, options, name)


def write_gguf(source: Path, target: Path, options: GGUFOptions, name: str) -> Path:
    """The GGUF file of the model folder `source` (plus its Modelfile when asked)."""
    from gguf import GGUFWriter

    from rung_gguf.modelfile import chat_format, end_of_turn_token, modelfile_text
    from rung_gguf.tensors import encoded, file_type, llama_tensors
    from rung_gguf.vocab import read_vocab

    shape = read_llama_config(source)
    vocab = read_vocab(source, shape.vocab_size, shape.bos_token_id, shape.eos_token_id)
    found = chat_format(vocab.chat_template, vocab)
    end_of_turn = end_of_turn_token(found, vocab)
    if end_of_turn is not None:
        vocab.eot_id = vocab.tokens.index(end_of_turn)
    tensors = list(llama_tensors(source, shape, read_weights(source)))  # refusals happen before writing

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        writer = _writer_class(GGUFWriter)(str(partial), arch="llama")
        _write_hyperparameters(writer, shape, name, options.outtype, file_type(options.outtype))
        vocab.write(writer)
        for tensor_name, array in tensors:
            data, kind = encoded(array, options.outtype)
            writer.add_tensor(tensor_name, data, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        partial.replace(target)
    except OSError as exc:  # a full disk, a folder that is not writable: one line, nothing left behind
        from rung.errors import RungError

        raise RungError(f"{target}: cannot write the GGUF file ({exc.strerror or exc})") from None
    finally:
        partial.unlink(missing_ok=True)  # a failed write leaves nothing that looks like a model
    if options.modelfile:
        (target.parent / "Modelfile").write_text(modelfile_text(target, vocab, found), encoding="utf-8")
    return target


def _writer_class(base: type) -> type:
    """gguf's writer, but an empty array is written as one (GGUF allows it, the writer refuses
    it): a byte vocabulary has no merges, and llama.cpp requires the merges key for `gpt2`."""
    from gguf import GGUFValueType

    class Writer(base):
        def _pack_val(self, val, vtype, add_vtype, sub_type=None):
            if vtype == GGUFValueType.ARRAY and isinstance(val, (list, tuple)) and not val:
                head = self._pack("I", vtype) if add_vtype else b""
                return head + self._pack("I", sub_type or GGUFValueType.STRING) + self._pack("Q", 0)
            return super()._pack_val(val, vtype, add_vtype, sub_type)

    return Writer


def _write_hyperparameters(writer, shape: LlamaShape, name: str, outtype: str, ftype: int) -> None:
    from gguf import GGML_QUANT_VERSION

    writer.add_name(name)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden_size)
    writer.add_block_count(shape.num_layers)
    writer.add_feed_forward_length(shape.intermediate_size)
    writer.add_head_count(shape.num_heads)
    writer.add_head_count_kv(shape.num_kv_heads)
    if shape.head_dim * shape.num_heads != shape.hidden_size:  # llama.cpp assumes hidden/heads otherwise
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_norm_eps)
    writer.add_vocab_size(shape.vocab_size)
    writer.add_file_type(ftype)
    if outtype == "q8_0":
        writer.add_quantization_version(GGML_QUANT_VERSION)


def _folder_name(source: Path) -> str:
    """A model's name from its folder (`runs/stdlib/model` -> `stdlib`), safe in a file name."""
    import re

    folder = source.resolve()
    name = folder.parent.name if folder.name in ("model", "merged", "adapter", "final") else folder.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"
