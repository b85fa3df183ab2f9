"""The campaign report, rebuilt from MLflow alone: Markdown, a self-contained HTML page and PNG plots.

Everything comes from the campaign's experiment (`aar-campaign/<id>`), so `aar report <id>` can
rebuild it after the driver is gone. Its parts:
- a header: campaign id, preset, the world (secret, or public when its seed was pinned),
  researchers, trials and wall time;
- the leaderboard ranked by VALIDATION PGR (mean ± std over the harness's seeds: what researchers
  saw, and what selected the winners), with the hidden test PGR beside it for the final table, and
  each trial's audit state (not audited, clean, or its flags): a flagged trial is shown, demoted
  below every unflagged one, never at the top;
- best-so-far test PGR per researcher against wall time and against trial count, with the naive
  and best human-designed baselines as horizontal lines;
- the generalization table: the top-k methods (by validation PGR, flagged ones demoted) on the
  primary task and on held-out math and code;
- spend per researcher: tokens, dollars, GPU-seconds, trials; then each one's direction and outcome.

Only finished trial runs count (one whose PGR was undefined shows —, ranked last): a run left
RUNNING by a crash is half-recorded and is replaced on resume (`MlflowTracker.find_run`), so
showing it would show a trial twice. Trials that produced no score (their job failed, timed out,
was cancelled, or the query budget refused it) are listed apart with their reason.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from aar_ray import tracking

EXPERIMENT_PREFIX = "aar-campaign/"
HUMAN_METHODS = ("confidence", "confident_only", "label_smoothing", "bootstrap")  # fallback for best-human line
HELDOUT = ("math", "code")
DEFAULT_TOP_K = 3  # when the campaign run has no `scoring.top_k` param
DASH = "—"


class ReportError(Exception):
    """The report cannot be built (e.g. no such campaign); the message says why."""


# ---------- what the report reads ----------

@dataclass
class Trial:
    run_id: str
    method: str
    researcher: str  # "baseline" for the driver's baseline trials (tag aar.baseline)
    trial_id: str
    fidelity: str
    flags: list[str]  # the audits' flags ([] when none)
    audit: str  # 'not audited', 'clean', or the flags
    val: tuple[float, float] | None  # (mean, std) PGR
    test: tuple[float, float] | None
    wall_time_s: float | None
    index: int | None
    heldout: dict[str, tuple[float, float]]  # task -> (mean, std)
    baseline: str | None
    sandbox: str = DASH  # the sandbox layers its trial ran under (tag aar.sandbox); — on runs from before the tag


@dataclass
class Researcher:
    name: str
    brain: str
    direction: str
    outcome: str
    metrics: dict[str, float]


@dataclass
class Unscored:
    """A trial whose job produced no score, with the harness's reason."""
    method: str
    researcher: str
    trial_id: str
    status: str
    reason: str
    sandbox: str = DASH


@dataclass
class Campaign:
    campaign_id: str
    run_id: str | None
    status: str
    preset: str
    metrics: dict[str, float]
    params: dict[str, str]
    wall_s: float | None
    researchers: list[Researcher]
    trials: list[Trial]
    seed_runs: int
    unfinished_trials: int
    unscored: list[Unscored] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)  # the campaign run's tags
    baselines: dict[str, float] = field(default_factory=dict)  # label -> test PGR, for the plot lines


def _ms(metrics: dict, prefix: str) -> tuple[float, float] | None:
    mean = metrics.get(f"{prefix}_mean")
    if mean is None:
        return None
    return float(mean), float(metrics.get(f"{prefix}_std", float("nan")))


def _trial(run) -> Trial:
    tags, m = run.tags, run.metrics
    flags = [f for f in tags.get("aar.flags", "").split(",") if f and f != "none"]
    index = m.get("trial_index", tags.get("aar.trial_index"))
    return Trial(
        run_id=run.run_id, method=tags.get("method", run.name or "?"),
        researcher="baseline" if tags.get("aar.baseline") else tags.get("researcher", "?"),
        trial_id=tags.get("trial_id", ""), fidelity=tags.get("fidelity", ""),
        flags=flags, audit=tags.get("aar.audit", ",".join(flags) or "not audited"),
        val=_ms(m, "val_pgr"), test=_ms(m, "test_pgr"), wall_time_s=m.get("wall_time_s"),
        index=None if index is None else int(float(index)),
        heldout={t: ms for t in HELDOUT if (ms := _ms(m, f"heldout_{t}_pgr")) is not None},
        baseline=tags.get("aar.baseline"), sandbox=tags.get(tracking.SANDBOX, DASH))


