"""Generation-free flip proxies: rank contexts by forward passes before generating.

Two designs (issue #13), both scored per context from one forward pass per row:

- ``likelihood`` (:mod:`._likelihood`): how the context lowers the likelihood of the
  model's own unsafe context-free answers and raises that of its own refusal openings;
- ``direction`` (:mod:`._direction`): how far the context moves harmful prompts along
  the refusal direction of Arditi et al. 2024 (prompt tokens only).

Given benign prompts, the likelihood score is also read on them (how far a context
pushes helpful answers towards refusal); ``selective`` ranks by the harmful score minus
the benign one, so a prescreen keeps contexts that flip without over-refusing.

Each context's common prefix (chat header + context) is encoded once and reused by all
its rows; the rows of several contexts are batched together (:data:`CONTEXTS_PER_PASS`).
:func:`rank_agreement` measures a proxy against measured flip rates
(``benchmarks/proxy.py``).

Example:
    >>> setup = prepare_proxies(scorer, model, tokenizer, harmful)  # doctest: +SKIP
    >>> rows = list(score_candidates(setup, model, tokenizer, space.enumerate()))  # doctest: +SKIP
    >>> top_candidates(rows, 16, by="likelihood")  # doctest: +SKIP
"""

from flipsearch.proxy._direction import (
    DirectionScore,
    DirectionTargets,
    RefusalDirection,
    direction_shift,
    direction_shifts,
    fit_refusal_direction,
)
from flipsearch.proxy._forward import (
    AnswerScores,
    ForwardCount,
    answer_scores,
    answer_scores_grouped,
    last_token_states,
    last_token_states_grouped,
)
from flipsearch.proxy._likelihood import (
    LikelihoodScore,
    LikelihoodTargets,
    likelihood_shift,
    likelihood_shifts,
    refusal_openings,
)
from flipsearch.proxy._rank import RankAgreement, rank_agreement, ranks, spearman
from flipsearch.proxy._screen import (
    ANSWER_TOKENS,
    CONTEXTS_PER_PASS,
    DESIGNS,
    DIRECTION_HARMFUL,
    DIRECTION_HARMLESS,
    MAX_PROMPTS,
    RANKINGS,
    ProxyRow,
    ProxySetup,
    design_of,
    hf_model_of,
    prepare_proxies,
    score_candidates,
    top_candidates,
)

__all__ = [
    "ANSWER_TOKENS",
    "CONTEXTS_PER_PASS",
    "DESIGNS",
    "DIRECTION_HARMFUL",
    "DIRECTION_HARMLESS",
    "MAX_PROMPTS",
    "RANKINGS",
    "AnswerScores",
    "DirectionScore",
    "DirectionTargets",
    "ForwardCount",
    "LikelihoodScore",
    "LikelihoodTargets",
    "ProxyRow",
    "ProxySetup",
    "RankAgreement",
    "RefusalDirection",
    "answer_scores",
    "answer_scores_grouped",
    "design_of",
    "direction_shift",
    "direction_shifts",
    "fit_refusal_direction",
    "hf_model_of",
    "last_token_states",
    "last_token_states_grouped",
    "likelihood_shift",
    "likelihood_shifts",
    "prepare_proxies",
    "rank_agreement",
    "ranks",
    "refusal_openings",
    "score_candidates",
    "spearman",
    "top_candidates",
]
