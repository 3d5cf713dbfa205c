"""Prompt templates (rung.prompt_templates) and their commands: `rung prompt -t`, `rung chat -t`,
`rung templates ...`. Templates render to exact messages; sent through the real openai backend to
the local fake server, the request body holds exactly those; every mistake is one line."""

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from rung.errors import ConfigError
from rung.prompt_templates import list_templates, load_template, parse_template, templates_dir
from tests.fake_llm_server import TEST_KEY as KEY

RUNG = str(Path(sys.executable).with_name("rung"))

SUMMARISE = """\
description: Summarise a text in a few words
system: You are terse. Answer in {{ style }}.
prompt: |
  Summarise in at most {{ words }} words:
  {{ input }}
examples:
  - user: "Summarise in at most 3 words: The cat sat on the mat all day."
    assistant: Cat sat, mat.
  - {role: user, content: "Summarise in at most 2 words: Rain fell."}
  - role: assistant
    content: |
      Rain fell.
variables:
  words: {default: 5, description: how many words at most}
  style: plain English
temperature: 0.25
max_tokens: 40
stop: [END]
"""

FEW_SHOT = [
    {"role": "user", "content": "Summarise in at most 3 words: The cat sat on the mat all day."},
    {"role": "assistant", "content": "Cat sat, mat."},
    {"role": "user", "content": "Summarise in at most 2 words: Rain fell."},
    {"role": "assistant", "content": "Rain fell."},
]


def as_dicts(messages):
    return [{"role": m.role, "content": m.content} for m in messages]


def write_template(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def test_a_template_renders_system_few_shot_turns_then_the_user_turn(tmp_path):
    template = load_template(write_template(tmp_path, "summarise", SUMMARISE))
    request = template.render({"input": "The river ran to the sea.", "style": "French"})
    assert as_dicts(request.messages) == [
        {"role": "system", "content": "You are terse. Answer in French."},
        *FEW_SHOT,
        {"role": "user", "content": "Summarise in at most 5 words:\nThe river ran to the sea."},
    ]
    assert (request.temperature, request.max_tokens, request.stop) == (0.25, 40, ("END",))
    # settings override the template's; a new system prompt replaces its own; extra variables are ignored
    request = template.render({"input": "x", "words": "2", "unused": "y"}, system="Be kind.", max_tokens=7)
    assert request.messages[0].content == "Be kind."
    assert request.messages[-1].content.startswith("Summarise in at most 2")
    assert (request.max_tokens, request.temperature) == (7, 0.25)
    assert template.variable_names == ("input", "style", "words") and template.takes_input
    assert template.variables["words"].description == "how many words at most"
    # no system and no prompt: the user's text is the user turn, after the examples
    bare = parse_template("examples:\n  - {user: a, assistant: b}\n", name="bare")
    assert as_dicts(bare.render({"input": "c"}).messages) == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]


def test_templates_are_found_by_name_in_the_config_dir_and_given_folders(tmp_path):
    home = templates_dir()  # the autouse fixture points RUNG_CONFIG_DIR at this test's folder
    assert home == tmp_path / "config" / "templates"
    write_template(home, "greet", "prompt: Hello {{ who }}\n")
    write_template(home, "other", "system: mine\nprompt: hi\n")
    suite = tmp_path / "suite"
    write_template(suite, "greet", "prompt: Hi from the suite, {{ who }}\n")
    assert load_template("greet").render({"who": "Ada"}).messages[-1].content == "Hello Ada"
    assert load_template("greet", search=[suite]).render({"who": "Ada"}).messages[-1].content == (
        "Hi from the suite, Ada")
    assert [(name, path.parent) for name, path in list_templates([suite])] == [("greet", suite), ("other", home)]
    with pytest.raises(ConfigError, match=r"unknown template 'gret': .*did you mean 'greet'\?"):
        load_template("gret")


