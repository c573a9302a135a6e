"""Rollouts with vLLM colocated on the training GPUs (the trainer image installs vLLM; it needs CUDA).

Each rank runs its own in-process vLLM engine (tensor parallel 1, launched by torchrun's
processes) in bf16 with sleep mode on: it sleeps during the update (weights offloaded to CPU, KV
cache freed, so training gets the GPU memory back), wakes its weights to take the policy's new
ones after each update, and wakes its KV cache to generate. This module cannot run on CPU; its
weight mapping (`vllm_weights`) is pure and tested.
"""

import os
from collections.abc import Iterator

import torch

from zhinao.rollout.engine import Generation, Sampling, cut_at_stop


def vllm_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's tensors under its Hugging Face checkpoint names, in bf16.

    vLLM's model classes load the checkpoint's names and fuse q/k/v and gate/up themselves, so
    the push is the same mapping as `save_pretrained`: the training module's state dict, with any
    wrapper prefix removed.
    """
    for name, tensor in model.state_dict().items():
        yield name.removeprefix("module."), tensor.detach().to(torch.bfloat16)


class VLLMEngine:
    def __init__(
        self, model_dir: str, *, stop_ids: list[int], gpu_memory_utilization: float, max_model_len: int, seed: int
    ):
        # The engine core must live in this process for sync() to reach its model.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise SystemExit(
                "rolloutEngine vllm: the vllm package is not installed; the trainer image (images/trainer) ships it,"
                " a custom image needs the project's `vllm` extra (vllm 0.32.0, which pins torch 2.13.0)"
            ) from None
        self._sampling_params = SamplingParams
        self.stop_ids = list(stop_ids)
        self.llm = LLM(
            model=model_dir,
            dtype="bfloat16",
            tensor_parallel_size=1,
            distributed_executor_backend="external_launcher",  # one engine per torchrun rank
            enable_sleep_mode=True,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
        )
        self.llm.sleep(level=1)

    def sync(self, model: torch.nn.Module) -> None:
        self.llm.wake_up(tags=["weights"])
        runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
        runner.model.load_weights(vllm_weights(model))
        self.llm.reset_prefix_cache()  # cached prefixes hold the old policy's keys and values

    def generate(self, prompts: list[list[int]], *, sampled: int, greedy: bool, sampling: Sampling) -> Generation:
        SamplingParams = self._sampling_params
        # Token ids only: the loop decodes what it scores itself, so vLLM's detokenizer would be wasted work
        # (and a policy whose embedding is wider than its tokenizer may sample ids the tokenizer lacks).
        common = dict(max_tokens=sampling.max_new_tokens, stop_token_ids=self.stop_ids, detokenize=False)
        draw = SamplingParams(n=sampled, temperature=sampling.temperature, top_k=sampling.top_k or -1, **common)
        argmax = SamplingParams(n=1, temperature=0.0, **common)
        requests = [{"prompt_token_ids": p} for p in prompts]
        self.llm.wake_up(tags=["kv_cache"])
        outputs = self.llm.generate(
            requests + (requests if greedy else []),
            [draw] * len(prompts) + ([argmax] * len(prompts) if greedy else []),
            use_tqdm=False,
        )
        self.llm.sleep(level=1)  # hand the memory back to the update
        rows = [[cut_at_stop(list(c.token_ids), self.stop_ids) for c in o.outputs] for o in outputs]
        drawn = [r for per_prompt in rows[: len(prompts)] for r in per_prompt]
        best = [per_prompt[0] for per_prompt in rows[len(prompts) :]]
        return Generation(sampled=drawn, greedy=best, tokens=sum(len(r) for r in drawn + best))
