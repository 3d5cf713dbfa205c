"""prompts_jsonl and prompts_hf: records as RewardedPrompts; a malformed record is one line naming file:line."""

from __future__ import annotations

import json

import pytest

from rung.errors import ConfigError
from rung.records import Message, RewardedPrompt
from rung.runner import Run
from rung.config import make_config


def build_source(tmp_path, section):
    config = make_config({"output_dir": str(tmp_path / "out"), "backend": {"name": "torch", "model": "test"},
                          "data": section, "trainer": {"name": "sft", "steps": 1}})
    run = Run(config)
    return run.data()


def write_lines(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_jsonl_strings_turns_references_and_system(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [
        {"prompt": "12+34=", "reference": "46"},
        "",
        {"prompt": [{"role": "system", "content": "be brief"}, {"role": "human", "content": "hi"}]},
        {"question": "3+4=", "answer": 7, "system": "add"},
    ])
    first = list(build_source(tmp_path, {"name": "prompts_jsonl", "path": str(path), "limit": 2}).read())
    assert first == [RewardedPrompt((Message("user", "12+34="),), "46"),
                     RewardedPrompt((Message("system", "be brief"), Message("user", "hi")), None)]
    with pytest.raises(ConfigError, match=r"p\.jsonl:4: no 'prompt' field \(fields found: question, answer, system\)"):
        list(build_source(tmp_path, {"name": "prompts_jsonl", "path": str(path)}).read())
    renamed = build_source(tmp_path, {"name": "prompts_jsonl", "path": str(path), "prompt_field": "question",
                                      "reference_field": "answer"})
    # Only the last record has a 'question'; the reader stops at the first one without.
    with pytest.raises(ConfigError, match=r"p\.jsonl:1: no 'question' field"):
        list(renamed.read())
    only_last = write_lines(tmp_path / "q.jsonl", [{"question": "3+4=", "answer": 7, "system": "add"}])
    got = list(build_source(tmp_path, {"name": "prompts_jsonl", "path": str(only_last), "prompt_field": "question",
                                       "reference_field": "answer"}).read())
    assert got == [RewardedPrompt((Message("system", "add"), Message("user", "3+4=")), "7")]


@pytest.mark.parametrize("line, message", [
    ("{not json", r"bad\.jsonl:2: not valid JSON"),
    ('["a list"]', r"bad\.jsonl:2: expected a JSON object, got list"),
    ('{"prompt": 5}', r"bad\.jsonl:2: 'prompt' must be a string or a non-empty list"),
    ('{"prompt": [{"role": "wizard", "content": "x"}]}', r"bad\.jsonl:2: prompt\[0\]: role 'wizard' is not one of"),
    ('{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
     r"bad\.jsonl:2: 'prompt' ends with an assistant turn"),
    ('{"prompt": "q", "reference": {"a": 1}}', r"bad\.jsonl:2: 'reference' must be a string or a number, got dict"),
])
def test_jsonl_malformed_record_is_one_line_with_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", [{"prompt": "fine"}, line])
    with pytest.raises(ConfigError, match=message) as info:
        list(build_source(tmp_path, {"name": "prompts_jsonl", "path": str(path)}).read())
    assert "\n" not in str(info.value)


def test_jsonl_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no file matches"):
        list(build_source(tmp_path, {"name": "prompts_jsonl", "path": str(tmp_path / "none*.jsonl")}).read())


def test_hf_dataset_from_json_files_and_saved_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "1+1=", "reference": "2"},
                                              {"prompt": "2+2=", "reference": "4"}])
    source = build_source(tmp_path, {"name": "prompts_hf", "dataset": "json", "data_files": str(path)})
    assert [p.reference for p in source.read()] == ["2", "4"]
    folder = tmp_path / "saved"
    datasets.Dataset.from_list([{"prompt": "5+5=", "reference": "10"}, {"prompt": "", "reference": "x"}]).save_to_disk(
        str(folder))
    source = build_source(tmp_path, {"name": "prompts_hf", "dataset": str(folder)})
    with pytest.raises(ConfigError, match=r"saved\[train\]\[1\]: 'prompt' is an empty string"):
        list(source.read())