def load_campaign(campaign_id: str, tracker) -> Campaign:
    """Read one campaign's runs from MLflow through the tracker."""
    if not tracker.enabled:
        raise ReportError("the report reads MLflow: pass an MlflowTracker (tracking is off in this process)")
    eid = tracker.experiment_id(EXPERIMENT_PREFIX + campaign_id)
    if eid is None:
        raise ReportError(f"no campaign {campaign_id!r}: experiment {EXPERIMENT_PREFIX + campaign_id!r} "
                          f"is not in the MLflow store {getattr(tracker, 'uri', '')}")
    camp_runs = sorted(tracker.find_runs(eid, "campaign"), key=lambda r: r.start_time or 0)
    camp = camp_runs[-1] if camp_runs else None  # a resumed campaign keeps its run; the newest wins otherwise

    trial_runs = tracker.find_runs(eid, "trial")
    finished = [r for r in trial_runs if r.status == "FINISHED"]  # PGR may be absent (NaN is not logged)
    trials = [_trial(r) for r in finished]
    unscored = [Unscored(r.tags.get("method", r.name or "?"),
                         "baseline" if r.tags.get("aar.baseline") else r.tags.get("researcher", "?"),
                         r.tags.get("trial_id", ""), r.tags[tracking.UNSCORED_STATUS],
                         r.tags.get(tracking.UNSCORED_REASON, ""), r.tags.get(tracking.SANDBOX, DASH))
                for r in sorted(trial_runs, key=lambda r: r.start_time or 0)
                if r.status in ("FAILED", "KILLED") and tracking.UNSCORED_STATUS in r.tags]

    by_name: dict[str, object] = {}
    for r in sorted(tracker.find_runs(eid, "researcher"), key=lambda r: r.start_time or 0):
        by_name[r.tags.get("researcher", r.name or r.run_id)] = r  # latest run per researcher
    researchers = [Researcher(name, r.tags.get("brain", ""), r.tags.get("direction", ""),
                              r.tags.get("outcome", ""), dict(r.metrics))
                   for name, r in sorted(by_name.items())]

    metrics = dict(camp.metrics) if camp else {}
    wall_s = metrics.get("wall_s")
    if wall_s is None and camp is not None:  # still running, or ended before logging it
        end = camp.end_time or time.time() * 1000
        wall_s = (end - camp.start_time) / 1000
    c = Campaign(
        campaign_id=campaign_id, run_id=camp.run_id if camp else None,
        status=camp.status if camp else "no campaign run",
        preset=camp.tags.get("preset", DASH) if camp else DASH,
        metrics=metrics, params=dict(camp.params) if camp else {}, wall_s=wall_s,
        researchers=researchers, trials=trials, seed_runs=len(tracker.find_runs(eid, "seed")),
        unfinished_trials=len(trial_runs) - len(finished) - len(unscored), unscored=unscored,
        tags=dict(camp.tags) if camp else {})
    c.baselines = _baseline_lines(c)
    return c


def _baseline_lines(c: Campaign) -> dict[str, float]:
    """The naive and best-human test PGR: the campaign's metrics, else its baseline trials."""
    base = {t.baseline: t.test[0] for t in c.trials if t.baseline and t.test}
    naive = c.metrics.get("naive_test_pgr_mean", base.get("naive"))
    human = c.metrics.get("best_human_test_pgr_mean")
    if human is None:
        human = max((base[m] for m in HUMAN_METHODS if m in base), default=None)
    out = {}
    if naive is not None:
        out["naive"] = float(naive)
    if human is not None:
        out["best human-designed"] = float(human)
    return out


# ---------- formatting ----------

def fmt(ms: tuple[float, float] | None) -> str:
    """`mean ± std` at 4 decimals; — when not computed."""
    if ms is None or not math.isfinite(ms[0]):
        return DASH
    return f"{ms[0]:.4f} ± {ms[1]:.4f}" if math.isfinite(ms[1]) else f"{ms[0]:.4f}"


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return DASH
    return f"{v:,.{digits}f}"


