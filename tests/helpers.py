"""Small builders shared by tests: stores filled with traces from the tiny model."""

from __future__ import annotations

from analysis.record import GenerationSettings, Prompt, record_run

PROMPTS = [Prompt("What is 12 + 7?", {"problem_id": "a", "gold_answer": "19", "level": 1.0}),
           Prompt("Tom has 3 apples and buys 5 more.", {"problem_id": "b", "gold_answer": "8", "level": 2.0})]


def fill_store(store, lm, max_new_tokens: int = 24, samples: int = 2, name: str = "tiny run") -> int:
    """Generate a small run with ``lm`` into ``store``; return its run id."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, samples=samples, batch_size=4, top_k=5)
    return record_run(store, lm, PROMPTS, settings, name).run_id
