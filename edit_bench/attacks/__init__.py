"""Attacks run against an edited model before scoring (a benchmark option): concept inversion (CCE), prompt
optimisation (UnlearnDiffAtk / P4D) and Ring-A-Bell. See :mod:`edit_bench.attacks.base` for what is stored and how
success is defined."""

from .base import SUCCESS, AdversarialPrompts, Attack, attack_rates
from .inversion import ConceptInversion
from .prompt import PromptOptimisation
from .ring_a_bell import RingABell

__all__ = ["SUCCESS", "AdversarialPrompts", "Attack", "ConceptInversion", "PromptOptimisation", "RingABell", "attack_rates"]