def _duration(s: float | None) -> str:
    if s is None:
        return DASH
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def _audit(t: Trial) -> str:
    return "flagged: " + ", ".join(t.flags) if t.flags else t.audit


def _rank_key(t: Trial) -> tuple:
    """Unflagged first, then by validation PGR: the number researchers saw, never the test."""
    val = t.val[0] if t.val and math.isfinite(t.val[0]) else -math.inf
    return (bool(t.flags), -val, t.wall_time_s if t.wall_time_s is not None else math.inf, t.run_id)


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]

    def markdown(self) -> str:
        def cell(s: str) -> str:
            return s.replace("|", "\\|").replace("\n", " ")
        lines = ["| " + " | ".join(self.headers) + " |", "|" + "|".join("---" for _ in self.headers) + "|"]
        lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def leaderboard(c: Campaign) -> Table:
    rows = [[str(i), t.method, t.researcher, t.trial_id or DASH, t.fidelity or DASH, fmt(t.val), fmt(t.test),
             _audit(t), t.sandbox] for i, t in enumerate(sorted(c.trials, key=_rank_key), 1)]
    return Table(["rank", "method", "researcher", "trial", "fidelity", "val PGR (ranks)", "test PGR", "audit",
                  "sandbox"], rows)


def top_k(c: Campaign) -> list[Trial]:
    """The held-out stage's methods: the top-k researcher trials by validation PGR (flagged ones
    demoted), plus any trial with held-out numbers."""
    k = int(float(c.params.get("scoring.top_k", DEFAULT_TOP_K)))
    ranked = sorted(c.trials, key=_rank_key)
    chosen = [t for t in ranked if not t.baseline][:k]
    chosen += [t for t in ranked if t.heldout and t not in chosen]
    return sorted(chosen, key=_rank_key)


def generalization(c: Campaign) -> Table:
    rows = [[t.method, t.researcher, fmt(t.val), fmt(t.test), *(fmt(t.heldout.get(task)) for task in HELDOUT),
             _audit(t)] for t in top_k(c)]
    return Table(["method", "researcher", "val PGR (ranks)", "test PGR", "math PGR", "code PGR", "audit"], rows)


SPEND = (("tokens", 0), ("dollars", 4), ("gpu_seconds", 1))


def spend(c: Campaign) -> Table:
    recorded: dict[str, int] = {}
    for t in c.trials:
        recorded[t.researcher] = recorded.get(t.researcher, 0) + 1
    rows, totals = [], {k: 0.0 for k, _ in SPEND} | {"trials": 0.0, "recorded": 0.0}
    for r in c.researchers:
        m = r.metrics
        trials = m.get("trials", recorded.get(r.name, 0))
        rows.append([r.name, r.brain or DASH, *(_num(m.get(k), d) for k, d in SPEND), _num(trials),
                     str(recorded.get(r.name, 0)), _num(m.get("query_refusals", 0))])
        for k, _ in SPEND:
            totals[k] += m.get(k, 0.0)
        totals["trials"] += trials
        totals["recorded"] += recorded.get(r.name, 0)
    if c.researchers:
        rows.append(["total", "", *(_num(totals[k], d) for k, d in SPEND), _num(totals["trials"]),
                     str(int(totals["recorded"])), ""])
    return Table(["researcher", "brain", "tokens", "dollars", "GPU-seconds", "trials", "recorded trials",
                  "query refusals"], rows)


def unscored_table(c: Campaign) -> Table:
    return Table(["method", "researcher", "trial", "status", "reason", "sandbox"],
                 [[u.method, u.researcher, u.trial_id or DASH, u.status, u.reason[:300] or DASH, u.sandbox]
                  for u in c.unscored])


def families_table(c: Campaign) -> Table:
    """Per method family (the name's prefix, `aar_ray.agents.families`): how often it was tried, by whom,
    its best validation PGR and whether that moved PGR past naive's (by more than naive's seed std)."""
    from aar_ray.agents.families import family_of

    naive = next((t.val for t in c.trials if t.baseline == "naive" and t.val), None)
    groups: dict[str, list[Trial]] = {}
    for t in c.trials:
        if not t.baseline and t.val is not None:
            groups.setdefault(family_of(t.method) or "other", []).append(t)
    rows = []
    for fam, ts in sorted(groups.items(), key=lambda kv: -max(t.val[0] for t in kv[1])):
        best = max(ts, key=lambda t: t.val[0])
        delta = None if naive is None else best.val[0] - naive[0]
        moved = DASH if delta is None else ("yes" if delta > (naive[1] if math.isfinite(naive[1]) else 0.0) else "no")
        rows.append([fam, str(len(ts)), ", ".join(sorted({t.researcher for t in ts})), fmt(best.val), best.method,
                     DASH if delta is None else f"{delta:+.3f}", moved])
    return Table(["family", "trials", "researchers", "best val PGR", "best method", "vs naive (val)", "moved PGR"],
                 rows)


