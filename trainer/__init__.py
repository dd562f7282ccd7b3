"""Ebbtide's LoRA trainer: Hugging Face transformers + peft on torch, checkpointing under the SIGTERM contract.

Its own program and image (trainer/Dockerfile); it imports nothing of Ebbtide's but the API types' contract as
written in docs/finetuning.md, so a team can replace it with their own trainer.
"""
