"""Loading a stage's Hugging Face export as the model an alignment method trains or scores with."""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from zhinao.model import attention_implementation


def load_causal_lm(model_dir: Path, attention: str):
    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=attention_implementation(attention)
    )


def load_reward_model(model_dir, attention: str, pad_id: int):
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=1, dtype=torch.float32, attn_implementation=attention_implementation(attention)
    )
    model.config.pad_token_id = pad_id  # the head pools the last non-pad token
    return model