def researchers_table(c: Campaign) -> Table:
    return Table(["researcher", "brain", "direction", "outcome"],
                 [[r.name, r.brain or DASH, r.direction or DASH, r.outcome or DASH] for r in c.researchers])


# ---------- plots ----------

def _series(trials: list[Trial]) -> tuple[list[float], list[int], list[float]]:
    """A researcher's best-so-far test PGR, in the order its trials were scored."""
    ordered = sorted(trials, key=lambda t: (t.wall_time_s if t.wall_time_s is not None else math.inf,
                                            t.index if t.index is not None else 0))
    times, counts, best, cur = [], [], [], -math.inf
    for n, t in enumerate(ordered, 1):
        cur = max(cur, t.test[0])
        times.append(t.wall_time_s if t.wall_time_s is not None else float(n))
        counts.append(n)
        best.append(cur)
    return times, counts, best


def _colors(c: Campaign) -> dict[str, str]:
    """One colour per researcher, the same in every plot; the driver's baselines in grey."""
    names = sorted({t.researcher for t in c.trials if not t.baseline} | {r.name for r in c.researchers})
    return {"baseline": "tab:gray"} | {n: f"C{i % 10}" for i, n in enumerate(names)}


def plot_over_time(c: Campaign, path: Path) -> Path | None:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend
    from matplotlib.ticker import MaxNLocator

    per: dict[str, list[Trial]] = {}
    for t in c.trials:
        if not t.baseline and t.test and math.isfinite(t.test[0]):
            per.setdefault(t.researcher, []).append(t)
    if not per:
        return None
    fig = Figure(figsize=(12, 4.8), dpi=110, layout="constrained")
    ax_t, ax_n = fig.subplots(1, 2, sharey=True)
    palette = _colors(c)
    for name, trials in sorted(per.items()):
        times, counts, best = _series(trials)
        color = palette[name]
        ax_t.step(times, best, where="post", color=color, lw=2, label=name, marker="o", ms=4)
        ax_n.step(counts, best, where="post", color=color, lw=2, label=name, marker="o", ms=4)
    styles = {"naive": ("k", "--"), "best human-designed": ("tab:red", ":")}
    for label, y in c.baselines.items():
        color, ls = styles.get(label, ("gray", "-."))
        for ax in (ax_t, ax_n):
            ax.axhline(y, color=color, ls=ls, lw=1.5, label=f"{label} ({y:.3f})")
    ax_t.set(xlabel="wall time since campaign start (s)", ylabel="best-so-far test PGR",
             title="Best test PGR vs wall time")
    ax_n.set(xlabel="trials by this researcher", title="Best test PGR vs trials")
    ax_n.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_t, ax_n):
        ax.grid(alpha=0.3)
    ax_n.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Campaign {c.campaign_id}: PGR over time")
    fig.savefig(path)
    return path


def plot_leaderboard(c: Campaign, path: Path, n: int = 15) -> Path | None:
    from matplotlib.figure import Figure

    ranked = [t for t in sorted(c.trials, key=_rank_key) if t.test and math.isfinite(t.test[0])][:n]
    if not ranked:
        return None
    ranked.reverse()  # best at the top of a horizontal bar chart
    palette = _colors(c)
    fig = Figure(figsize=(10, 0.45 * len(ranked) + 1.8), dpi=110, layout="constrained")
    ax = fig.subplots()
    y = range(len(ranked))
    ax.barh(list(y), [t.test[0] for t in ranked],
            xerr=[t.test[1] if math.isfinite(t.test[1]) else 0 for t in ranked],
            color=[palette[t.researcher] for t in ranked], capsize=3)
    ax.set_yticks(list(y), [f"{t.method} ({t.researcher})" + (" ⚑" if t.flags else "") for t in ranked], fontsize=8)
    for label, x in c.baselines.items():
        ax.axvline(x, color="k" if label == "naive" else "tab:red", ls="--" if label == "naive" else ":",
                   label=f"{label} ({x:.3f})")
    if c.baselines:
        ax.legend(loc="lower right", fontsize=8)
    ax.set(xlabel="test PGR (mean ± std over seeds)", title=f"Leaderboard (top {len(ranked)}; ⚑ = flagged)")
    ax.grid(axis="x", alpha=0.3)
    fig.savefig(path)
    return path


