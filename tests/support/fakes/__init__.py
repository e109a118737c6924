"""Fakes for what cannot exist on the test machines (kept small, named as fakes)."""
