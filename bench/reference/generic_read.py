"""A generic unsupervised read: PCA of the student's hidden states, oriented per question by the weak labels.

The textbook way to elicit a latent concept without labels (after Burns et al. 2022's unsupervised
probing): take the main direction of the student's representation of the inputs of each question
(the input's last token), and let the teacher's labels decide only which side means label 1.
bench/headroom.py runs it beside the reference to show that the benchmark is not solved by reading
the most salient direction: what stands out in the student is not the property (`generic_val_pgr`).
It reads only what every method may.
"""
import torch


def last_token(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last real token of each input (N,): which question it asks."""
    return ids.gather(1, (mask.sum(1) - 1)[:, None]).squeeze(1)


def run(ctx) -> torch.Tensor:
    h_train, h_eval = ctx.features("train", kind="hidden"), ctx.features("eval", kind="hidden")  # (N, D)
    q_train, q_eval = last_token(ctx.train_ids, ctx.train_mask), last_token(ctx.eval_ids, ctx.eval_mask)
    score = torch.zeros(len(h_eval))  # (N_e,); a question B never asks stays at P = 0.5
    for q in q_train.unique():
        a, b = h_train[q_train == q], h_eval[q_eval == q]
        h = torch.cat([a, b])
        mean = h.mean(0)
        _, _, v = torch.pca_lowrank(h - mean, q=2, center=False, niter=4)
        s_train, s_eval = (a - mean) @ v[:, 0], (b - mean) @ v[:, 0]  # (n,) on the main direction
        weak = ctx.weak_labels[q_train == q].float()
        orient = torch.sign(((weak - weak.mean()) * s_train).sum())
        score[q_eval == q] = orient * s_eval / s_train.std().clamp_min(1e-8)
    return torch.sigmoid(2.0 * score)  # (N_e,) P(label = 1)
