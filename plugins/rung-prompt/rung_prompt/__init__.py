"""rung-prompt: `rung prompt`, `rung chat`, `rung logs`, `rung keys`, for any rung backend.

Also the pieces hosted-API backends share: the key store (`rung_prompt.keys`) and the
client, error and batch plumbing (`rung_prompt.hosted`).
"""
