"""The library the alignment stages (sft, reward, rlhf) and the ablation's SFT evaluation share.

One module per method over shared utilities, the way TRL keeps one trainer per method:

    data        JSONL records, held-out splits, preference pairs, prompts, right padding
    models      loading an export as a causal LM or a reward model
    scoring     reward model + rule rewards (what RLHF optimises and the ablation scores)
    rollout     generation, response log-probabilities, held-out evaluation
    remax, ppo  online RL from prompts: rollout and loss of each method
    preference  offline DPO and ORPO from preference pairs

Stages import from here, never from each other.
"""
