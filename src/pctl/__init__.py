"""pctl: the admin tool (tctl's counterpart): tokens, resources, users, status."""
