"""rung-compare: `rung compare SUITE.yaml`, prompts x backends x test cases checked by assertions.

One module per idea: `suite` (the YAML suite, validated, errors as file:line), `cases` (test
cases from JSONL/CSV files), `prompts` (a prompt entry rendered into a GenerationRequest),
`assertions` (each assertion kind and its check), `schema_check` (JSON-schema validation),
`cache` (replies on disk), `execute` (requests sent concurrently per backend), `runner` (the
suite run end to end), `report` (terminal table and JSON), `html_report` (the HTML page),
`cli` (the command).
"""
