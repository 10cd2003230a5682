"""The provider side: upstream protocol, TLS, AUTH, pool, failover, the one transaction, OAuth."""
