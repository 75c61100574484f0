"""One module per client protocol: its parser and its ``Edge`` (gateway/serve.py)."""
