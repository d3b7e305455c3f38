"""The stages, in data-flow order: read -> parse -> render -> tokenize -> fit -> shift -> combine -> write.

Each stage is a plain function over plain data; `jobs.prepare` wires them into a job and an engine runs it.
What trains is not a stage but a policy, `mask`, which render (characters), tokenize (tokens) and fit (turns
kept when a conversation is shortened) consult: docs/architecture.md says where each decision lives.
"""