@pytest.mark.parametrize("text, message", [
    ("prompt: |\n  one\n  two {{ who }\n", r"t\.yaml:3: prompt: bad Jinja template: unexpected '}'"),
    ("system: ok\nprompt: '{% if x %}'\n", r"t\.yaml:2: prompt: bad Jinja template: .*'endif'"),
    ("prompt: hi\ntemprature: 0.2\n", r"t\.yaml:2: temprature: unknown template key; did you mean 'temperature'\?"),
    ("prompt: [unclosed\n", r"t\.yaml:2: invalid YAML"),
    ("prompt: hi\nmax_tokens: many\n", r"t\.yaml:2: max_tokens: expected an integer, got 'many'"),
    ("prompt: hi\nexamples:\n  - {user: a, answer: b}\n", r"t\.yaml:3: examples\.0: an example turn has user"),
    ("- just a list\n", r"t\.yaml: a template is a YAML mapping"),
])
def test_a_bad_template_is_one_line_naming_the_file_and_line(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_template(write_template(tmp_path, "t", text))
    assert "\n" not in str(caught.value) and str(tmp_path / "t.yaml") in str(caught.value)


def test_rendering_errors_name_the_variable_and_the_line(tmp_path):
    text = "system: s\nprompt: |\n  first\n  {{ item.name }} and {{ who }}\n"
    template = load_template(write_template(tmp_path, "t", text))
    with pytest.raises(ConfigError, match=r"t\.yaml:4: template 't' needs the variables 'item', 'who'"):
        template.render({})
    with pytest.raises(ConfigError, match=r"t\.yaml:4: template 't': .*has no attribute 'name' \(in its prompt\)"):
        template.render({"item": {}, "who": "me"})
    sandboxed = load_template(write_template(tmp_path, "s", "prompt: \"{{ ''.__class__.__mro__ }}\"\n"))
    with pytest.raises(ConfigError, match=r"s\.yaml:1: template 's': access to attribute '__class__' .* unsafe"):
        sandboxed.render({})


# -- the commands, as a user runs them --------------------------------------------------------------

@pytest.fixture
def cli(server, tmp_path):
    config_dir = tmp_path / "config"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_", "EDITOR", "VISUAL"))}
    env.update(RUNG_CONFIG_DIR=str(config_dir), RUNG_LOAD_PLUGINS="rung-openai,rung-anthropic,rung-prompt",
               OPENAI_API_KEY=KEY, PYTHONUNBUFFERED="1")

    def run(*args, input=None, check=True, **extra_env):
        proc = subprocess.run([RUNG, *args], input=input, capture_output=True, text=True, timeout=120,
                              env={**env, **extra_env}, cwd=tmp_path,
                              **({} if input is not None else {"stdin": subprocess.DEVNULL}))
        assert KEY not in proc.stdout + proc.stderr
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    run.config_dir, run.templates = config_dir, config_dir / "templates"
    run.openai = ["-m", "gpt-test", "-o", f"base_url={server.openai_base_url}"]
    # the template names its backend, model and server: `rung prompt -t summarise` needs nothing else
    write_template(run.templates, "summarise", SUMMARISE + f"backend: openai\nmodel: gpt-test\n"
                                                           f"options: {{base_url: '{server.openai_base_url}'}}\n")
    return run


def test_rung_prompt_sends_exactly_the_rendered_messages(cli, server):
    proc = cli("prompt", "-t", "summarise", "-p", "words=4", "The river ran to the sea.")
    assert proc.stdout == "echo: Summarise in at most 4 words:\nThe river ran to the sea.\n"
    body = server.requests[-1].body
    assert body["messages"] == [
        {"role": "system", "content": "You are terse. Answer in plain English."},
        *FEW_SHOT,
        {"role": "user", "content": "Summarise in at most 4 words:\nThe river ran to the sea."},
    ]
    assert (body["model"], body["temperature"], body["stop"]) == ("gpt-test", 0.25, ["END"])
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 40
    # the command line overrides the template: model, sampling, system; the text may come on stdin
    cli("prompt", "-t", "summarise", "-m", "gpt-4o-mini", "--temperature", "0.9", "--system", "Be brief.",
        input="piped text\n")
    body = server.requests[-1].body
    assert (body["model"], body["temperature"]) == ("gpt-4o-mini", 0.9)
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][-1]["content"] == "Summarise in at most 5 words:\npiped text"
    with sqlite3.connect(cli.config_dir / "logs.db") as db:
        rows = db.execute("SELECT prompt, system, options FROM responses ORDER BY id").fetchall()
    assert rows[0][:2] == ("Summarise in at most 4 words:\nThe river ran to the sea.",
                           "You are terse. Answer in plain English.")
    assert json.loads(rows[0][2])["template"] == "summarise" and json.loads(rows[1][2])["temperature"] == 0.9


