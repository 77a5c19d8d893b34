"""Access control: who a client is (htpasswd, tokens, client certificates) and what it may do."""
