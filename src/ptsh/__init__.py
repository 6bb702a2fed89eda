"""ptsh: the user tool (tsh's counterpart): log in, see status, use databases."""
