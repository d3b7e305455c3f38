"""The stages, in data-flow order: read -> parse -> render -> tokenize -> mask -> fit -> shift -> write.

Each stage is a plain function over plain data; `pipeline.prepare` wires them into a job and an engine runs it.
"""