def plot_generalization(c: Campaign, path: Path) -> Path | None:
    from matplotlib.figure import Figure

    rows = [t for t in top_k(c) if t.heldout]
    if not rows:
        return None
    fig = Figure(figsize=(10, 4.5), dpi=110, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / 3
    for j, (task, color) in enumerate(zip(("primary", *HELDOUT), ("C0", "C2", "C3"))):
        vals = [t.test if task == "primary" else t.heldout.get(task) for t in rows]
        xs = [i + (j - 1) * width for i, v in enumerate(vals) if v]
        ax.bar(xs, [v[0] for v in vals if v], width, yerr=[v[1] if math.isfinite(v[1]) else 0 for v in vals if v],
               color=color, label=task, capsize=3)
    ax.set_xticks(range(len(rows)), [f"{t.method}\n({t.researcher})" for t in rows], fontsize=8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(ylabel="PGR (mean ± std over seeds)", title="Generalization: primary vs held-out tasks")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)
    return path


# ---------- the documents ----------

def _header(c: Campaign) -> list[tuple[str, str]]:
    researchers = ", ".join(f"{r.name} ({r.brain})" if r.brain else r.name for r in c.researchers) or DASH
    n_base = sum(1 for t in c.trials if t.baseline)
    budget = c.metrics.get("budget_trials")
    trials = f"{len(c.trials) - n_base} researcher + {n_base} baseline"
    if budget is not None:
        trials += f" (budget {int(budget)})"
    if c.unscored:
        trials += f"; {len(c.unscored)} not scored (listed below)"
    if c.unfinished_trials:
        trials += f"; {c.unfinished_trials} unfinished not shown"
    status = c.status + (f": {c.tags['aar.verdict']}" if c.tags.get("aar.verdict") else "")
    return [("campaign", c.campaign_id), ("preset", c.preset), ("status", status), ("world", _world(c)),
            ("ranked by", "validation PGR (what researchers saw, and what selected the held-out stage); test PGR "
                          "appears beside it for the final table and chose nothing"),
            ("researchers", researchers), ("trials", trials), ("seed runs", str(c.seed_runs)),
            ("wall time", _duration(c.wall_s)),
            *[(f"{k} test PGR", f"{v:.4f}") for k, v in c.baselines.items()],
            ("MLflow run", c.run_id or DASH),
            ("generated", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))]


def _world(c: Campaign) -> str:
    seed = c.tags.get("aar.world_seed")
    if seed is None:
        return DASH
    if c.tags.get("aar.world") == "public":
        return (f"public (seed {seed} pinned in the config): method code could regenerate this world and its labels, "
                "so these numbers are not protected against that")
    return (f"secret (this installation's seed {seed}, never shown to researchers or mounted in a sandbox; "
            f"reproduce with w2s.world.seed={seed})")


def _sections(c: Campaign) -> list[tuple[str, str, Table | None, str | None]]:
    """(title, note, table, plot key) per section, shared by the Markdown and HTML renderers."""
    unscored = [("Not scored", "Trials whose job produced no score, with the harness's reason.",
                  unscored_table(c), None)] if c.unscored else []
    if not c.trials:
        return [("Leaderboard", "No trials recorded yet.", None, None), *unscored, ("Spend", "", spend(c), None),
                ("Researchers", "", researchers_table(c), None)]
    gen = generalization(c)
    gen_note = ("Top methods by validation PGR (flagged ones demoted), with their test PGR on the primary task "
                "and PGR on the held-out verification tasks (researchers never saw these)."
                if any(t.heldout for t in c.trials)
                else "The held-out stage has not run yet.")
    return [
        ("Leaderboard", "Ranked by validation PGR (what researchers saw); flagged trials come last. Test PGR is "
                        "shown, never used to rank. Mean ± std over seeds. Audit: not audited, clean, or the flags. "
                        "Sandbox: the layers the trial ran under.",
         leaderboard(c), "leaderboard"),
        ("PGR over time", "Best-so-far test PGR per researcher; dashed: naive, dotted: best human-designed method."
         if any(not t.baseline for t in c.trials) else
         f"No researcher trial was scored ({c.tags.get('aar.verdict') or 'see Not scored and Researchers below'}).",
         None, "pgr_over_time"),
        ("Generalization", gen_note, gen, "generalization"),
        ("Method families", "Which families the researchers tried, and which moved validation PGR past naive's by "
                            "more than naive's seed std.", families_table(c), None),
        *unscored,
        ("Spend", "", spend(c), None),
        ("Researchers", "", researchers_table(c), None),
    ]