def test_a_templates_tools_are_offered_and_called(cli, server):
    (cli.templates / "calc.py").write_text('def add(a: int, b: int) -> int:\n    """Add two numbers."""\n'
                                           '    return a + b\n')
    write_template(cli.templates, "calc", "system: Use the tools.\nprompt: 'What is {{ input }}?'\n"
                                          "tools: [calc.py:add]\n")  # beside the template, wherever you run
    server.ask_tool("add", {"a": 2, "b": 3})
    proc = cli("prompt", "-t", "calc", *cli.openai, "2 + 3")
    assert proc.stdout == "tool said: 5\n" and "rung: tool add" in proc.stderr
    asked, answered = server.requests[-2].body, server.requests[-1].body
    assert [t["function"]["name"] for t in asked["tools"]] == ["add"]
    assert asked["messages"] == [{"role": "system", "content": "Use the tools."},
                                 {"role": "user", "content": "What is 2 + 3?"}]
    assert answered["messages"][-1]["role"] == "tool" and answered["messages"][-1]["content"] == "5"


def test_a_templates_schema_asks_for_json_that_fits_it(cli, server):
    write_template(cli.templates, "person", "prompt: 'Describe {{ input }} as JSON.'\nschema:\n  type: object\n"
                                            "  properties: {name: {type: string}, born: {type: integer}}\n"
                                            "  required: [name, born]\n")
    server.reply('{"name": "Ada", "born": "long ago"}')  # does not fit: asked again
    server.reply('{"name": "Ada", "born": 1815}')
    proc = cli("prompt", "-t", "person", *cli.openai, "Ada Lovelace")
    assert json.loads(proc.stdout) == {"name": "Ada", "born": 1815}
    assert server.requests[-1].body["messages"][0] == {"role": "user", "content": "Describe Ada Lovelace as JSON."}


def test_rung_chat_starts_from_the_templates_system_and_few_shot_turns(cli, server):
    proc = cli("chat", "-t", "summarise", "-p", "words=3", input="Rivers flow.\nSeas are salty.\n")
    assert proc.stdout == ("echo: Summarise in at most 3 words:\nRivers flow.\n"
                           "echo: Summarise in at most 3 words:\nSeas are salty.\n")
    assert server.requests[-1].body["messages"] == [
        {"role": "system", "content": "You are terse. Answer in plain English."},
        *FEW_SHOT,
        {"role": "user", "content": "Summarise in at most 3 words:\nRivers flow."},
        {"role": "assistant", "content": "echo: Summarise in at most 3 words:\nRivers flow."},
        {"role": "user", "content": "Summarise in at most 3 words:\nSeas are salty."},
    ]
    # a prompt without {{ input }} opens the chat; then the lines go as typed, /reset returns to the start
    write_template(cli.templates, "opener", "system: Be a guide.\nprompt: Tell me about {{ topic }}.\n"
                                            "examples: [{user: hi, assistant: hello}]\n")
    proc = cli("chat", "-t", "opener", "-p", "topic=tides", *cli.openai, input="And waves?\n/reset\nAgain\n")
    assert proc.stdout == "echo: Tell me about tides.\necho: And waves?\necho: Again\n"
    system_and_few_shot = [{"role": "system", "content": "Be a guide."}, {"role": "user", "content": "hi"},
                           {"role": "assistant", "content": "hello"}]
    assert [r.body["messages"] for r in server.requests[-3:]] == [
        [*system_and_few_shot, {"role": "user", "content": "Tell me about tides."}],
        [*system_and_few_shot, {"role": "user", "content": "Tell me about tides."},
         {"role": "assistant", "content": "echo: Tell me about tides."}, {"role": "user", "content": "And waves?"}],
        [*system_and_few_shot, {"role": "user", "content": "Again"}],
    ]


