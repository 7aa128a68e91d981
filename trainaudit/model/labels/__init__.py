"""Label facts read from the flow model: where labels are made, and what reaches a loss."""
