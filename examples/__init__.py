"""Example agents: plain Python functions over the Tachograph replay context."""
