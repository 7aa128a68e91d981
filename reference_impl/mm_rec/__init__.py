"""MM-Rec in miniature: a runnable reference trainer with the reviewed bugs kept."""
