"""The observatory: vantages upload to one collector that judges across them and serves an API.

``tokens`` (who may upload as which vantage), ``collector`` (the store, idempotent uploads,
the judgement across vantages), ``app`` (the HTTP API and the dashboard), ``agent`` (an
uploader that spools to disk while the collector is unreachable).
"""
