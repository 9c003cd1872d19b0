"""Benchmarks and fault drills behind ``moodwire bench ...``: throughput, continual learning,
the dashboard, and faults (fuzzing, kills, outages, tampering; with the TCP proxy that cuts
connections). Nothing outside ``moodwire`` imports them."""
