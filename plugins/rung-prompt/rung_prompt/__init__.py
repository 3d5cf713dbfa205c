"""rung-prompt: `rung prompt`, `rung chat`, `rung logs`, `rung keys`, for any rung backend.

One module per command (`prompt_cmd`, `chat_cmd`, `logs_cmd`, `keys_cmd`); what they share:
`target` (the backend a command line names), `options` (the shared flags), `reply`
(streaming a reply to the terminal and logging it), `logdb` (the SQLite prompt log). The
key store and the hosted backends' base are the core's (`rung.keys`, `rung.hosted`).
"""
