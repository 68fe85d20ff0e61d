"""Training runs: point at a run folder written by `python -m timesformer.train`; see its loss and accuracy
curves from metrics.jsonl, its resolved config, and open one of its checkpoints in Explore. Compare the runs
found under runs/: their curves on one figure, and a row each."""

from pathlib import Path

import streamlit as st
import yaml

from analysis.figures import compare_figure, throughput_figure, training_figure
from app import settings, widgets
from timesformer.runinfo import ending, read_metrics, run_summary

st.title("Training runs")


def find_runs(root: Path) -> list[str]:
    """The run folders under `root` (their metrics.jsonl a file), the most recently written first."""
    if not root.is_dir():
        return []
    base = settings.WORKDIR
    found = [p for p in root.rglob("metrics.jsonl") if p.is_file() and ".tmp" not in str(p)]
    return [str(p.parent.relative_to(base) if p.is_relative_to(base) else p.parent)
            for p in sorted(found, key=lambda p: (-p.stat().st_mtime, str(p)))]


runs = find_runs(settings.RUNS)
if len(runs) > 1:
    with st.expander(f"Compare runs ({len(runs)} under runs/)", expanded=False):
        chosen = st.multiselect("Runs", runs, key="k_runs_compare",
                                help="their validation curves on one figure (training loss dotted), and a row each")
        if chosen:
            fig = compare_figure({name: read_metrics(settings.here(name))[0] for name in chosen},
                                 f"{len(chosen)} runs")
            st.plotly_chart(fig, key="runs_compare", width="stretch")
            widgets.download_figure(fig, "runs_compared", "runs_dl_compare")
            st.dataframe([{"run": name, **run_summary(settings.here(name))} for name in chosen], hide_index=True,
                         key="runs_compare_table")
st.session_state.setdefault("k_runs_path", runs[0] if runs else "")
c = st.columns([3, 2])
typed = c[0].text_input("Run folder", key="k_runs_path",
                        help="a folder written by `python -m timesformer.train --out DIR`")
if runs:
    c[1].selectbox("…or one of the runs under runs/", [""] + runs, key="runs_pick",
                   on_change=lambda: st.session_state.update(k_runs_path=st.session_state["runs_pick"] or
                                                             st.session_state["k_runs_path"]))
if not typed.strip():
    st.info("Type the path of a training run folder (it holds metrics.jsonl).")
    st.stop()
run = settings.here(typed.strip())
if run.is_file() and run.name == "metrics.jsonl":  # the metrics file itself: its folder is the run
    run = run.parent
if not run.is_dir():
    st.error(f"{typed.strip()} is a file: type the path of the run's folder, {run.parent}" if run.is_file() else
             f"No such folder: {typed.strip()}")
    st.stop()
metrics_path = run / "metrics.jsonl"
if not metrics_path.is_file():
    st.error(f"{typed.strip()} is not a training run: it has no metrics.jsonl.")
    st.stop()

ended = ending(run)
if ended is None:
    st.info("log.txt has no final line: the run is still training, or a kill or a crash stopped it without a word "
            "(`--resume` goes on from its last checkpoint).")
else:
    (st.success if ended[0] == "finished" else st.warning)(ended[1])

rows, bad = read_metrics(run)
if bad:
    st.warning(f"{bad} line(s) of metrics.jsonl are not metrics and were skipped.")

if rows:
    fig = training_figure(rows, f"{run.name}: {len(rows)} evaluations")
    st.plotly_chart(fig, key="runs_curves", width="stretch")
    widgets.download_figure(fig, f"{run.name}_curves", "runs_dl_curves")
    speed = throughput_figure(rows, "speed, per epoch")
    if speed is not None:
        st.plotly_chart(speed, key="runs_speed", width="stretch")
        st.caption("Waiting for data near 0: the loader keeps up with the model. Well above it, the GPU idles "
                   "for want of clips: give the loader more cores (`--workers`) or make the clips cheaper.")
    last = {r["split"]: r for r in rows}
    st.dataframe(list(last.values()), hide_index=True, key="runs_last")
else:
    st.info("No evaluations logged yet (metrics.jsonl is empty): the run has not finished an epoch.")

# ---- config
config_path = run / "train_config.yaml"
with st.expander("Resolved config (train_config.yaml)", expanded=False):
    if config_path.is_file():
        try:
            st.json(yaml.safe_load(config_path.read_text()), expanded=1)
        except yaml.YAMLError as e:
            st.error(f"train_config.yaml is not valid YAML: {e}")
    else:
        st.caption("no train_config.yaml in this folder")
if (run / "log.txt").is_file():
    with st.expander("log.txt (last 40 lines)"):
        st.code("\n".join((run / "log.txt").read_text(errors="replace").splitlines()[-40:]), language=None)

# ---- checkpoints
ckpts = sorted((p for p in run.iterdir() if p.is_dir() and (p / "config.json").is_file()
                and not p.name.startswith(".")), key=lambda p: (p.name != "checkpoint-last", p.name), )
st.subheader("Checkpoints")
if not ckpts:
    st.info("No checkpoints in this run folder yet.")
    st.stop()
names = [p.name + (f" → {p.resolve().name}" if p.is_symlink() else "") for p in ckpts]
pick = st.selectbox("Checkpoint", range(len(ckpts)), format_func=names.__getitem__, key="runs_ckpt")


def _open(path: str) -> None:
    st.session_state.update(model_kind="Local path", model_path=path)


st.button("Open this checkpoint in Explore", key="runs_open", type="primary", on_click=_open,
          args=(str(ckpts[pick].resolve()),))
if st.session_state.get("runs_open"):
    st.switch_page(st.session_state["_pages"]["explore"])
