"""Registration of the core's built-in pieces: metric sinks and the core CLI commands."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_metric_sinks(register):
    register("console", impl="rung.builtin.sinks:ConsoleSink", options="rung.builtin.sinks:ConsoleSinkOptions",
             summary="metric lines on the console")
    register("jsonl", impl="rung.builtin.sinks:JsonlSink", options="rung.builtin.sinks:JsonlSinkOptions",
             summary="one JSON object per logged step in the run folder")


@hookimpl
def rung_register_commands(register):
    register("plugins", impl="rung.cli.plugins_cmd:plugins", summary="List installed plugins and what they registered.")
    register("config", impl="rung.cli.config_cmd:config", summary="Validate configs and print their JSON Schema.")
    register("run", impl="rung.cli.run_cmd:run", summary="Run a config: build backend, data and trainer, then train.")
    register("export", impl="rung.cli.export_cmd:export",
             summary="Write a model or adapter in another format (safetensors, gguf, ...).")
    register("new-plugin", impl="rung.cli.new_plugin_cmd:new_plugin", summary="Write a plugin package to start from.")
