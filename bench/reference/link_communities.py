"""Reference method for the built-in `facts` task: find the property's communities in what the student knows.

Not a built-in, and in no family, opener, prompt, Tune space or README recipe a researcher reads: it
is the yardstick of how much of the gap a method can recover without ground truth
(bench/headroom.py). It reads only what every method may: the student, its tokenizer, the unlabelled
inputs and the weak labels. It knows one thing no researcher is told: the public layout of the
world's link statements, `<value> near <value>`.

A facts input is `<bos> <person> <relation>`; its label is a latent property of the value the person
holds (does Dalor live in a city that is coastal?). No token names the property. The teacher errs
where a value's salient decoy (`<value> looks <word>`) disagrees with it, so pooling its labels value
by value learns the decoy. What carries the property is structure: values are linked mostly to
values that share it. So, per question (the input's last token):
  1. hop 1: the values the student names for this question (its top next token on some input);
  2. the value graph: for each, the student's next-token distribution after `<bos> <value> near`,
     restricted to those values and symmetrized;
  3. its two communities: the sign of the second eigenvector of the normalized adjacency (spectral
     clustering), split at the median (the property is balanced);
  4. orient: the teacher's labels decide only which community means label 1, by their covariance
     with the community of each B input's value: over ~200 B inputs the decoy's errors average out
     instead of deciding, value by value, as they do for naive.
What limits it: links cross communities (`world.link_homophily`), so a few values land on the wrong
side, and the student's recall of the person's value.
"""
import torch

LINK = "near"  # the public layout of link statements: `<value> near <value>`


@torch.no_grad()
def next_token_probs(model, ids: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Next-token distribution after the last token of unpadded prompts ids (N, T) -> (N, V)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(ids), batch_size):
        logits = model(input_ids=ids[i:i + batch_size].to(device)).logits[:, -1]  # (B, V)
        out.append(torch.softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out)


def last_token(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last real token of each input (N,): the relation, which says which question is asked."""
    return ids.gather(1, (mask.sum(1) - 1)[:, None]).squeeze(1)


def communities(ctx, values: torch.Tensor) -> torch.Tensor:
    """(C,) +1 / -1 per value: its side of the student's value graph."""
    tok = ctx.student.tokenizer
    link = tok.convert_tokens_to_ids(LINK)
    if link is None or link == tok.unk_token_id:
        raise ValueError(f"the student's vocabulary has no {LINK!r}: not the built-in facts task")
    prompts = torch.stack([torch.full_like(values, tok.bos_token_id), values, torch.full_like(values, link)], 1)
    adj = next_token_probs(ctx.student.model, prompts)[:, values]  # (C, C) P(w | `<bos> v near`)
    adj = adj + adj.T
    deg = adj.sum(1).clamp_min(1e-8)
    _, vecs = torch.linalg.eigh(adj / torch.sqrt(deg[:, None] * deg[None, :]))  # ascending eigenvalues
    fiedler = vecs[:, -2]
    return torch.where(fiedler > fiedler.median(), 1.0, -1.0)


def run(ctx) -> torch.Tensor:
    hop1_train = ctx.features("train", kind="softmax")  # (N_b, V) P(value | input)
    hop1_eval = ctx.features("eval", kind="softmax")  # (N_e, V)
    q_train, q_eval = last_token(ctx.train_ids, ctx.train_mask), last_token(ctx.eval_ids, ctx.eval_mask)
    score = torch.zeros(len(hop1_eval))  # (N_e,); a question B never asks stays at 0, P = 0.5
    for q in q_train.unique():
        rows_t, rows_e = q_train == q, q_eval == q
        values = torch.cat([hop1_train[rows_t], hop1_eval[rows_e]]).argmax(1).unique()  # (C,)
        if len(values) < 4:
            continue
        side = communities(ctx, values)  # (C,)
        norm = lambda h: h[:, values] / h[:, values].sum(1, keepdim=True).clamp_min(1e-8)  # noqa: E731
        s_train, s_eval = norm(hop1_train[rows_t]) @ side, norm(hop1_eval[rows_e]) @ side  # (n,) in [-1, 1]
        weak = ctx.weak_labels[rows_t].float()
        orient = torch.sign(((weak - weak.mean()) * s_train).sum())
        score[rows_e] = orient * s_eval
    return torch.sigmoid(2.0 * score)  # (N_e,) P(label = 1); only the sign decides a label
