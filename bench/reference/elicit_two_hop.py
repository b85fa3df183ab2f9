"""Reference method for the built-in `facts` task: elicit the student's two-hop knowledge.

Not a built-in and not an opener of any researcher: it is the yardstick of how much of the gap a
method can recover without ground truth (bench/headroom.py). It reads only what every method may:
the student, its tokenizer, the unlabelled inputs and the weak labels.

A facts input is `<bos> <person> <relation>` and its label is a property of the value the person
holds ("does Dalor live in a city that is coastal?"). The student was pretrained on both hops: the
facts themselves (its next token after the input is the person's city) and general statements
`<bos> <value> is -> <property> | not_<property>` (the README's "Vessa is coastal"). So:
  1. hop 1: the student's next-token distribution after the input, P(value | input);
  2. hop 2: for each candidate value, the next-token distribution after `<bos> <value> is`;
  3. compose: E_{value ~ hop 1}[hop 2], the distribution over answer words, per example;
  4. orient: which answer word means label 1 is the one thing the student cannot say. The
     examples of one question (the input's last token, the relation) fall into two cells by the
     answer word the student composes; the teacher's mean label is higher on the positive cell.
     Each cell holds ~110 B examples, so the teacher's noise averages out instead of being
     copied; its bias per relation (both cells' mean weak label above 0.5, say) is removed by
     comparing a cell with its relation's mean, not with 0.5. A linear probe on the composed
     distribution, fit to the weak labels, reached val PGR 0.91-1.03 on world 0 and failed
     exactly there: it copies the teacher's calibration, so a relation whose cells both sit near
     0.5 came out half wrong.
"""
import torch

CANDIDATE_MASS = 0.01  # a token is a candidate value if hop 1 gives it this much mass on some input
MIN_CELL_MASS = 5.0  # an answer word needs this many examples' worth of mass in B to be oriented
STATEMENT_VERB = "is"  # the public layout of statements about values: `<value> is <property>`


@torch.no_grad()
def next_token_probs(model, ids: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Next-token distribution after the last token of unpadded prompts ids (N, T) -> (N, V)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(ids), batch_size):
        logits = model(input_ids=ids[i:i + batch_size].to(device)).logits[:, -1]  # (B, V)
        out.append(torch.softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out)


def composed(ctx, hop1: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """E over hop-1 values of the hop-2 answer distribution: (N, V) from hop1 (N, V)."""
    tok = ctx.student.tokenizer
    verb = tok.convert_tokens_to_ids(STATEMENT_VERB)
    if verb == tok.unk_token_id:
        raise ValueError(f"the student's vocabulary has no {STATEMENT_VERB!r}: not the built-in facts task")
    prompts = torch.stack([torch.full_like(candidates, tok.bos_token_id), candidates,
                           torch.full_like(candidates, verb)], dim=1)  # (C, 3) `<bos> <value> is`
    hop2 = next_token_probs(ctx.student.model, prompts)  # (C, V)
    w = hop1[:, candidates]  # (N, C): restricted to candidate values, renormalized
    return (w / w.sum(1, keepdim=True).clamp_min(1e-8)) @ hop2  # (N, V)


def last_token(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The last real token of each input (N,): the relation, which says which question is asked."""
    return ids.gather(1, (mask.sum(1) - 1)[:, None]).squeeze(1)


def cell_scores(x: torch.Tensor, weak: torch.Tensor) -> torch.Tensor:
    """(V,) per answer word: the teacher's mean label on it minus its question's mean, from x (N, V)."""
    mass = x.sum(0)  # (V,) examples' worth of each answer word
    cell = (x * weak[:, None]).sum(0) / mass.clamp_min(1e-8)  # (V,) soft mean weak label per word
    return torch.where(mass >= MIN_CELL_MASS, cell - weak.mean(), torch.zeros_like(cell))


def run(ctx) -> torch.Tensor:
    hop1_train = ctx.features("train", kind="softmax")  # (N_b, V) P(value | input)
    hop1_eval = ctx.features("eval", kind="softmax")  # (N_e, V)
    seen = torch.cat([hop1_train, hop1_eval]).amax(0)  # (V,)
    candidates = torch.nonzero(seen >= CANDIDATE_MASS).squeeze(1)  # (C,)
    x_train, x_eval = composed(ctx, hop1_train, candidates), composed(ctx, hop1_eval, candidates)
    q_train, q_eval = last_token(ctx.train_ids, ctx.train_mask), last_token(ctx.eval_ids, ctx.eval_mask)
    score = torch.zeros(len(x_eval))  # (N_e,); a question B never asks stays at 0, P = 0.5
    for q in q_train.unique():
        rows = q_eval == q
        score[rows] = x_eval[rows] @ cell_scores(x_train[q_train == q], ctx.weak_labels[q_train == q].float())
    # Only the sign decides a label; scaling by the mean |score| keeps the probabilities away from 0.5.
    return torch.sigmoid(score / score.abs().mean().clamp_min(1e-8))  # (N_e,) P(label = 1)
