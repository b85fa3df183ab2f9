"""Value vote: denoise weak labels by the value the student recalls (the one-hop ablation of the reference).

bench/headroom.py runs it beside `link_communities` to show what reading the value graph adds. Here
the student is asked one thing only: the person's value (its next token after `<bos> <person>
<relation>`). Every person sharing a value shares a label, so the teacher's labels are pooled per
recalled value, shrunk toward the question's (relation's) mean. On the built-in world this averages
the teacher's noise but not its systematic errors: where a value's decoy disagrees with its property,
most of its weak labels are wrong, and the vote follows them. It reads only what every method may.
"""
import torch

PRIOR = 1.0  # pseudo-examples at the question's mean label in each value's pool


def last_token(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last real token of each input (N,): the relation, which says which question is asked."""
    return ids.gather(1, (mask.sum(1) - 1)[:, None]).squeeze(1)


def value_scores(x: torch.Tensor, weak: torch.Tensor) -> torch.Tensor:
    """(V,) per recalled value: its shrunk mean weak label minus the question's mean, from x (N, V)."""
    mass = x.sum(0)  # (V,) examples' worth of each value
    pooled = ((x * weak[:, None]).sum(0) + PRIOR * weak.mean()) / (mass + PRIOR)  # (V,)
    return pooled - weak.mean()


def run(ctx) -> torch.Tensor:
    x_train = ctx.features("train", kind="softmax")  # (N_b, V) P(value | input)
    x_eval = ctx.features("eval", kind="softmax")  # (N_e, V)
    q_train, q_eval = last_token(ctx.train_ids, ctx.train_mask), last_token(ctx.eval_ids, ctx.eval_mask)
    score = torch.zeros(len(x_eval))  # (N_e,); a question B never asks stays at 0, P = 0.5
    for q in q_train.unique():
        rows = q_eval == q
        score[rows] = x_eval[rows] @ value_scores(x_train[q_train == q], ctx.weak_labels[q_train == q].float())
    # Only the sign decides a label; scaling by the mean |score| keeps the probabilities away from 0.5.
    return torch.sigmoid(score / score.abs().mean().clamp_min(1e-8))  # (N_e,) P(label = 1)
