"""Tokenizer, streaming loader, MoE vision-language model, losses, Ray Train trainer and recipes."""
