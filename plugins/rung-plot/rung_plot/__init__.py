"""rung-plot: `rung plot RUN [RUN...]`, the curves of one or several runs in one PNG.

`history` reads a run's metrics.jsonl (what the core's jsonl sink writes) as its latest
history; `figure` draws one subplot per metric and one line per run; `plot_cmd` is the command.
"""
