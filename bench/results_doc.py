"""Print the tables of docs/results.md from the raw results (table1.jsonl, shipped_models.json,
recipe_pilots.json, attention_follow_shipped.jsonl), so that every figure there comes from one place.

    tslab bench results_doc [shipped|pilots|follow|fp16|spread]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from table1 import load

RESULTS = Path(__file__).resolve().parent / "results"


def shipped() -> str:
    """The shipped models: size, held-out accuracy, validation, training time."""
    models = json.loads((RESULTS / "shipped_models.json").read_text())["models"]
    lines = ["| model | params | fp16 weights | held-out acc (95% interval), 2,048 clips | val acc per epoch | "
             "steps | training (s) |", "|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        h, t = m["held_out"], m["train"]
        lo, hi = h["interval95"]
        curve = " → ".join(f"{a * 100:.1f}" for _, a in m["validation_curve"])
        lines.append(f"| `{name}` | {m['parameters'] / 1e6:.2f}M | {m['weights']['bytes'] / 2**20:.1f} MiB | "
                     f"**{h['accuracy'] * 100:.2f}%** ({lo * 100:.1f}–{hi * 100:.1f}) | {curve} | {t['steps']} | "
                     f"{t['train_wall_s']:.0f} |")
    total = sum(f.stat().st_size for f in (RESULTS.parent.parent / "assets" / "models").rglob("*") if f.is_file())
    return "\n".join(lines) + f"\n\nAll six folders: {total / 2**20:.1f} MiB ({total:,} bytes).\n"


def pilots() -> str:
    """The recipe pilots: validation accuracy after each evaluation."""
    runs = json.loads((RESULTS / "recipe_pilots.json").read_text())["runs"]
    lines = ["| pilot | pos. embedding std | validation accuracy (%) at step | command |", "|---|---|---|---|"]
    for name, r in runs.items():
        curve = ", ".join(f"{s}: {a * 100:.0f}" for s, a in r["val_curve"])
        stopped = f" (stopped; of {r['total_steps']})" if r["stopped"] else ""
        lines.append(f"| {name} | {r['pos_embed_std']} | {curve}{stopped} | `{r['command']}` |")
    return "\n".join(lines) + "\n"


def follow() -> str:
    """Per shipped scheme model: how often the cls token's top patch lies on the object, layer by layer."""
    rows = [json.loads(x) for x in (RESULTS / "attention_follow_shipped.jsonl").read_text().splitlines()]
    lines = ["| model | block 0 | block 1 | block 2 | block 3 | chance |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = " | ".join(f"{v * 100:.0f}%" for v in r["cls_argmax_on_object_per_layer"])
        lines.append(f"| `{r['checkpoint']}` | {cells} | {r['chance'] * 100:.0f}% |")
    return "\n".join(lines) + "\n"


def fp16() -> str:
    """Held-out accuracy of each seed-0 temporal run in fp32 (its checkpoint) and as shipped (fp16)."""
    models = json.loads((RESULTS / "shipped_models.json").read_text())["models"]
    lines = ["| scheme | fp32 checkpoint | fp16 as shipped |", "|---|---|---|"]
    for r in load():
        name = f"synthmotion-temporal-{r['scheme']}"
        if r["task"] == "temporal" and r["seed"] == 0 and name in models and "test_acc1" in r:
            lines.append(f"| `{r['scheme']}` | {r['test_acc1'] * 100:.2f}% | "
                         f"{models[name]['held_out']['accuracy'] * 100:.2f}% |")
    return "\n".join(lines) + "\n"


def spread() -> str:
    """Wall time per run (s) by task: mean and range."""
    out = []
    for task in ("appearance", "temporal"):
        walls = [r["wall_s"] for r in load() if r["task"] == task and "val_acc1" in r]
        if walls:
            out.append(f"{task}: {len(walls)} runs, {statistics.mean(walls):.0f} s mean ({min(walls):.0f}–"
                       f"{max(walls):.0f}), {sum(walls) / 60:.0f} min in all")
    return "\n".join(out) + "\n"


TABLES = {f.__name__: f for f in (shipped, pilots, follow, fp16, spread)}

if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="tslab bench results_doc", description=__doc__.split("\n\n")[0])
    p.add_argument("tables", nargs="*", choices=list(TABLES), help="the tables printed (default: all)")
    for name in p.parse_args().tables or TABLES:
        print(TABLES[name]())