def render_markdown(c: Campaign, plots: dict[str, Path | None]) -> str:
    out = [f"# Campaign report: {c.campaign_id}", ""]
    out += [f"- **{k}:** {v}" for k, v in _header(c)] + [""]
    for title, note, table, key in _sections(c):
        out += [f"## {title}", ""]
        if note:
            out += [note, ""]
        if table is not None:
            out += [table.markdown() if table.rows else "_(none)_", ""]
        if key and plots.get(key):
            out += [f"![{title}]({plots[key].name})", ""]
    return "\n".join(out)


_CSS = """body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1150px;color:#222}
h1{color:#1f3b73}h2{border-bottom:2px solid #1f3b73;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}
th{background:#1f3b73;color:#fff;padding:.35em .7em;text-align:left}
td{padding:.3em .7em;border-bottom:1px solid #ddd}tr:nth-child(even) td{background:#eef2fa}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}dd{margin:0}
img{max-width:100%;border:1px solid #ccc;margin:.5em 0}.note{color:#555}"""


def render_html(c: Campaign, plots: dict[str, Path | None]) -> str:
    """One self-contained page: plots are embedded as data URIs, so it opens from anywhere."""
    def img(p: Path, alt: str) -> str:
        data = base64.b64encode(p.read_bytes()).decode()
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'

    title = html.escape(f"Campaign report: {c.campaign_id}")
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head><body>",
           f"<h1>{title}</h1><dl>"]
    out += [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _header(c)]
    out.append("</dl>")
    for t, note, table, key in _sections(c):
        out.append(f"<h2>{html.escape(t)}</h2>")
        if note:
            out.append(f"<p class='note'>{html.escape(note)}</p>")
        if table is not None:
            out.append(table.html() if table.rows else "<p><em>(none)</em></p>")
        if key and plots.get(key):
            out.append(img(plots[key], t))
    out.append("</body></html>")
    return "\n".join(out)


def build_report(campaign_id: str, out_dir: str | Path, tracker=None) -> Path:
    """Rebuild the campaign report from MLflow; write it to out_dir and log it on the campaign run.

    Returns the path of report.md. Raises ReportError when the campaign is not in the store.
    """
    tracker = tracker or tracking.MlflowTracker()
    c = load_campaign(campaign_id, tracker)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = {"pgr_over_time": plot_over_time(c, out / "pgr_over_time.png"),
             "leaderboard": plot_leaderboard(c, out / "leaderboard.png"),
             "generalization": plot_generalization(c, out / "generalization.png")}
    for name, p in plots.items():  # a plot with no data this time must not leave a stale file behind
        if p is None:
            (out / f"{name}.png").unlink(missing_ok=True)
    md, page = out / "report.md", out / "report.html"
    md.write_text(render_markdown(c, plots) + "\n", encoding="utf-8")
    page.write_text(render_html(c, plots) + "\n", encoding="utf-8")
    if c.run_id and getattr(tracker, "enabled", False):
        for f in (md, page, *(p for p in plots.values() if p)):
            tracker.log_file(c.run_id, f, "report")
    return md


def default_out_dir(campaign_id: str) -> Path:
    from aar_ray.home import runs_dir

    return runs_dir() / campaign_id  # the results home's, wherever AAR_HOME / AAR_RUNS_DIR put it


def report_main(campaign_id: str, out_dir: str | None) -> int:
    """`aar report <campaign-id>`: rebuild from MLflow; the last line printed is `report: <path>`."""
    try:
        path = build_report(campaign_id, out_dir or default_out_dir(campaign_id))
    except ReportError as e:
        print(f"aar report: {e}", file=sys.stderr)
        return 1
    print(f"report: {path}")
    return 0