@pytest.mark.parametrize("name, text, args, expected", [
    ("needs", "prompt: Tell me about {{ topic }}\n", ["-t", "needs"],
     r"needs\.yaml:1: template 'needs' needs the variable 'topic', .*; give it with -p topic=VALUE"),
    ("broken", "system: s\nprompt: |\n  {% for x in xs %}\n  {{ x }\n", ["-t", "broken"],
     r"broken\.yaml:4: prompt: bad Jinja template: unexpected '}'"),
    ("yaml", "prompt: hi\n  bad: indent\n", ["-t", "yaml"], r"yaml\.yaml:2: invalid YAML"),
    (None, None, ["-t", "summarize"], r"unknown template 'summarize': .*did you mean 'summarise'\?"),
])
def test_a_template_mistake_is_one_line_and_a_non_zero_exit(cli, server, name, text, args, expected):
    if name:
        write_template(cli.templates, name, text)
    sent = len(server.requests)
    proc = cli("prompt", *args, check=False)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("rung: error: ")
    assert re.search(expected, proc.stderr), proc.stderr
    assert len(server.requests) == sent  # nothing was sent


def test_rung_templates_list_show_render_edit_and_path(cli, tmp_path):
    assert cli("templates", "path").stdout.strip() == str(cli.templates)
    assert cli("templates", "path", "summarise").stdout.strip() == str(cli.templates / "summarise.yaml")
    assert cli("templates", "list").stdout == "summarise  Summarise a text in a few words\n"
    assert cli("templates", "show", "summarise").stdout.startswith(SUMMARISE)
    rendered = json.loads(cli("templates", "render", "summarise", "-p", "style=Latin", "Some text.").stdout)
    assert rendered["messages"][0]["content"] == "You are terse. Answer in Latin."
    assert rendered["messages"][1:5] == FEW_SHOT and rendered["temperature"] == 0.25

    # edit: a new name starts from the starter file, which is valid and renders
    editor = tmp_path / "editor.py"  # an $EDITOR that changes the variable's name, as a user would
    editor.write_text("import sys, pathlib\np = pathlib.Path(sys.argv[1])\n"
                      "p.write_text(p.read_text().replace('topic', 'subject'))\n")
    proc = cli("templates", "edit", "ask", EDITOR=f"{sys.executable} {editor}")
    assert "created" in proc.stderr and "is valid" in proc.stderr
    assert "{{ subject }}" in (cli.templates / "ask.yaml").read_text()
    rendered = json.loads(cli("templates", "render", "ask", "-p", "subject=tides").stdout)
    assert rendered["messages"][-1] == {"role": "user", "content": "Tell me about tides."}
    listed = [json.loads(line) for line in cli("templates", "list", "--json").stdout.splitlines()]
    assert [entry["name"] for entry in listed] == ["ask", "summarise"]

    # an edit that breaks the file: one line naming file:line, the file kept for the next edit
    breaker = tmp_path / "breaker.py"
    breaker.write_text("import sys, pathlib\npathlib.Path(sys.argv[1]).write_text('prompt: \"{{ oops\"\\n')\n")
    proc = cli("templates", "edit", "ask", check=False, EDITOR=f"{sys.executable} {breaker}")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"{cli.templates / 'ask.yaml'}:1: prompt: bad Jinja template" in proc.stderr
    assert "(invalid: " in cli("templates", "list").stdout  # list still shows the others
    proc = cli("templates", "show", "nope", check=False)
    assert proc.returncode == 2 and "unknown template 'nope'" in proc.stderr and "Traceback" not in proc.stderr
