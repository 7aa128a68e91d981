"""Facts read once from parsed files, shared by all rules."""
